"""Disk input and output: models (with external data), images, arrays, atomic savers.

The only module besides ``runtime`` and ``cli`` that touches the file system. Loaders open files
read-only and never modify them; savers write a temporary file in the destination folder and
``os.replace`` it, so a failed or interrupted save leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from tokenize import TokenError
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from onnx_featviz.errors import InputError

log = logging.getLogger(__name__)


#: File suffixes ``list_images`` picks up (lower case, compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


#: Pillow format name per output suffix for ``save_image``.
_SAVE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
    ".tiff": "TIFF", ".webp": "WEBP", ".gif": "GIF",
}


# protobuf cannot serialize a message of 2 GiB or more; stay a little below it.
_PROTO_LIMIT = 2**31 - 2**20




# numpy's default ``max_header_size`` for .npy headers.
_NPY_HEADER_LIMIT = 10000














def non_file_kind(path: Path) -> str | None:
    """Return None for a regular file (after links), else what ``path`` is, for messages.

    ``"missing"``, ``"a folder"``, ``"a symbolic link loop"``, ``"a named pipe (FIFO)"``,
    ``"a character device"``, ``"a block device"``, ``"a socket"`` or ``"not a file"``.
    Checked before opening, so a pipe or ``/dev/zero`` is refused at once instead of blocking or
    reading forever.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        return "missing"
    except ValueError:  # an embedded NUL byte
        return "missing"
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"),
             (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def require_file(path: Path, what: str, fix: str) -> None:
    """Raise InputError unless ``path`` is a regular file; ``what`` names it, ``fix`` says how.

    Raises:
        InputError: the path is missing, a folder, a device, a pipe, a socket or a link loop.
    """
    kind = non_file_kind(path)
    if kind == "missing":
        raise InputError(f"cannot read {what} {path}: it does not exist; {fix}")
    if kind is not None:
        raise InputError(f"cannot read {what} {path}: it is {kind}, not a regular file; {fix}")


# -- images ---------------------------------------------------------------------------------
def load_image(path: Path) -> Image.Image:
    """Load an image fully into memory, EXIF orientation applied, mode kept.

    Reads PNG, JPEG, BMP, TIFF, WebP and GIF (first frame). The mode is kept (``L``, ``RGB``,
    ``RGBA``, ``P``, ``I;16``, ...) so that ``preprocess`` can convert and scale it.

    Raises:
        InputError: missing, unreadable, corrupt or not an image, or so large that Pillow
            flags it as a possible decompression bomb (more than ``Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    require_file(path, "image", f"give an image file ({', '.join(IMAGE_EXTENSIONS)})")
    return decode_image(path, str(path))


def decode_image(source: Path | IO[bytes], name: str) -> Image.Image:
    """Decode an image file or an open binary stream as ``load_image`` does (``name`` in errors).

    Raises:
        InputError: as ``load_image``.
    """
    path = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                opened.seek(0)  # first frame of an animated GIF/WebP/TIFF
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"image {path} is too large to decode safely ({err}); resize it to "
                         f"under {Image.MAX_IMAGE_PIXELS} pixels first") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"cannot read image {path} ({type(err).__name__}: {err}); give a "
                         f"valid image file ({', '.join(IMAGE_EXTENSIONS)})") from err
    return image


def list_images(path: Path) -> list[Path]:
    """Return ``[path]`` for a file, or the images under a folder (recursive, sorted).

    Files and folders whose name starts with ``.`` are skipped; suffixes are matched against
    ``IMAGE_EXTENSIONS`` case-insensitively.

    Raises:
        InputError: the path does not exist, or the folder holds no image.
    """
    path = Path(path)
    kind = non_file_kind(path)
    if kind is None:
        return [path]
    if kind != "a folder":
        require_file(path, "image path", "give an image file or a folder of images")
    found = sorted(
        p for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise InputError(f"folder {path} holds no images; add files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return found


def load_array_file(path: Path) -> dict[str, NDArray[Any]]:
    """Load a ``.npy`` (key: the file stem) or ``.npz`` (its keys, in file order) file.

    Raises:
        InputError: other suffix, unreadable or pickled file, or an empty ``.npz``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"array file {path} must end in .npy or .npz; save it with np.save "
                         "or np.savez")
    require_file(path, "array file", "save it with np.save or np.savez")
    try:
        if suffix == ".npy":
            with path.open("rb") as fh:
                _check_array_header(fh, path.stat().st_size, str(path))
            return {path.stem: np.load(path, allow_pickle=False)}
        _check_npz_members(path)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, SyntaxError, TokenError, NotImplementedError,
            RuntimeError, zlib.error, zipfile.BadZipFile) as err:
        # SyntaxError/TokenError: a corrupt header; NotImplementedError/RuntimeError: a zip
        # member with an unknown compression or a password
        raise InputError(f"cannot read array file {path} ({type(err).__name__}: "
                         f"{str(err)[:200]}); save it with np.save/np.savez (numeric arrays, "
                         "no pickled objects)") from err
    odd = [key for key, value in arrays.items() if not isinstance(value, np.ndarray)]
    if odd:
        raise InputError(f"array file {path} holds members that are not .npy arrays ({odd[:3]}); "
                         "save it with np.savez")
    if not arrays:
        raise InputError(f"array file {path} holds no arrays; save at least one with np.savez")
    return arrays


