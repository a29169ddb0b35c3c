"""Fuzz cases for the model loaders: seed models, mutators, and the calls each case feeds.

Image, array and labels files are made by ``tools/fuzz_images.py``. Both are shared by
``tools/fuzz.py`` (random runs in capped child processes) and ``tests/test_fuzz.py``
(hypothesis). Every random decision goes through a ``Chooser`` (``choose(n)`` returns an int in
``[0, n)``), so a case is reproducible from its chooser alone: ``random.Random`` in the tool,
``st.data()`` draws (which hypothesis can shrink) in the tests.

The contract checked: each call succeeds or raises ``FeatvizError`` with a one-line message.
No torch here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_featviz import api
from onnx_featviz.errors import FeatvizError
from onnx_featviz.io import external as model_files
from onnx_featviz.io import files as fileio

Chooser = Callable[[int], int]
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "models" / "mnist_cnn.onnx"
SAMPLES = REPO / "models" / "samples"
MODEL_NAME = "model.onnx"

#: Integers that break size arithmetic: zero, signs, 32/64-bit edges, huge products.
INTERESTING = (0, 1, -1, 2, 3, 255, 65535, 80000, 60000, 10**6, 10**9, 10**12, 2**31 - 1,
               2**31, -(2**31), 2**32, 2**62, 2**63 - 1, -(2**63))
#: ONNX data types: undefined, valid, reserved, unknown, negative.
DATA_TYPES = (0, 1, 2, 3, 6, 7, 8, 10, 11, 16, 17, 21, 22, 23, 24, 25, 26, 99, 2**31 - 1, -1)
SYMBOLS = ("N", "", "height", "-1", "\u00e9", "x" * 300, "0")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80\xbf")
JSON_VALUES = (
    "null", "{garbage", "[1,2", '"abc"', "{}", "[]", "1e999", "NaN", "[" * 50000, "[null, 1, {}]",
    '{"size": [100000, 100000]}', '{"size": [2147483647, 1]}', '{"size": -1}', '{"mean": "x"}',
    '{"layout": 5}', '{"layout": "NHWC"}', '{"scale": 0}', '{"std": [0]}', '{"size": [0, 0]}',
    '{"channel_order": "XYZ"}', '{"resize": null}', '{"preset": "nope"}', '{"preset": null}',
    '{"mean": [1e309]}', '{"crop_fraction": 1e-300}', '{"size": 1e9}', '["a"]',
)
META_KEYS = ("featviz.labels", "featviz.preprocess")


class Skip(Exception):
    """A mutator found nothing to mutate (an empty list after an earlier mutation)."""


def pick(choose: Chooser, items: Sequence[T]) -> T:
    """Return one of ``items`` chosen by ``choose``; raise Skip when there is none."""
    if not items:
        raise Skip
    return items[choose(len(items))]


# -- guards -----------------------------------------------------------------------------------
def vm_size() -> int:
    """Return this process's virtual memory size in bytes (0 when /proc is unavailable)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def guarded(seconds: float, extra_bytes: int) -> Iterator[None]:
    """Raise TimeoutError after ``seconds`` and cap address space to current + ``extra_bytes``.

    Both limits are restored on exit (the soft RLIMIT_AS may be raised back to the hard one).
    Main thread only (SIGALRM).
    """
    old_limit = resource.getrlimit(resource.RLIMIT_AS)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"case ran longer than {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    cap = vm_size() + extra_bytes
    hard = old_limit[1]
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


