"""Stream a dataset (DATA) through a model in model-ready batches, in constant memory.

DATA is one of:

- an image file (``.png .jpg .jpeg .bmp .tif .tiff .webp .gif``, any case);
- a folder, searched recursively for those image files (sorted; names starting with ``.``
  skipped);
- a ``.npy`` or ``.npz`` array file (every array of a ``.npz``, in file order);
- an MNIST IDX images file (magic 2051, e.g. ``t10k-images-idx3-ubyte.gz``), gzip-compressed or
  raw.

Images are loaded, resized and normalized with the ``Inspector``'s preprocessing (so mixed image
sizes are fine). Arrays are mapped onto the model input by dtype:

- a float array is taken as model-ready values (already normalized): it must match the input's
  shape in the input's layout (NCHW or NHWC), in the other of the two (it is transposed), or
  lack only a 1-channel axis (it is added); its values are fed as they are (cast to the input
  dtype);
- an array of the input's own integer dtype that matches the input shape is fed as it is;
- a uint8 array is otherwise a stack of images, 0..255: ``(N, H, W)`` gray, ``(N, H, W, C)`` or
  ``(N, C, H, W)`` with C in 1, 3, 4; each is preprocessed like an image file (resized to the
  model size, scaled and normalized). MNIST IDX files are read this way.

Files are read incrementally: ``.npy``/``.npz`` arrays (C order) and IDX files a batch of rows
at a time (gzip decompressed as a stream), a folder one image at a time, so memory does not grow
with the dataset. An image that cannot be read or converted, an array of a ``.npz`` that cannot
be mapped and the missing rows of a truncated file are skipped with a logged warning and listed in
``DataStream.skipped``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.io.files as fileio
import onnx_featviz.io.preprocess as preprocess
from onnx_featviz.errors import InputError
from onnx_featviz.structs import InputSpec, Preprocessing

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = fileio.IMAGE_EXTENSIONS
ARRAY_EXTENSIONS = (".npy", ".npz")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
DATA_KINDS = (f"an image file ({' '.join(IMAGE_EXTENSIONS)}), a folder of such images "
              "(searched recursively), a .npy/.npz array file or an MNIST IDX images file "
              "(magic 2051, .gz or raw)")
_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_CHANNELS = (1, 3, 4)
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, struct.error)

Chunk = tuple[tuple[str, ...], NDArray[np.generic]]
"""Model-ready rows ``(k, ...)`` and one source name per row."""
SkipFn = Callable[[str, str, int], None]
"""Record ``count`` unreadable items under one source name with a reason."""
Opener = Callable[[], IO[bytes]]
"""Open DATA's file for binary reading (a local file, or a ``pyarrow`` filesystem's file)."""


class ModelInput(Protocol):
    """What a DATA stream needs of a model (an ``Inspector`` is one): input spec, preprocessing."""

    @property
    def spec(self) -> InputSpec: ...

    @property
    def preprocessing(self) -> Preprocessing: ...


@dataclass(frozen=True, slots=True)
class DataBatch:
    """Model-ready rows and where each came from.

    Attributes:
        batch: ``(N, ...)`` rows in the model input's layout and dtype.
        sources: one per row: ``"path/img.png"``, ``"x.npz[17]"``, ``"x.npz:key[17]"``,
            ``"t10k-images-idx3-ubyte.gz[42]"``.
    """

    batch: NDArray[np.generic]
    sources: tuple[str, ...]


class DataStream:
    """Iterable of ``DataBatch`` over one DATA path; made by ``open_data``.

    Each iteration reads DATA again from the start and resets ``skipped`` and ``done``.

    Attributes:
        path: the DATA path; kind: ``"image"``, ``"folder"``, ``"array"`` or ``"idx"``.
        total: rows (inputs) expected: files listed, array rows, IDX count; None if unknown.
        skipped: ``(source, reason)`` per unreadable item, growing while iterating.
        done: inputs consumed so far (rows yielded plus items skipped), for progress.
        batch_size: rows per batch. Batch k holds the readable inputs among inputs
            ``[k * batch_size, (k + 1) * batch_size)`` of DATA: an unreadable input leaves its
            batch one row short rather than shifting every later batch, so a range of DATA
            streamed alone (``open_data(rows=)``) yields the very batches the whole stream
            does. The last batch, and one before a change of image shape when the model has a
            dynamic size, may also hold fewer.
    """

    def __init__(self, path: Path, kind: str, total: int | None, batch_size: int,
                 chunks: Callable[[SkipFn], Iterator[Chunk]], *,
                 require_rows: bool = True, first: int = 0) -> None:
        self.path, self.kind, self.total, self.batch_size = path, kind, total, batch_size
        self.skipped: list[tuple[str, str]] = []
        self.done = 0
        self._chunks = chunks
        self._require_rows = require_rows
        self._first = first  # DATA's number of the stream's first input
        self._consumed = 0

    def __iter__(self) -> Iterator[DataBatch]:
        self.skipped = []
        self.done = self._consumed = 0
        yielded = 0
        for batch in _rebatch(self._numbered(), self.batch_size):
            yielded += len(batch.batch)
            self.done += len(batch.batch)
            yield batch
        first = f"; first: {self.skipped[0][0]}: {self.skipped[0][1]}" if self.skipped else ""
        if yielded and self.skipped:  # one notice for the run, not one per file
            log.warning("skipped %d of %d inputs in %s that could not be read%s",
                        len(self.skipped), self.done, self.path, first)
        if yielded == 0 and self._require_rows:
            raise InputError(f"no input in {self.path} could be read ({len(self.skipped)} "
                             f"skipped{first}); give {DATA_KINDS}")

    def _skip(self, source: str, reason: str, count: int = 1) -> None:
        log.debug("skipped %s: %s", source, reason)
        self.skipped.append((source, reason))
        self.done += count
        self._consumed += count

    def _numbered(self) -> Iterator[tuple[int, Chunk]]:
        """Each chunk with DATA's number of its first row (rows of a chunk are consecutive)."""
        for chunk in self._chunks(self._skip):
            yield self._first + self._consumed, chunk
            self._consumed += len(chunk[1])


