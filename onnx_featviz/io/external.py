"""External data of ONNX models (``model.onnx.data``): sizes, safe loading (no path outside the
model's folder, no special files), and writing large models with their weights beside them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import IO

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from onnx import external_data_helper, numpy_helper

from onnx_featviz.errors import ModelError
from onnx_featviz.io.files import (
    _PROTO_LIMIT,
    _atomic_write,
    log,
    non_file_kind,
    save_bytes,
)

# tensors at least this big go to the external data file when a model is saved with one.
_EXTERNAL_MIN_BYTES = 1024


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



_EXPORT_FIX = "export the network to .onnx first"


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