# -- seed models ------------------------------------------------------------------------------
def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def conv_classifier() -> onnx.ModelProto:
    """x(1,1,8,8) -> Conv(4,1,3,3) -> Relu -> GlobalAveragePool -> Flatten -> MatMul(4,3)
    -> Softmax -> y(1,3); labels and preprocessing metadata set."""
    w = np.arange(36, dtype=np.float32).reshape(4, 1, 3, 3) / 36.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "m"], ["z"], name="fc"),
         helper.make_node("Softmax", ["z"], ["y"], name="softmax")],
        "conv_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_const("w", w), _const("b", np.zeros(4, np.float32)),
         _const("m", np.ones((4, 3), np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {
        "featviz.labels": json.dumps(["a", "b", "c"]),
        "featviz.preprocess": json.dumps({"channel_order": "GRAY", "scale": 0.5}),
    })
    return model


def dynamic_conv() -> onnx.ModelProto:
    """x(N,3,H,W) -> Conv(2,3,3,3) -> Relu -> GlobalAveragePool -> y (no declared shape)."""
    w = np.ones((2, 3, 3, 3), np.float32) / 27.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool")],
        "dynamic_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_const("w", w)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@cache
def _seed_bytes(name: str) -> bytes:
    if name == "mnist":
        return MNIST.read_bytes()
    model = conv_classifier() if name == "conv" else dynamic_conv()
    return bytes(model.SerializeToString())


def seed_names() -> tuple[str, ...]:
    """Names of the seed models (``mnist`` only when the bundled file exists)."""
    return ("conv", "dynamic", "mnist") if MNIST.is_file() else ("conv", "dynamic")


def seed_model(name: str) -> onnx.ModelProto:
    """Return a fresh copy of a seed model."""
    model = onnx.ModelProto()
    model.ParseFromString(_seed_bytes(name))
    return model


# -- byte mutations ---------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate_bytes(data: bytes, choose: Chooser, *, steps: int = 4) -> bytes:
    """Apply 1..``steps`` flips, overwrites, inserts, deletes, varints or a truncation."""
    buf = bytearray(data)
    for _ in range(1 + choose(steps)):
        pos = choose(len(buf) + 1)
        kind = choose(7)
        if kind == 0 and pos < len(buf):
            buf[pos] ^= 1 << choose(8)
        elif kind == 1 and pos < len(buf):
            buf[pos] = pick(choose, (0, 0xFF, 0x7F, 0x80, 0x01))
        elif kind == 2:
            buf[pos:pos] = bytes(pick(choose, (b"\x00", b"\xff" * 9, b"\x0a\xff\xff\xff\x0f")))
        elif kind == 3:
            del buf[pos:pos + 1 + choose(64)]
        elif kind == 4:
            buf[pos:pos + 1] = _varint(pick(choose, INTERESTING))
        elif kind == 5:
            del buf[pos:]
        else:
            size = 1 + choose(256)
            buf[pos:pos] = buf[pos:pos + size]
    return bytes(buf)


# -- protobuf field mutations -----------------------------------------------------------------
def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def _mut_dim(model: onnx.ModelProto, choose: Chooser) -> None:
    value = pick(choose, _value_infos(model))
    shape = value.type.tensor_type.shape
    if not shape.dim or choose(4) == 0:
        shape.dim.add()
    dim = pick(choose, shape.dim)
    action = choose(3)
    if action == 0:
        dim.dim_value = pick(choose, INTERESTING)
    elif action == 1:
        dim.dim_param = pick(choose, SYMBOLS)
    else:
        dim.Clear()


def _mut_init_dims(model: onnx.ModelProto, choose: Chooser) -> None:
    tensor = pick(choose, model.graph.initializer)
    if tensor.dims and choose(3):
        tensor.dims[choose(len(tensor.dims))] = pick(choose, INTERESTING)
    elif choose(2):
        tensor.dims.append(pick(choose, INTERESTING))
    else:
        del tensor.dims[:]


def _mut_data_type(model: onnx.ModelProto, choose: Chooser) -> None:
    if choose(2):
        pick(choose, model.graph.initializer).data_type = pick(choose, DATA_TYPES)
    else:
        value = pick(choose, _value_infos(model))
        value.type.tensor_type.elem_type = pick(choose, DATA_TYPES)


def _mut_raw_data(model: onnx.ModelProto, choose: Chooser) -> None:
    tensor = pick(choose, model.graph.initializer)
    raw = tensor.raw_data
    action = choose(3)
    if action == 0:
        tensor.raw_data = raw[:choose(len(raw) + 1)]
    elif action == 1:
        tensor.raw_data = raw + b"\x00" * (1 + choose(7))
    else:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * choose(5))