def open_data(inspector: ModelInput, data: Path | str, *, batch_size: int = 32,
              rows: tuple[int, int] | None = None, opener: Opener | None = None) -> DataStream:
    """Open DATA (see the module docstring for the kinds and the array mapping) for streaming.

    Nothing but headers and the folder listing is read here; rows are read while iterating.

    Args:
        inspector: the model's ``Inspector`` (its input spec and preprocessing are used).
        data: an image file, a folder, a ``.npy``/``.npz`` file or an MNIST IDX images file.
        batch_size: rows per ``DataBatch`` (at least 1).
        rows: only the inputs ``[start, stop)`` of DATA, numbered as a whole stream numbers
            them (files in sorted order, array rows across the arrays of a ``.npz`` in file
            order, IDX images), so that disjoint ranges streamed apart (one per worker) hold
            each input once; such a stream may be empty without error. None: all of DATA.
        opener: opens a ``.npy``/``.npz`` or IDX file that is not a local path (``data``
            then only names it), e.g. a file on a ``pyarrow`` filesystem; it must seek.

    Returns:
        A ``DataStream``; iterate it for ``DataBatch`` es.

    Raises:
        InputError: missing path, empty folder, unknown format, an IDX labels file, a
            ``.npy``/``.npz`` none of whose arrays fit the model input, unreadable headers, or
            ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if rows is not None and not 0 <= rows[0] <= rows[1]:
        raise InputError(f"rows must be a range (start, stop) with 0 <= start <= stop, got {rows}")
    span = rows or (0, _ALL)
    path = Path(data)
    if opener is None and path.is_dir():
        return _folder_stream(inspector, path, batch_size, span)
    if opener is None:
        fileio.require_file(path, "DATA", f"give {DATA_KINDS}")
    suffix = path.suffix.lower()
    if opener is not None and suffix in IMAGE_EXTENSIONS:
        raise InputError(f"DATA {path} is an image: open it as a local path (an opener is "
                         "for array and IDX files)")
    read: Opener = opener or (lambda: path.open("rb"))
    if suffix in IMAGE_EXTENSIONS:
        _require_images(inspector.spec)
        files = [path][span[0]:span[1]]
        return DataStream(path, "image", len(files), batch_size,
                          lambda skip: _image_chunks(inspector, files, skip),
                          require_rows=rows is None, first=span[0])
    if suffix in ARRAY_EXTENSIONS:
        return _array_stream(inspector, path, batch_size, span, read)
    return _idx_stream(inspector, path, batch_size, span, read)


_ALL = 1 << 62
"""The stop of the whole stream's row range."""