def _check_array_header(fh: IO[bytes], available: int, where: str) -> None:
    """Refuse an array header whose shape needs more bytes than the file holds.

    numpy allocates the declared size before reading, so a 100-byte file declaring
    ``(10**12,)`` would otherwise ask for terabytes.
    """
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    start = fh.tell()
    size = int.from_bytes(fh.read(2 if version == (1, 0) else 4), "little")
    if size > _NPY_HEADER_LIMIT:  # numpy reads (allocates) the whole header before checking it
        raise InputError(f"array {where} declares a {size}-byte header, more than numpy's "
                         f"{_NPY_HEADER_LIMIT}; the file is corrupt; save it again with np.save")
    fh.seek(start)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(fh)
    needed = math.prod(int(d) for d in shape) * dtype.itemsize
    if needed > available:
        raise InputError(f"array {where} declares shape {shape} of {dtype} ({needed} bytes) but "
                         f"holds at most {available}; the file is truncated or corrupt; save it "
                         "again with np.save/np.savez")


def _check_npz_members(path: Path) -> None:
    """Check each ``.npy`` member's header against its size (a zip entry may inflate at most
    about 1032x, so a member's declared size is bounded by its compressed size)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            limit = min(info.file_size, info.compress_size * 1100)
            with archive.open(info) as member:
                _check_array_header(member, limit, f"{path}:{info.filename}")


# -- atomic savers --------------------------------------------------------------------------
def save_image(image: Image.Image, path: Path) -> None:
    """Write an image atomically; the format comes from the suffix (.png, .jpg, ...).

    JPEG cannot hold alpha or palettes: such images are converted to RGB first.

    Raises:
        InputError: unknown suffix, or the path cannot be written.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the image format of {path} from {path.suffix!r}; use "
                         f"one of {', '.join(_SAVE_FORMATS)}")
    out = image
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        out = image.convert("RGB")
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "PNG":  # fast lossless encoding: rendering whole networks is PNG-bound
        options = {"compress_level": 1, "compress_type": zlib.Z_RLE}
    buffer = io.BytesIO()  # encode first: an encoder error must not leave a temp file open
    try:
        out.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot encode a {image.mode} image as {fmt} for {path}: {err}; "
                         "save it as .png instead") from err
    save_bytes(buffer.getvalue(), path)


def save_npz(arrays: Mapping[str, NDArray[Any]], path: Path) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically (readable with ``np.load``).

    Keys may hold any character, ``/`` and ``:`` included (tensor names such as
    ``featviz/dequant/x``); they are written as ``<key>.npy`` zip members, as ``np.savez`` does,
    but without its clash with its own keyword names (a tensor called ``file``).

    Raises:
        InputError: an object array, or the path cannot be written.
    """
    items = [(str(key), np.asanyarray(value)) for key, value in arrays.items()]
    for key, value in items:
        if value.dtype.hasobject:
            raise InputError(f"array {key!r} has dtype object, which .npz cannot hold without "
                             "pickling; convert it to a numeric dtype")

    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, value in items:
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)

    _atomic_write(Path(path), write)


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented UTF-8 JSON atomically (numpy scalars/arrays and paths allowed).

    Raises:
        InputError: the path cannot be written. TypeError: ``obj`` holds a non-JSON value.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    save_bytes(text.encode("utf-8"), path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def save_bytes(data: bytes, path: Path) -> None:
    """Write bytes atomically.

    Raises:
        InputError: the path cannot be written.
    """
    _atomic_write(Path(path), lambda fh: fh.write(data))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temp file in ``path``'s folder, then ``os.replace`` it into place.

    Missing parent folders are created. On any exception (KeyboardInterrupt included) the temp
    file is removed; OS errors become ``InputError``.
    """
    _refuse_special(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}; choose a writable path"
                         ) from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _refuse_special(path: Path) -> None:
    """Refuse an existing path that is neither a regular file nor a folder (device, pipe,
    socket): renaming a temp file over it would replace the node (as root: /dev/full)."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise InputError(f"cannot write {path}: it is not a regular file (a device or pipe); "
                         "choose a file path")


def _file_mode(path: Path) -> int:
    """Mode for a new file: the replaced file's, else 0o666 minus the process umask."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    umask = 0o022
    with contextlib.suppress(OSError, ValueError):
        # Reading /proc avoids os.umask(), which would briefly change process-wide state.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


def save_images(images: Mapping[Path, Image.Image]) -> None:
    """Write several images atomically, encoding on all cores (Pillow releases the GIL).

    Raises:
        InputError: a path cannot be written (images already written stay complete).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(images), os.cpu_count() or 1) or 1) as pool:
        for future in [pool.submit(save_image, image, path) for path, image in images.items()]:
            future.result()


def read_text(path: Path) -> str:
    """Return a UTF-8 text file's contents.

    Raises:
        InputError: the file is missing, unreadable or not text.
    """
    require_file(Path(path), "text file", "give a readable UTF-8 file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read text file {path}: {err}; "
                         "give a readable UTF-8 file") from err


def check_writable(paths: Sequence[Path]) -> None:
    """Refuse before writing anything when a path cannot be written (no partial output).

    Raises:
        InputError: a path is a folder, sits under a file, or its folder is not writable; an
            existing path is not a regular file (a device or pipe, which the atomic rename
            would replace).
    """
    for path in paths:
        long = [part for part in Path(path).parts if len(os.fsencode(part)) > 255]
        if long:  # file systems refuse a name over 255 bytes only when writing
            raise InputError(f"cannot write {path}: a name is {len(os.fsencode(long[0]))} "
                             "bytes, over the 255-byte limit; choose a shorter name")
        if path.is_dir():
            raise InputError(f"cannot write {path}: it is a folder; choose a file path")
        _refuse_special(path)
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputError(f"cannot write {path}: {folder} is a file, not a folder; "
                             "choose a writable path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path}: {folder} is not writable; "
                             "choose a writable path")

