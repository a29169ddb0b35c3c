"""DATA on any filesystem pyarrow reaches (``file://``, ``s3://`` where configured, a pyarrow
``FileSystem``): listing image files, and streaming image files already read as bytes.

The ray engine reads image files with Ray's file reader and decodes them in its workers with
``image_stream``, which numbers, decodes, skips and batches them exactly as ``data.open_data``
does for a local folder. ``pyarrow`` (a dependency of Ray) is imported only when a URI or a
filesystem is given.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import onnx_featviz.io.files as fileio
import onnx_featviz.io.preprocess as preprocess
from onnx_featviz.errors import InputError
from onnx_featviz.io.data import Chunk, DataStream, ModelInput, SkipFn

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class ImageFiles:
    """Image files to read, in DATA order, and the filesystem that holds them.

    Attributes:
        filesystem: a ``pyarrow.fs.FileSystem``, or None for plain local paths.
        paths: the files, sorted as ``files.list_images`` sorts a local folder.
    """

    filesystem: Any
    paths: tuple[str, ...]


def is_uri(data: Path | str) -> bool:
    """Return whether DATA names a location by URI (``file:///data``, ``s3://bucket/val``)."""
    return isinstance(data, str) and _URI.match(data) is not None


def list_image_files(data: Path | str, filesystem: Any = None) -> ImageFiles | None:
    """List the image files of DATA, or return None when DATA is not an image file or folder.

    A plain path is listed by ``files.list_images`` (the local engine's listing); a URI, or a
    path on ``filesystem``, with pyarrow: recursively, names starting with ``.`` skipped,
    suffixes in ``IMAGE_EXTENSIONS`` (any case), sorted by path components.

    Raises:
        InputError: the location does not exist, cannot be listed or its folder holds no image.
    """
    if filesystem is None and not is_uri(data):
        path = Path(data)
        if path.is_dir() or path.suffix.lower() in fileio.IMAGE_EXTENSIONS:
            return ImageFiles(None, tuple(str(p) for p in fileio.list_images(path)))
        return None
    from pyarrow import fs as pafs

    try:
        if filesystem is None:
            filesystem, root = pafs.FileSystem.from_uri(str(data))
        else:
            root = str(data)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"DATA {data} does not exist; give an image file, a folder of "
                             "images, a .npy/.npz or an MNIST IDX images file")
        if info.type != pafs.FileType.Directory:
            suffix = PurePosixPath(root).suffix.lower()
            return ImageFiles(filesystem, (root,)) if suffix in fileio.IMAGE_EXTENSIONS else None
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as err:  # pyarrow's ArrowException subclasses these
        raise InputError(f"cannot list DATA {data} ({type(err).__name__}: {err}); check the "
                         "URI and the filesystem's credentials") from err
    paths = sorted((f.path for f in found if _is_image(f, root, pafs.FileType.File)),
                   key=lambda p: PurePosixPath(p).parts)
    if not paths:
        raise InputError(f"folder {data} holds no images; add files ending in "
                         f"{', '.join(fileio.IMAGE_EXTENSIONS)}")
    return ImageFiles(filesystem, tuple(paths))


def resolve_file(data: Path | str, filesystem: Any = None) -> tuple[str, Any]:
    """Return ``(path, filesystem)`` of a file given by URI or as a path on ``filesystem``.

    Raises:
        InputError: the URI names no filesystem pyarrow knows, or no file.
    """
    from pyarrow import fs as pafs

    try:
        if filesystem is None:
            filesystem, path = pafs.FileSystem.from_uri(str(data))
        else:
            path = str(data)
        found = filesystem.get_file_info(path).type == pafs.FileType.File
    except (OSError, ValueError) as err:
        raise InputError(f"cannot open DATA {data} ({type(err).__name__}: {err}); check the "
                         "URI and the filesystem's credentials") from err
    if not found:
        raise InputError(f"DATA {data} is not a file; give an image folder, an image, a "
                         ".npy/.npz or an MNIST IDX images file")
    return path, filesystem


def _is_image(info: Any, root: str, file_type: Any) -> bool:
    rel = PurePosixPath(info.path).relative_to(PurePosixPath(root))
    return (info.type == file_type and rel.suffix.lower() in fileio.IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in rel.parts))


class _Named(io.BytesIO):
    """Bytes of a file that Pillow names like the file (its messages show ``%r`` of the file)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self._name = name

    def __repr__(self) -> str:
        return repr(self._name)


def image_stream(inspector: ModelInput, files: Sequence[tuple[str, bytes]], *,
                 batch_size: int, first: int) -> DataStream:
    """Stream image files already read, as ``data.open_data`` streams them from a folder.

    Args:
        inspector: the model's ``Inspector`` (input spec and preprocessing).
        files: ``(name, bytes)`` of DATA's inputs ``first, first + 1, ...`` in DATA order.
        batch_size: rows per batch; batches cut at multiples of ``batch_size`` of DATA's
            numbering, as in the whole stream.
        first: DATA's number of ``files[0]``.

    Returns:
        A ``DataStream`` (may be empty without error); unreadable images are skipped and
        listed with the reason the local engine gives.
    """
    def chunks(skip: SkipFn) -> Iterator[Chunk]:
        for name, data in files:
            try:
                image = fileio.decode_image(_Named(data, name), name)
                row = preprocess.image_to_array(image, inspector.spec, inspector.preprocessing)
            except InputError as err:
                skip(name, str(err), 1)
                continue
            yield (name,), row[None]

    where = Path(files[0][0]).parent if files else Path(".")
    return DataStream(where, "folder", len(files), batch_size, chunks, require_rows=False,
                      first=first)


__all__ = ["ImageFiles", "image_stream", "is_uri", "list_image_files", "resolve_file"]