def data_size(inspector: ModelInput, data: Path | str, *, opener: Opener | None = None) -> int:
    """Return how many inputs DATA holds (files listed, array rows that fit, IDX images).

    Reads headers and the folder listing only; the numbering is the one ``open_data(rows=)``
    uses.

    Raises:
        InputError: as ``open_data``.
    """
    total = open_data(inspector, data, batch_size=1, opener=opener).total
    assert total is not None  # every kind knows its size from headers or the listing
    return total


# -- re-batching ---------------------------------------------------------------------------------
def _rebatch(chunks: Iterator[tuple[int, Chunk]], size: int) -> Iterator[DataBatch]:
    """Cut numbered chunks into the batches of inputs ``[k * size, (k + 1) * size)``.

    A change of row shape ends a batch early.
    """
    pending: list[Chunk] = []
    current = -1
    for first, (sources, rows) in chunks:
        offset = 0
        while offset < len(rows):
            index = first + offset
            take = min(len(rows) - offset, size - index % size)
            if pending and (index // size != current
                            or pending[0][1].shape[1:] != rows.shape[1:]):
                yield _joined(pending)
                pending = []
            pending.append((sources[offset:offset + take], rows[offset:offset + take]))
            current, offset = index // size, offset + take
            if (first + offset) % size == 0:
                yield _joined(pending)
                pending = []
    if pending:
        yield _joined(pending)


def _joined(chunks: list[Chunk]) -> DataBatch:
    if len(chunks) == 1:
        return DataBatch(chunks[0][1], chunks[0][0])
    return DataBatch(np.concatenate([rows for _, rows in chunks]),
                     tuple(s for sources, _ in chunks for s in sources))


# -- images --------------------------------------------------------------------------------------
def _require_images(spec: InputSpec) -> None:
    if spec.layout not in ("NCHW", "NHWC", "NHW") or np.dtype(spec.dtype).kind not in "fiu":
        raise InputError(f"model input {spec.name!r} ({spec.dtype}, shape {spec.shape}) does not "
                         "take images; give DATA as a .npy/.npz array of that shape")


def _folder_stream(inspector: ModelInput, path: Path, batch_size: int,
                   span: tuple[int, int]) -> DataStream:
    files = fileio.list_images(path)  # raises InputError for an empty folder
    _require_images(inspector.spec)
    files = files[span[0]:span[1]]
    return DataStream(path, "folder", len(files), batch_size,
                      lambda skip: _image_chunks(inspector, files, skip),
                      require_rows=span == (0, _ALL), first=span[0])


def _image_chunks(inspector: ModelInput, files: list[Path], skip: SkipFn
                  ) -> Iterator[Chunk]:
    """One single-row chunk per readable image; unreadable ones are skipped."""
    for file in files:
        try:
            image = fileio.load_image(file)
            row = preprocess.image_to_array(image, inspector.spec, inspector.preprocessing)
        except InputError as err:
            skip(str(file), str(err), 1)
            continue
        yield (str(file),), row[None]