def _mut_drop(model: onnx.ModelProto, choose: Chooser) -> None:
    g = model.graph
    field = pick(choose, (g.initializer, g.input, g.output, g.node, model.opset_import))
    if field and choose(2):
        del field[choose(len(field))]
    else:
        del field[:]


def _mut_metadata(model: onnx.ModelProto, choose: Chooser) -> None:
    key = pick(choose, META_KEYS)
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=pick(choose, JSON_VALUES))


def _mut_versions(model: onnx.ModelProto, choose: Chooser) -> None:
    values = (0, -1, 1, 3, 6, 7, 99, 10**6, 2**62)
    if choose(2) and model.opset_import:
        opset = pick(choose, model.opset_import)
        if choose(3):
            opset.version = pick(choose, values)
        else:
            opset.domain = pick(choose, ("x.y", "ai.onnx.ml", "com.microsoft", "ai.onnx"))
    else:
        model.ir_version = pick(choose, values)


def _mut_node(model: onnx.ModelProto, choose: Chooser) -> None:
    if not model.graph.node:
        return
    node = pick(choose, model.graph.node)
    action = choose(5)
    if action == 0:
        node.op_type = pick(choose, ("", "Nope", "Conv", "Loop", "Softmax", "QLinearConv"))
    elif action == 1:
        node.domain = pick(choose, ("x.y", "com.microsoft", "ai.onnx.ml"))
    elif action == 2 and node.input:
        node.input[choose(len(node.input))] = pick(
            choose, ("", "dangling", *[o for n in model.graph.node for o in n.output]))
    elif action == 3:
        name = pick(choose, ("kernel_shape", "pads", "strides", "group", "dilations", "axis"))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        ints = [pick(choose, INTERESTING) for _ in range(choose(5))]
        value: int | list[int] = ints if ints and choose(2) else (ints[0] if ints else 0)
        node.attribute.append(helper.make_attribute(name, value))
    else:
        node.output[0] = pick(choose, ("", *[i for n in model.graph.node for i in n.input]))


