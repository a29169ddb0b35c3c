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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PureWindowsPath
from tokenize import TokenError
from typing import IO, Any

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from numpy.typing import NDArray
from onnx import external_data_helper, numpy_helper
from PIL import Image, ImageOps, UnidentifiedImageError

from onnx_featviz.errors import InputError, ModelError

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
# tensors at least this big go to the external data file when a model is saved with one.
_EXTERNAL_MIN_BYTES = 1024
_EXPORT_FIX = "export the network to .onnx first"
# numpy's default ``max_header_size`` for .npy headers.
_NPY_HEADER_LIMIT = 10000


# -- models ---------------------------------------------------------------------------------
def load_model(source: str | Path | bytes, *, keep_external_over: int | None = None
               ) -> onnx.ModelProto:
    """Load an ONNX model from a file path or serialized bytes, with its external data.

    External data files are resolved against the model's folder and must lie inside it. The
    checker is not run (it would serialize models over 2 GB); the file is only parsed.

    Args:
        source: path of a ``.onnx`` file, or the serialized ``ModelProto`` bytes.
        keep_external_over: external tensors larger than this many bytes stay on disk (their
            references kept; onnxruntime reads them from ``path``'s folder, see
            ``runtime.Session``'s ``external_folder``); None loads every tensor.

    Returns:
        The parsed model with its external tensors loaded into memory (all, or those up to
        ``keep_external_over`` bytes).

    Raises:
        ModelError: missing path, directory, empty or non-ONNX file, truncated protobuf, a model
            without graph/nodes/opset, or external data that is missing, absolute or outside
            the model's folder (or referenced from bytes, where there is no folder).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        model = _parse_model(bytes(source), "the model bytes")
        if any(_is_external(t) for t in _all_tensors(model)):
            raise ModelError("the model bytes reference external data files; load the model "
                             "from its file path so the data beside it can be found")
        return model
    path = Path(source)
    data = _read_model_file(path)
    model = _parse_model(data, str(path))
    folder = path.absolute().parent.resolve()  # the folder the path names (as onnx.load)
    tensors = [t for t in _all_tensors(model) if _is_external(t)]
    for tensor in tensors:
        _check_external(tensor, folder, path)
    if keep_external_over is not None:
        tensors = [t for t in tensors if external_size(t) <= keep_external_over]
    if tensors:
        try:
            for tensor in tensors:
                external_data_helper.load_external_data_for_tensor(tensor, str(folder))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
        except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as err:
            raise ModelError(f"cannot read the external data of {path} from {folder}: {err}; "
                             "keep the data files beside the model as exported") from err
        log.debug("loaded %d external tensors of %s", len(tensors), path)
    return model


def _read_model_file(path: Path) -> bytes:
    """Return the bytes of a model file, or raise ModelError saying why it cannot be one."""
    kind = non_file_kind(path)
    if kind == "a folder":
        found = sorted(p.name for p in path.glob("*.onnx"))[:5]
        hint = f"it holds {', '.join(found)}" if found else "it holds no .onnx file"
        raise ModelError(f"model path {path} is a folder ({hint}); give the .onnx file itself")
    if kind == "missing":
        raise ModelError(f"model file {path} does not exist; check the path")
    if kind is not None:
        raise ModelError(f"model path {path} is {kind}, not a regular file; give the .onnx "
                         "file itself")
    try:
        with path.open("rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror or err}; "
                         "check its permissions") from err
    if not data:
        raise ModelError(f"model file {path} is empty (0 bytes); {_EXPORT_FIX}")
    return data


def _parse_model(data: bytes, what: str) -> onnx.ModelProto:
    """Parse serialized bytes into a ModelProto and check it has a graph, nodes and an opset."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        kind = "it looks like text" if _looks_like_text(data) else "it may be truncated"
        raise ModelError(f"{what} is not an ONNX model ({type(err).__name__}: {err}); {kind} "
                         f"or of another format; {_EXPORT_FIX}") from err
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{what} is not an ONNX model (no graph or no nodes found in "
                         f"{len(data)} bytes); {_EXPORT_FIX}")
    _check_text(model, what)
    if model.ir_version <= 0 or (model.ir_version >= 3 and not model.opset_import):
        raise ModelError(f"{what} is an incomplete ONNX model (ir_version {model.ir_version}, "
                         f"{len(model.opset_import)} opset imports); the file may be truncated; "
                         "copy or export it again")
    return model