# -- arrays --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _ArrayHeader:
    """Shape and dtype of an array stored in C or Fortran order."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool


def _array_stream(inspector: ModelInput, path: Path, batch_size: int,
                  span: tuple[int, int], opener: Opener) -> DataStream:
    """Check every array's header now; stream the arrays that map onto the model input."""
    headers = _read_headers(path, opener)
    plans: dict[str, Callable[[NDArray[np.generic]], NDArray[np.generic]]] = {}
    refused: list[tuple[str, str]] = []
    for key, header in headers.items():
        plan = _array_plan(inspector, header)
        if isinstance(plan, str):
            refused.append((_array_name(path, key, len(headers)), plan))
        else:
            plans[key] = plan
    if not plans:
        raise InputError(refused[0][1] if len(refused) == 1 else
                         "no array of " + str(path) + " fits the model: "
                         + "; ".join(f"{name}: {why}" for name, why in refused))
    ranges, offset = {}, 0
    for key in plans:  # each array's rows in the whole stream's numbering, cut to ``span``
        count = headers[key].shape[0]
        low, high = max(span[0] - offset, 0), min(span[1] - offset, count)
        if low < high:
            ranges[key] = (low, high)
        offset += count

    def chunks(skip: SkipFn) -> Iterator[Chunk]:
        for name, why in refused if span[0] == 0 else ():
            skip(name, why, 0)
        with ExitStack() as stack:
            for key, (low, high) in ranges.items():
                name = _array_name(path, key, len(headers))
                fh = _open_member(stack, path, key, opener)
                for start, rows in _row_chunks(fh, name, batch_size, skip, (low, high)):
                    yield (tuple(f"{name}[{start + i}]" for i in range(len(rows))),
                           plans[key](rows))
    return DataStream(path, "array", sum(h - lo for lo, h in ranges.values()), batch_size,
                      chunks, require_rows=span == (0, _ALL), first=span[0])


def _array_name(path: Path, key: str, keys: int) -> str:
    return str(path) if keys == 1 or path.suffix.lower() == ".npy" else f"{path}:{key}"


def _read_headers(path: Path, opener: Opener) -> dict[str, _ArrayHeader]:
    """Read the header of the ``.npy`` or of every array of the ``.npz`` (file order)."""
    fix = "save it with np.save/np.savez (numeric arrays, no pickled objects)"
    try:
        with ExitStack() as stack:
            if path.suffix.lower() == ".npy":
                return {path.stem: _npy_header(stack.enter_context(opener()))}
            archive = stack.enter_context(zipfile.ZipFile(stack.enter_context(opener())))
            members = [m for m in archive.namelist() if m.endswith(".npy")]
            if not members:
                raise InputError(f"array file {path} holds no arrays; {fix}")
            return {m[:-4]: _npy_header(stack.enter_context(archive.open(m)))
                    for m in members}
    except _READ_ERRORS as err:
        raise InputError(f"cannot read array file {path} ({type(err).__name__}: {err}); "
                         f"{fix}") from err


def _npy_header(fh: IO[bytes]) -> _ArrayHeader:
    version = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(fh)
    return _ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran))


def _open_member(stack: ExitStack, path: Path, key: str, opener: Opener) -> IO[bytes]:
    """Open the ``.npy`` file or one ``.npz`` member positioned at its header."""
    if path.suffix.lower() == ".npy":
        return stack.enter_context(opener())
    archive = stack.enter_context(zipfile.ZipFile(stack.enter_context(opener())))
    return stack.enter_context(archive.open(f"{key}.npy"))


def _row_chunks(fh: IO[bytes], name: str, rows_per_chunk: int, skip: SkipFn,
                span: tuple[int, int]) -> Iterator[tuple[int, NDArray[np.generic]]]:
    """Yield ``(row index, rows)`` of rows ``span`` of a ``.npy`` stream, a chunk at a time.

    A Fortran-order array is read whole (its rows are not contiguous on disk). A truncated or
    corrupt stream ends the array: the rows not read are skipped as one item.
    """
    header = _npy_header(fh)
    first, count = span[0], min(span[1], header.shape[0])
    if header.fortran:
        whole = np.lib.format.read_array(fh, allow_pickle=False)
        for start in range(first, count, rows_per_chunk):
            yield start, whole[start:min(start + rows_per_chunk, count)]
        return
    item_shape = header.shape[1:]
    row_bytes = header.dtype.itemsize * math.prod(item_shape)
    if first and not _skip_bytes(fh, first * row_bytes):
        skip(f"{name}[{first}:{count}]", "the file ends early (truncated)", count - first)
        return
    for start in range(first, count, rows_per_chunk):
        want = min(rows_per_chunk, count - start)
        data, why = _read_rows(fh, want, row_bytes, "rows")
        got = len(data) // row_bytes if row_bytes else want
        if got:
            yield start, np.frombuffer(data, header.dtype).reshape(got, *item_shape)
        if why is not None:
            skip(f"{name}[{start + got}:{count}]", why, count - start - got)
            return