def _mut_input_type(model: onnx.ModelProto, choose: Chooser) -> None:
    value = pick(choose, _value_infos(model))
    if choose(2):
        value.type.CopyFrom(helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    else:
        value.type.ClearField("tensor_type")


PROTO_MUTATORS: dict[str, Callable[[onnx.ModelProto, Chooser], None]] = {
    "dim": _mut_dim, "init_dims": _mut_init_dims, "data_type": _mut_data_type,
    "raw_data": _mut_raw_data, "drop": _mut_drop, "metadata": _mut_metadata,
    "versions": _mut_versions, "node": _mut_node, "input_type": _mut_input_type,
}


def _bad_names(model: onnx.ModelProto, choose: Chooser) -> bytes:
    """Serialize with one string field replaced by invalid UTF-8 (same length, so the
    protobuf framing stays valid): only raw bytes can hold such a name."""
    bad = pick(choose, BAD_UTF8)
    bad = (b"n" + bad + b"-" * 16)[:14]
    marker = "@@fuzz-marker@"  # as long as ``bad``; absent from every seed
    g = model.graph
    slots: list[tuple[Any, str]] = [(n, "name") for n in g.node] + [
        (t, "name") for t in g.initializer] + [(v, "name") for v in _value_infos(model)] + [
        (p, "value") for p in model.metadata_props] + [(p, "key") for p in model.metadata_props]
    slots += [(model, "producer_name"), (g, "name"), (model, "doc_string")]
    slots += [(n, "op_type") for n in g.node]
    target, field = pick(choose, slots)
    old = getattr(target, field)
    setattr(target, field, marker)
    if field == "name" and old and choose(2):  # keep the references to a renamed tensor
        for node in g.node:
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == old:
                        names[i] = marker
    data = bytes(model.SerializeToString())
    return data.replace(marker.encode(), bad)


# -- external data ----------------------------------------------------------------------------
def _externalize(model: onnx.ModelProto, folder: Path) -> TensorProto:
    """Move the largest initializer to ``weights.bin`` in ``folder``; return it."""
    tensor: TensorProto = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = tensor.raw_data
    (folder / "weights.bin").write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(len(raw)))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _set_entry(tensor: TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


def _mut_external(model: onnx.ModelProto, folder: Path, choose: Chooser) -> None:
    tensor = _externalize(model, folder)
    action = choose(12)
    outside = folder.parent / "outside.bin"
    if action == 0:
        outside.write_bytes(b"\0" * 4096)
        _set_entry(tensor, "location", "../outside.bin")
    elif action == 1:
        _set_entry(tensor, "location", pick(choose, ("/dev/zero", "/etc/hostname", "C:\\x")))
    elif action == 2:
        os.symlink("loop.bin", folder / "loop.bin")
        _set_entry(tensor, "location", "loop.bin")
    elif action == 3:
        os.symlink("/dev/zero", folder / "zero.bin")
        _set_entry(tensor, "location", "zero.bin")
    elif action == 4:
        os.mkfifo(folder / "pipe.bin")
        _set_entry(tensor, "location", "pipe.bin")
    elif action in (5, 6):
        key = "offset" if action == 5 else "length"
        _set_entry(tensor, key, pick(choose, ("-1", "abc", "", "1e3", str(2**63), "4096")))
    elif action == 7:
        _set_entry(tensor, "location", pick(choose, (".", "", "sub/", "a\x00b", "weights.bin/")))
    elif action == 8:
        tensor.dims[:] = [pick(choose, INTERESTING)]
    elif action == 9:
        os.symlink(outside, folder / "out.bin")
        outside.write_bytes(b"\0" * 4096)
        _set_entry(tensor, "location", "out.bin")
    elif action == 10:
        (folder / "weights.bin").write_bytes(b"")
    else:
        tensor.external_data.add(key=pick(choose, ("location", "checksum", "x")), value="1")


# -- model cases ------------------------------------------------------------------------------
def _special_model(folder: Path, choose: Chooser) -> Path:
    """A model path that is no regular file: device, FIFO, socket, folder, links."""
    path = folder / MODEL_NAME
    action = choose(6)
    if action == 0:
        return Path("/dev/zero")
    if action == 1:
        os.mkfifo(path)
    elif action == 2:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    elif action == 3:
        os.symlink(path, path)
    elif action == 4:
        os.symlink("/dev/zero", path)
    else:
        path.mkdir()
    return path


MODEL_KINDS = ("proto", "names", "bytes", "external", "special")


def write_model_case(folder: Path, choose: Chooser,
                     kinds: Sequence[str] = MODEL_KINDS) -> tuple[Path, str]:
    """Write one mutated model under ``folder`` (its own subfolder ``m``).

    Returns:
        (path of the model to load, short description of the mutation).
    """
    model_dir = folder / "m"
    model_dir.mkdir(parents=True, exist_ok=True)
    kind = pick(choose, kinds)
    if kind == "special":
        return _special_model(model_dir, choose), "special"
    seed = pick(choose, seed_names())
    model = seed_model(seed)
    label = f"{kind}:{seed}"
    if kind == "external":
        _mut_external(model, model_dir, choose)
        data = model.SerializeToString()
    elif kind == "names":
        data = _bad_names(model, choose)
    elif kind == "bytes":
        data = mutate_bytes(model.SerializeToString(), choose)
    else:
        names = [pick(choose, tuple(PROTO_MUTATORS)) for _ in range(1 + choose(3))]
        for name in names:
            with contextlib.suppress(Skip):
                PROTO_MUTATORS[name](model, choose)
        label += ":" + "+".join(names)
        data = model.SerializeToString()
    path = model_dir / MODEL_NAME
    path.write_bytes(data)
    return path, label


# -- running a case ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    """What a case did: ``ok``, ``error`` (FeatvizError) or ``traceback`` (anything else)."""

    outcome: str
    step: str = ""
    key: str = ""
    detail: str = ""


def failure_key(err: BaseException) -> str:
    """Return ``Type @ file:line in func`` of the innermost frame of ``err``'s traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return type(err).__name__
    last = frames[-1]
    return f"{type(err).__name__} @ {Path(last.filename).name}:{last.lineno} in {last.name}"


def run_steps(steps: Sequence[tuple[str, Callable[[], object]]],
              on_step: Callable[[str], None] | None = None) -> Outcome:
    """Run each step; stop at the first non-FeatvizError exception (a ``traceback``)."""
    errors = 0
    for name, step in steps:
        if on_step is not None:
            on_step(name)
        try:
            step()
        except FeatvizError as err:
            errors += 1
            if "\n" in str(err) or not str(err):
                return Outcome("traceback", name, f"FeatvizError message not one line: {name}",
                               repr(str(err))[:2000])
        except (Exception, MemoryError) as err:  # noqa: BLE001 - the contract is what we test
            return Outcome("traceback", name, failure_key(err),
                           "".join(traceback.format_exception(err))[-6000:])
    return Outcome("error" if errors else "ok")


def _cli_info(path: Path) -> None:
    """Run ``featviz info PATH``; re-raise anything that is not a clean exit 0 or 1."""
    from click.testing import CliRunner

    from onnx_featviz.cli import commands as cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(cli.main, ["info", str(path)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if result.exit_code not in (0, 1):
        raise AssertionError(f"featviz info exited {result.exit_code}: {result.output[-500:]}")


def tiny_image() -> Image.Image:
    """A 6x5 gray gradient, the ``predict`` input for model cases."""
    return Image.fromarray(np.arange(30, dtype=np.uint8).reshape(5, 6) * 8, "L")


def model_steps(path: Path) -> list[tuple[str, Callable[[], object]]]:
    """Calls fed a model path: loader, catalog, Inspector info/describe/predict, CLI info."""
    loaded: dict[str, onnx.ModelProto] = {}

    def load() -> None:
        loaded["model"] = model_files.load_model(path)

    def inspect() -> None:
        if "model" in loaded:
            api.inspect_model(loaded["model"])

    def inspector() -> None:
        if "model" not in loaded:
            return
        with api.Inspector(loaded["model"], "cpu") as insp:
            api.describe(insp)
            insp.predict(tiny_image(), top_k=2)

    return [("load_model", load), ("inspect_model", inspect), ("Inspector", inspector),
            ("cli info", lambda: _cli_info(path))]


@lru_cache(maxsize=1)
def _image_inspector() -> api.Inspector:
    return api.Inspector(conv_classifier(), "cpu")


def image_steps(path: Path) -> list[tuple[str, Callable[[], object]]]:
    """Calls fed an image/array/text path: its loader, list_images, load_batch and predict."""
    insp = _image_inspector()
    suffix = path.suffix.lower()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("list_images", lambda: fileio.list_images(path)),
        ("list_images folder", lambda: fileio.list_images(path.parent))]
    if suffix in (".npy", ".npz"):
        steps.append(("load_array_file", lambda: fileio.load_array_file(path)))
    elif suffix == ".txt":
        steps += [("read_text", lambda: fileio.read_text(path)),
                  ("read_labels", lambda: api.read_labels(path))]
        return steps
    else:
        steps.append(("load_image", lambda: fileio.load_image(path)))
    steps += [("load_batch", lambda: insp.load_batch([path])),
              ("predict", lambda: insp.predict(path, top_k=2))]
    return steps