def _check_text(message: Message, what: str) -> None:
    """Refuse string fields that are not UTF-8 (protobuf then hands out ``bytes``, not str)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            bad = [v for v in (value if _repeated(field) else [value]) if isinstance(v, bytes)]
            if bad:
                raise ModelError(f"{what} has a {field.full_name} that is not UTF-8 text "
                                 f"({bad[0][:40]!r}); the file is corrupt or was written by a "
                                 "broken exporter; export it again")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if _repeated(field) else [value]:
                _check_text(item, what)


def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29 drops ``label`` under upb
    return bool(flag if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED)


def _looks_like_text(data: bytes) -> bool:
    text = data[:512].decode("utf-8", "replace").rstrip("\ufffd")  # a cut multibyte char
    return bool(text) and all(
        (ch.isprintable() and ch != "\ufffd") or ch in "\r\n\t" for ch in text)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Yield every initializer and tensor attribute, in subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def external_size(tensor: onnx.TensorProto) -> int:
    """Return the bytes an external tensor takes in its data file (0 when it is inline)."""
    if not _is_external(tensor):
        return 0
    info = {e.key: e.value for e in tensor.external_data}
    if info.get("length", "").isdigit():
        return int(info["length"])
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def external_total(model: onnx.ModelProto) -> int:
    """Return the bytes of the tensors ``model`` still keeps in external files."""
    return sum(external_size(t) for t in _all_tensors(model))


def load_external(model: onnx.ModelProto, model_path: Path) -> None:
    """Load the external tensors still on disk into ``model`` (a proto this caller loaded with
    ``load_model(..., keep_external_over=...)``; changed in place).

    Raises:
        ModelError: the data files cannot be read.
    """
    folder = model_path.absolute().parent.resolve()
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot read the external data of {model_path} from {folder}: {err}; "
                         "keep the data files beside the model as exported") from err


def _is_external(tensor: onnx.TensorProto) -> bool:
    return bool(tensor.data_location == onnx.TensorProto.EXTERNAL)


def _check_external(tensor: onnx.TensorProto, folder: Path, model_path: Path) -> None:
    """Refuse an external data location that is absolute, escapes ``folder`` or is missing."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    where = f"tensor {tensor.name!r} of {model_path}"
    if not location:
        raise ModelError(f"{where} is marked external but names no data file; export it again")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or PureWindowsPath(
            location).drive:
        raise ModelError(f"{where} stores its data at the absolute path {location!r}; only "
                         f"files inside the model's folder {folder} are read; move the data "
                         "beside the model and save it with a relative location")
    try:
        target = (folder / location).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # RuntimeError: a symlink loop (< 3.13)
        raise ModelError(f"{where} stores its data at {location!r}, which cannot be resolved "
                         f"({err}); replace it with the data file itself") from err
    if not target.is_relative_to(folder):
        raise ModelError(f"{where} stores its data at {location!r}, which resolves to {target}, "
                         f"outside the model's folder {folder}; move the data file into that "
                         "folder and save the model again")
    kind = non_file_kind(target)
    if kind == "missing":
        raise ModelError(f"external data file {location!r} of {where} is missing from "
                         f"{folder}; copy it beside the model")
    if kind is not None:
        raise ModelError(f"external data {location!r} of {where} is {kind}, not a regular "
                         "file; put the data file itself beside the model")
    try:
        offset, length = int(entries.get("offset") or 0), int(entries.get("length") or 0)
    except ValueError as err:
        raise ModelError(f"{where} has a non-numeric external offset/length ({err}); export "
                         "it again") from err
    if offset < 0 or length < 0:
        raise ModelError(f"{where} has a negative external offset {offset} or length {length}; "
                         "export it again")
    end, size = offset + length, target.stat().st_size
    if end > size:
        raise ModelError(f"external data file {target} has {size} bytes but {where} needs "
                         f"{end}; the file is truncated; copy it again")


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write a model atomically; models protobuf cannot serialize (2 GiB) get external data.

    The external data goes to ``<name>.data`` beside ``path`` (tensors of 1 KiB or more). The
    caller's model is not modified.

    Raises:
        InputError: the path cannot be written.
    """
    path = Path(path)
    try:  # ByteSize() serializes too (and fails the same way) under the upb protobuf backend
        data: bytes | None = model.SerializeToString()
    except EncodeError:
        data = None
    if data is not None and len(data) < _PROTO_LIMIT:
        save_bytes(data, path)
        return
    data = None  # free it before the copy below
    data_name = f"{path.name}.data"
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    _atomic_write(path.with_name(data_name), lambda fh: _move_tensors_out(skeleton, fh, data_name))
    _atomic_write(path, lambda fh: fh.write(skeleton.SerializeToString()))
    log.info("saved %s with external data %s", path, data_name)


def _move_tensors_out(model: onnx.ModelProto, fh: IO[bytes], location: str) -> None:
    """Write each large tensor of ``model`` to ``fh`` and make it refer to ``location``."""
    typed = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    for tensor in _all_tensors(model):
        if _is_external(tensor) or tensor.data_type == onnx.TensorProto.STRING:
            continue
        if tensor.HasField("raw_data"):
            raw = tensor.raw_data
        elif any(len(getattr(tensor, f)) for f in typed):
            array = numpy_helper.to_array(tensor)
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        else:
            continue
        if len(raw) < _EXTERNAL_MIN_BYTES:
            continue
        offset = -(-fh.tell() // 4096) * 4096  # page-aligned so onnxruntime can mmap it
        fh.write(b"\0" * (offset - fh.tell()))
        fh.write(raw)
        for field in typed:
            tensor.ClearField(field)
        tensor.raw_data = raw
        external_data_helper.set_external_data(tensor, location, offset, len(raw))
        tensor.ClearField("raw_data")


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