def _skip_bytes(fh: IO[bytes], size: int) -> bool:
    """Read past ``size`` bytes (gzip and zip member streams cannot seek without decompressing).

    Returns:
        False when the stream ends, or cannot be read, first.
    """
    left = size
    try:
        while left:
            part = fh.read(min(left, 1 << 20))
            if not part:
                return False
            left -= len(part)
    except _READ_ERRORS:
        return False
    return True


def _read_rows(fh: IO[bytes], rows: int, row_bytes: int, what: str
               ) -> tuple[bytes, str | None]:
    """Read up to ``rows`` rows; return the whole rows read and why it stopped early (None).

    Rows are read one at a time: a truncated gzip stream raises on the read that reaches its
    end, and a buffered read drops what it had decompressed, so a batch-sized read would lose
    rows that are in the file.
    """
    parts: list[bytes] = []
    for _ in range(rows):
        try:
            row = _read_exact(fh, row_bytes)
        except _READ_ERRORS as err:
            return b"".join(parts), f"cannot read {what} ({type(err).__name__}: {err})"
        if row is None:
            return b"".join(parts), "the file ends early (truncated)"
        parts.append(row)
    return b"".join(parts), None


def _read_exact(fh: IO[bytes], size: int) -> bytes | None:
    """Read exactly ``size`` bytes, or return None at an early end of file."""
    parts, left = [], size
    while left:
        part = fh.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


Plan = Callable[[NDArray[np.generic]], NDArray[np.generic]]


def _array_plan(inspector: ModelInput, header: _ArrayHeader) -> Plan | str:
    """Return how rows of this array become model input rows, or why they cannot."""
    spec = inspector.spec
    item = header.shape[1:]
    dtype = header.dtype
    if len(header.shape) == 0 or dtype.kind not in "fiub":
        return (f"array of shape {header.shape} and dtype {dtype} holds no numeric rows; "
                "give an (N, ...) array of numbers")
    want = _item_shape(spec)
    same_kind = dtype.kind == "f" and np.dtype(spec.dtype).kind == "f" or dtype == spec.dtype
    if same_kind:
        plan = _value_plan(spec, item, want)
        if plan is not None:
            return plan
    if dtype == np.uint8 and _image_like(item) and spec.layout in ("NCHW", "NHWC", "NHW"):
        return _image_plan(inspector, item)
    return (f"an array of {dtype} rows {item} does not fit model input {spec.name!r} "
            f"({spec.dtype}, rows {want}): float arrays are fed as they are and must match the "
            f"input (NCHW or NHWC, same size); uint8 arrays are images (N, H, W), (N, H, W, C) "
            f"or (N, C, H, W) with C in 1, 3, 4, preprocessed like image files")


def _item_shape(spec: InputSpec) -> tuple[int | str | None, ...]:
    if spec.shape:
        return tuple(spec.shape[1:])
    dims = {"C": spec.channels, "H": spec.height, "W": spec.width}
    return tuple(dims[a] for a in spec.layout[1:]) if spec.layout in ("NCHW", "NHWC") else ()


def _fits(item: tuple[int, ...], want: tuple[int | str | None, ...]) -> bool:
    return len(item) == len(want) and all(
        not isinstance(w, int) or w == i for i, w in zip(item, want, strict=True))


def _value_plan(spec: InputSpec, item: tuple[int, ...], want: tuple[int | str | None, ...]
                ) -> Plan | None:
    """As is, transposed between NCHW and NHWC, or with a missing 1-channel axis added."""
    def check(rows: NDArray[np.generic]) -> NDArray[np.generic]:
        return preprocess.check_batch(rows, spec)

    if _fits(item, want):
        return check
    if len(item) == 3 and spec.layout in ("NCHW", "NHWC"):
        perm = (0, 3, 1, 2) if spec.layout == "NCHW" else (0, 2, 3, 1)
        moved = tuple(item[p - 1] for p in perm[1:])
        if _fits(moved, want):
            return lambda rows: check(rows.transpose(perm))
    if len(item) == 2 and spec.channels == 1 and spec.layout in ("NCHW", "NHWC"):
        axis = 1 if spec.layout == "NCHW" else 3
        if _fits((1, *item) if axis == 1 else (*item, 1), want):
            return lambda rows: check(np.expand_dims(rows, axis))
    return None


def _image_like(item: tuple[int, ...]) -> bool:
    return len(item) == 2 or (len(item) == 3 and (item[2] in _IMAGE_CHANNELS
                                                  or item[0] in _IMAGE_CHANNELS))


def _image_plan(inspector: ModelInput, item: tuple[int, ...]) -> Plan:
    """Rows of uint8 pixels become PIL images preprocessed like image files."""
    channels_last = len(item) == 2 or item[2] in _IMAGE_CHANNELS

    def convert(rows: NDArray[np.generic]) -> NDArray[np.generic]:
        pixels = np.asarray(rows, np.uint8)
        if not channels_last:
            pixels = pixels.transpose(0, 2, 3, 1)
        if pixels.ndim == 4 and pixels.shape[3] == 1:
            pixels = pixels[..., 0]
        return np.stack([preprocess.image_to_array(Image.fromarray(np.ascontiguousarray(p)),
                                                   inspector.spec, inspector.preprocessing)
                         for p in pixels])
    return convert


# -- MNIST IDX -----------------------------------------------------------------------------------
def _idx_stream(inspector: ModelInput, path: Path, batch_size: int,
                span: tuple[int, int], opener: Opener) -> DataStream:
    """An MNIST IDX images file: header now, pixels a batch at a time while iterating."""
    magic, total, rows, cols = _idx_header(path, opener)
    _require_images(inspector.spec)
    plan = _image_plan(inspector, (rows, cols))
    row_bytes = rows * cols
    first, count = min(span[0], total), min(span[1], total)

    def chunks(skip: SkipFn) -> Iterator[Chunk]:
        with _open_idx(opener) as fh:
            fh.read(16)
            if first and not _skip_bytes(fh, first * row_bytes):
                skip(f"{path}[{first}:{count}]", "the file ends early (truncated)",
                     count - first)
                return
            for start in range(first, count, batch_size):
                want = min(batch_size, count - start)
                data, why = _read_rows(fh, want, row_bytes, "images")
                got = len(data) // row_bytes if row_bytes else want
                if got:
                    pixels = np.frombuffer(data, np.uint8).reshape(got, rows, cols)
                    yield tuple(f"{path}[{start + i}]" for i in range(got)), plan(pixels)
                if why is not None:
                    skip(f"{path}[{start + got}:{count}]", why, count - start - got)
                    return
    return DataStream(path, "idx", count - first, batch_size, chunks,
                      require_rows=span == (0, _ALL), first=first)


@contextlib.contextmanager
def _open_idx(opener: Opener) -> Iterator[IO[bytes]]:
    """The IDX file's bytes, gunzipped as a stream when it starts with gzip's magic."""
    with opener() as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield cast(IO[bytes], unzipped)


def _idx_header(path: Path, opener: Opener) -> tuple[int, int, int, int]:
    """Return ``(magic, count, rows, cols)`` of an IDX images file.

    Raises:
        InputError: not an IDX images file (unknown format, labels file, unreadable header).
    """
    try:
        with _open_idx(opener) as fh:
            head = fh.read(16)
    except _READ_ERRORS as err:
        raise InputError(f"cannot read DATA {path} ({type(err).__name__}: {err}); give "
                         f"{DATA_KINDS}") from err
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else -1
    if magic == IDX_LABELS_MAGIC:
        raise InputError(f"{path} is an IDX labels file (magic {IDX_LABELS_MAGIC}); give the "
                         f"images file (magic {IDX_IMAGES_MAGIC}, e.g. "
                         "t10k-images-idx3-ubyte.gz)")
    if magic != IDX_IMAGES_MAGIC or len(head) < 16:
        raise InputError(f"cannot tell what DATA {path} is (suffix {path.suffix!r}, not an "
                         f"image, array or MNIST IDX images file); give {DATA_KINDS}")
    _, count, rows, cols = struct.unpack(">IIII", head)
    return magic, count, rows, cols


__all__ = ["ARRAY_EXTENSIONS", "DATA_KINDS", "IMAGE_EXTENSIONS", "DataBatch", "DataStream",
           "data_size", "open_data"]
