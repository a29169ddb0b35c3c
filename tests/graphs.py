"""Tiny ONNX model builders with hand-set weights, shared by the tests.

Each builder's docstring sketches its graph. Models use IR 8 so onnxruntime 1.31 reads them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8


def make(graph: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    """Wrap a graph in a model with an IR version onnxruntime 1.31 accepts."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def conv_relu() -> onnx.ModelProto:
    """x(1,1,4,4) -> Conv[ones 3x3, bias 0] "conv" -> c -> Relu "relu" -> y.

    With x = arange(16) the conv output is [[45, 54], [81, 90]].
    """
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((1,), np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [w, b],
    )
    return make(graph)


def conv_relu_dynamic() -> onnx.ModelProto:
    """x(N,1,4,4) -> Conv[ones 3x3, bias 0] "conv" -> c -> Relu "relu" -> y(N,1,2,2)."""
    model = conv_relu()
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"
    onnx.checker.check_model(model)
    return model


# --- builders for weights tests (and reused by catalog/rewrite/api tests) ---------------------
# (this file is append-only for parallel helpers, hence the import here)

from pathlib import Path  # noqa: E402


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _rng_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def small_cnn() -> onnx.ModelProto:
    """A float conv net, 16x16 RGB input, dynamic batch, rng(0) weights (scale 0.3).

    x(N,3,16,16) -> Conv "conv1" [w1 (4,3,3,3), pad 1, no bias] -> c1 -> Relu "relu1" -> r1
      -> MaxPool "pool" [2x2/2] -> p1 (N,4,8,8)
      -> Conv "conv2" [w2 (8,4,3,3), b2 (8,), pad 1] -> c2 -> Relu "relu2" -> r2
      -> GlobalAveragePool "gap" -> g (N,8,1,1) -> Flatten "flatten" -> f (N,8)
      -> Gemm "fc" [fc_w (10,8) transB, fc_b (10,)] -> logits (N,10)
    """
    rng = np.random.default_rng(0)
    inits = [
        _init("w1", _rng_weight(rng, (4, 3, 3, 3))),
        _init("w2", _rng_weight(rng, (8, 4, 3, 3))),
        _init("b2", _rng_weight(rng, (8,))),
        _init("fc_w", _rng_weight(rng, (10, 8))),
        _init("fc_b", _rng_weight(rng, (10,))),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return make(graph)


def _quantize(model: onnx.ModelProto, calib: np.ndarray, fmt: str, per_channel: bool,
              weight_type: str, reduce_range: bool | None = None) -> onnx.ModelProto:
    """Run onnxruntime.quantization.quantize_static (MinMax) over ``calib`` (N, ...).

    int8 weights are quantized with ``reduce_range=True`` (7-bit), as onnxruntime advises for
    CPUs without VNNI: there its U8S8 kernels add pairs of u8*s8 products in saturating int16
    (vpmaddubsw), which full-range weights overflow (MNIST relu1: 16.8 dB instead of 41 dB).
    With 7-bit weights the results agree on every x86-64 CPU. ``reduce_range=False`` makes the
    full-range model such CPUs run badly (for tests of that finding).
    """
    import tempfile

    from onnxruntime import quantization as q

    input_name = model.graph.input[0].name

    class Reader(q.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{input_name: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        onnx.save_model(model, src)
        q.quantize_static(
            src, dst, Reader(),
            quant_format=q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QUInt8 if weight_type == "uint8" else q.QuantType.QInt8,
            reduce_range=weight_type == "int8" if reduce_range is None else reduce_range,
        )
        out = onnx.load(dst)
    if out.ir_version > model.ir_version:
        out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def qdq_model(model: onnx.ModelProto, calib: np.ndarray, *, per_channel: bool = True,
              weight_type: str = "int8", reduce_range: bool | None = None) -> onnx.ModelProto:
    """QDQ-quantize ``model`` (float, e.g. ``small_cnn()``) with calibration batch ``calib``.

    Each float Conv becomes
      x -> QuantizeLinear -> DequantizeLinear -> Conv <- DequantizeLinear(axis 0) <- w_int8
                                                     <- DequantizeLinear <- b_int32
    with per-output-channel weight scales when ``per_channel``; weights int8 (7-bit unless
    ``reduce_range=False``) or uint8.
    """
    return _quantize(model, calib, "qdq", per_channel, weight_type, reduce_range)


def qoperator_model(model: onnx.ModelProto, calib: np.ndarray, *, per_channel: bool = True,
                    weight_type: str = "int8", reduce_range: bool | None = None
                    ) -> onnx.ModelProto:
    """QOperator-quantize ``model``: float Convs become QLinearConv.

    x -> QuantizeLinear -> QLinearConv(x, x_s, x_zp, w_q, w_s, w_zp, y_s, y_zp, b_int32) -> ...
    """
    return _quantize(model, calib, "qop", per_channel, weight_type, reduce_range)


def fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert every float tensor (inputs, outputs, initializers) of ``model`` to float16.

    Uses onnxconverter_common.float16 (keep_io_types=False); the IR version is kept.
    """
    from onnxconverter_common import float16

    out: onnx.ModelProto = float16.convert_float_to_float16(model, keep_io_types=False)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def grouped_conv() -> onnx.ModelProto:
    """A grouped conv followed by a depthwise conv; weights arange-based, no padding.

    x(1,4,7,7) -> Conv "grouped" [group 2, wg (6,2,3,3) = arange/10, bg (6,) = arange]
      -> g (1,6,5,5)
      -> Conv "depthwise" [group 6, wd (6,1,3,3) = arange/100 - 0.2] -> y (1,6,3,3)
    """
    wg = (np.arange(6 * 2 * 9, dtype=np.float32) / 10).reshape(6, 2, 3, 3)
    wd = (np.arange(6 * 9, dtype=np.float32) / 100 - 0.2).reshape(6, 1, 3, 3)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "wg", "bg"], ["g"], name="grouped", group=2),
            helper.make_node("Conv", ["g", "wd"], ["y"], name="depthwise", group=6),
        ],
        "grouped_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 3, 3])],
        [_init("wg", wg), _init("bg", np.arange(6, dtype=np.float32)), _init("wd", wd)],
    )
    return make(graph)


def conv_transpose() -> onnx.ModelProto:
    """Two parallel ConvTransposes of one input, stride 2, rng(0) weights (asymmetric).

    x(1,4,5,5) -> ConvTranspose "deconv" [group 1, wt (4,6,3,2) (I, O, kH, kW), bt (6,)]
               -> y1 (1,6,11,10)
    x          -> ConvTranspose "deconv_grouped" [group 2, wtg (4,3,3,2) (I, O/g, kH, kW)]
               -> y2 (1,6,11,10)
    """
    rng = np.random.default_rng(0)
    strides = [2, 2]
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["y1"], name="deconv",
                             strides=strides),
            helper.make_node("ConvTranspose", ["x", "wtg"], ["y2"], name="deconv_grouped",
                             group=2, strides=strides),
        ],
        "conv_transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 6, 11, 10]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 6, 11, 10])],
        [_init("wt", _rng_weight(rng, (4, 6, 3, 2))), _init("bt", _rng_weight(rng, (6,))),
         _init("wtg", _rng_weight(rng, (4, 3, 3, 2)))],
    )
    return make(graph)


def nhwc_keras_style() -> onnx.ModelProto:
    """An NHWC input transposed to NCHW, as tf2onnx / keras2onnx emit.

    x(N,8,8,3) -> Transpose "transpose" [perm 0,3,1,2] -> xt (N,3,8,8)
      -> Conv "conv" [w (4,3,3,3) rng(0), b (4,)] -> c (N,4,6,6) -> Relu "relu" -> y
    """
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], name="transpose", perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["xt", "w", "b"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "nhwc_keras_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [_init("w", _rng_weight(rng, (4, 3, 3, 3))), _init("b", _rng_weight(rng, (4,)))],
    )
    return make(graph)


def empty_names(*, duplicated: bool = True) -> onnx.ModelProto:
    """Nodes with empty and duplicated names (catalog generates ``<op_type>_<index>``).

    x(1,1,6,6) -> Conv "" [wa ones (2,1,3,3)] -> a -> Relu "" -> ra
      -> Conv "dup" [wb arange (2,2,3,3)/10] -> b -> Relu "dup" -> y (1,2,2,2)

    onnxruntime refuses duplicated node names ("two nodes with same node name"), so this model
    only loads in a session after renaming; ``duplicated=False`` names the last two nodes
    "conv_b" and "relu_b" (empty names only), which onnxruntime accepts.
    """
    wa = np.ones((2, 1, 3, 3), np.float32)
    wb = (np.arange(36, dtype=np.float32) / 10).reshape(2, 2, 3, 3)
    conv_b, relu_b = ("dup", "dup") if duplicated else ("conv_b", "relu_b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name=""),
            helper.make_node("Relu", ["a"], ["ra"], name=""),
            helper.make_node("Conv", ["ra", "wb"], ["b"], name=conv_b),
            helper.make_node("Relu", ["b"], ["y"], name=relu_b),
        ],
        "empty_names",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [_init("wa", wa), _init("wb", wb)],
    )
    return make(graph)


def with_constant_weight() -> onnx.ModelProto:
    """Weights that are not initializers of the conv: a Constant through Identity, and a Cast.

    Constant "wconst" [value (2,1,3,3) = arange/10] -> wc -> Identity "wid" -> wi
    x(1,1,5,5) -> Conv "conv_const" [wi, bias from Constant "bconst" (2,) = [1, -1]] -> a
    w16 float16 init (2,2,3,3) = arange/8 -> Cast "wcast" [to float] -> wf
    a -> Conv "conv_cast" [wf] -> y (1,2,1,1)
    """
    wc = (np.arange(18, dtype=np.float32) / 10).reshape(2, 1, 3, 3)
    w16 = (np.arange(36, dtype=np.float32) / 8).reshape(2, 2, 3, 3).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["wc"], name="wconst",
                             value=numpy_helper.from_array(wc)),
            helper.make_node("Identity", ["wc"], ["wi"], name="wid"),
            helper.make_node("Constant", [], ["bc"], name="bconst",
                             value=numpy_helper.from_array(np.array([1, -1], np.float32))),
            helper.make_node("Conv", ["x", "wi", "bc"], ["a"], name="conv_const"),
            helper.make_node("Cast", ["w16"], ["wf"], name="wcast", to=TensorProto.FLOAT),
            helper.make_node("Conv", ["a", "wf"], ["y"], name="conv_cast"),
        ],
        "with_constant_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])],
        [_init("w16", w16)],
    )
    return make(graph)


def runtime_weight() -> onnx.ModelProto:
    """A conv weight computed at run time from a graph input.

    x(1,1,4,4), k(1,1,3,3) (input), s (1,1,3,3) ones init -> Mul "scale_w" -> w
    x -> Conv "conv" [w] -> y (1,1,2,2)
    """
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["k", "s"], ["w"], name="scale_w"),
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        ],
        "runtime_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [_init("s", np.ones((1, 1, 3, 3), np.float32))],
    )
    return make(graph)


def with_nan_weight() -> onnx.ModelProto:
    """A conv whose weights hold NaN and +Inf and whose bias holds a NaN (3 non-finite values).

    x(1,2,4,4) -> Conv "conv" [w (2,2,3,3) = arange/10, w[0,0,0,0] = NaN, w[1,1,2,2] = +Inf,
                               b = [0, NaN]] -> y (1,2,2,2)
    """
    w = (np.arange(36, dtype=np.float32) / 10).reshape(2, 2, 3, 3)
    w[0, 0, 0, 0] = np.nan
    w[1, 1, 2, 2] = np.inf
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
        "with_nan_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [_init("w", w), _init("b", np.array([0, np.nan], np.float32))],
    )
    return make(graph)


def conv1d() -> onnx.ModelProto:
    """A 1-D conv: x(1,2,10) -> Conv "conv1d" [w (3,2,3) = arange/10, b = arange] -> y (1,3,8)."""
    w = (np.arange(18, dtype=np.float32) / 10).reshape(3, 2, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv1d")],
        "conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8])],
        [_init("w", w), _init("b", np.arange(3, dtype=np.float32))],
    )
    return make(graph)


def conv3d() -> onnx.ModelProto:
    """A 3-D conv: x(1,1,4,4,4) -> Conv "conv3d" [w ones (2,1,3,3,3)] -> y (1,2,2,2,2)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")],
        "conv3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2, 2])],
        [_init("w", np.ones((2, 1, 3, 3, 3), np.float32))],
    )
    return make(graph)


EXTERNAL_WEIGHT_FILE = "conv_weights.bin"


def external_data_weight() -> np.ndarray:
    """The conv weight ``external_data_model`` saves: arange(108)/100 - 0.5, shape (4,3,3,3)."""
    return (np.arange(108, dtype=np.float32) / 100 - 0.5).reshape(4, 3, 3, 3)


def external_data_model(tmp_path: Path) -> Path:
    """Save a small conv model with its tensors in an external file; return the .onnx path.

    x(1,3,6,6) -> Conv "conv" [w = external_data_weight() (4,3,3,3), b (4,) = arange]
      -> y (1,4,4,4); tensors in ``tmp_path / EXTERNAL_WEIGHT_FILE``.
    """
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
        "external_data_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [_init("w", external_data_weight()), _init("b", np.arange(4, dtype=np.float32))],
    )
    model = make(graph)
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL_WEIGHT_FILE, size_threshold=0)
    return path


# --- builders for catalog/rewrite tests ------------------------------------------------------
def conv_bn_relu() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Identity -> Relu (the activation link passes BN, Identity).

    x(1,2,3,3) -> Conv "conv" [ones (2,2,1,1)] -> c -> BatchNormalization "bn"
      [scale (2, 1), bias (-1, 0), mean 0, var 1, eps 0] -> n -> Identity "id" -> i
      -> Relu "relu" -> y (1,2,3,3)
    """
    bn = {"scale": [2.0, 1.0], "bias": [-1.0, 0.0], "mean": [0.0, 0.0], "var": [1.0, 1.0]}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"],
                             name="bn", epsilon=0.0),
            helper.make_node("Identity", ["n"], ["i"], name="id"),
            helper.make_node("Relu", ["i"], ["y"], name="relu"),
        ],
        "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [_init("w", np.ones((2, 2, 1, 1), np.float32))]
        + [_init(k, np.array(v, np.float32)) for k, v in bn.items()],
    )
    return make(graph)


def conv_clip() -> onnx.ModelProto:
    """x(1,1,4,4) -> Conv "conv" [ones 3x3] -> c -> Clip "relu6" [min 0, max 6 inputs] -> y."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6"),
        ],
        "conv_clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [_init("w", np.ones((1, 1, 3, 3), np.float32)), _init("lo", np.array(0.0, np.float32)),
         _init("hi", np.array(6.0, np.float32))],
    )
    return make(graph)


def conv_gated(gate: str) -> onnx.ModelProto:
    """SiLU / HardSwish written as two nodes: ``gate`` is "Sigmoid" or "HardSigmoid".

    x(1,1,4,4) -> Conv "conv" [ones 3x3, bias -60] -> c -+-> <gate> "gate" -> s
                                                         `-> Mul "mul" (c, s) -> y (1,1,2,2)
    """
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
            helper.make_node(gate, ["c"], ["s"], name="gate"),
            helper.make_node("Mul", ["c", "s"], ["y"], name="mul"),
        ],
        "conv_gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [_init("w", np.ones((1, 1, 3, 3), np.float32)), _init("b", np.array([-60.0], np.float32))],
    )
    return make(graph)


def qdq_conv_relu() -> onnx.ModelProto:
    """A hand-built QDQ conv whose Relu survives (scales are powers of two, exact).

    x(1,1,4,4) -> QuantizeLinear "qx" [0.5, zp 0 u8] -> xq -> DequantizeLinear "dqx" -> xd
    wq int8 ones (1,1,3,3) -> DequantizeLinear "dqw" [0.5] -> wd
    Conv "conv" (xd, wd) -> c -> QuantizeLinear "qc" [1.0, zp 128 u8] -> cq
      -> DequantizeLinear "dqc" -> cd -> Relu "relu" -> r -> QuantizeLinear "qr" [1.0, zp 0 u8]
      -> rq -> DequantizeLinear "dqr" -> y (1,1,2,2)
    """
    u8 = np.uint8
    inits = [
        _init("sx", np.array(0.5, np.float32)), _init("zx", np.array(0, u8)),
        _init("wq", np.ones((1, 1, 3, 3), np.int8)), _init("sw", np.array(0.5, np.float32)),
        _init("zw", np.array(0, np.int8)),
        _init("sc", np.array(1.0, np.float32)), _init("zc", np.array(128, u8)),
        _init("sr", np.array(1.0, np.float32)), _init("zr", np.array(0, u8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], name="dqw"),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"], name="qc"),
        helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["cd"], name="dqc"),
        helper.make_node("Relu", ["cd"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "sr", "zr"], ["rq"], name="qr"),
        helper.make_node("DequantizeLinear", ["rq", "sr", "zr"], ["y"], name="dqr"),
    ]
    graph = helper.make_graph(
        nodes, "qdq_conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        inits,
    )
    return make(graph)


def per_channel_quantize() -> onnx.ModelProto:
    """x(1,2,2,2) -> QuantizeLinear "q" [scale (0.5, 0.25), zp (0, 10) u8, axis 1] -> xq
    -> DequantizeLinear "dq" (same) -> y (1,2,2,2)."""
    inits = [_init("s", np.array([0.5, 0.25], np.float32)), _init("z", np.array([0, 10], np.uint8))]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q", axis=1),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"], name="dq", axis=1),
        ],
        "per_channel_quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        inits,
    )
    return make(graph)


def if_subgraph() -> onnx.ModelProto:
    """Layers inside If branches (listed, not exposable).

    x(1,1,4,4) -> Conv "conv" [ones 3x3] -> c ; cond (bool scalar input)
    If "branch"(cond): then_branch: Conv "inner_conv"(c, ones 1x1) -> t -> Relu "inner_relu" -> t2
                       else_branch: Identity "inner_id"(c) -> e
      -> y (1,1,2,2)
    """
    out = helper.make_tensor_value_info
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["c", "w1"], ["t"], name="inner_conv"),
         helper.make_node("Relu", ["t"], ["t2"], name="inner_relu")],
        "then", [], [out("t2", TensorProto.FLOAT, [1, 1, 2, 2])],
        [_init("w1", np.ones((1, 1, 1, 1), np.float32))],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["e"], name="inner_id")],
        "else", [], [out("e", TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph,
                             else_branch=else_graph),
        ],
        "if_subgraph",
        [out("x", TensorProto.FLOAT, [1, 1, 4, 4]), out("cond", TensorProto.BOOL, [])],
        [out("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [_init("w", np.ones((1, 1, 3, 3), np.float32))],
    )
    return make(graph)


def relu_probe(opset: int, *, elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x(N,3,4,5) -> Relu "relu" -> r -> Neg "neg" -> y, at ``opset`` (7..21), float or fp16."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Neg", ["r"], ["y"], name="neg")],
        "relu_probe",
        [helper.make_tensor_value_info("x", elem_type, ["N", 3, 4, 5])],
        [helper.make_tensor_value_info("y", elem_type, ["N", 3, 4, 5])],
    )
    return make(graph, opset)


def conv_relu_conv() -> onnx.ModelProto:
    """Guided-backprop fixture: rng(1) weights, no bias, pads 1.

    x(N,2,5,5) -> Conv "conv_a" [wa (3,2,3,3)] -> h -> Relu "relu_a" -> r
      -> Conv "conv_b" [wb (2,3,3,3)] -> y (N,2,5,5)
    """
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "wa"], ["h"], name="conv_a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"], name="relu_a"),
            helper.make_node("Conv", ["r", "wb"], ["y"], name="conv_b", pads=[1, 1, 1, 1]),
        ],
        "conv_relu_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [_init("wa", _rng_weight(rng, (3, 2, 3, 3))), _init("wb", _rng_weight(rng, (2, 3, 3, 3)))],
    )
    return make(graph)


def with_op_on_side(op_domain: str, op_type: str, *, on_path: bool) -> onnx.ModelProto:
    """An op on or off the path from x to y (on the path: one without a gradient rule).

    on_path:  x -> Relu "relu" -> r -> <op> "odd" -> o -> Identity "out" -> y
    off path: x -> Relu "relu" -> y ;  x -> <op> "odd" -> o (second graph output)
    TopK takes k = 2 on the last axis of x (N, 4).
    """
    k = _init("k", np.asarray([2], np.int64))
    odd_in = ["r" if on_path else "x"] + (["k"] if op_type == "TopK" else [])
    odd_out = ["o", "o_idx"] if op_type == "TopK" else ["o"]
    nodes = [helper.make_node("Relu", ["x"], ["r" if on_path else "y"], name="relu"),
             helper.make_node(op_type, odd_in, odd_out, name="odd", domain=op_domain)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if on_path:
        nodes.append(helper.make_node("Identity", ["o"], ["y"], name="out"))
    else:
        outputs.append(helper.make_tensor_value_info("o", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "odd_op",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              outputs, [k])
    opsets = [helper.make_opsetid("", 13)] + (
        [helper.make_opsetid(op_domain, 1)] if op_domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def legacy_opset7() -> onnx.ModelProto:
    """An opset-7 (Caffe2-era) net whose ops changed meaning in later opsets; rng(2) weights.

    x(1,2,6,6) -> Conv "conv" [w (3,2,3,3), pad 1] -> c -> BatchNormalization "bn" [spatial=1]
      -> b -> Relu "relu" -> r -> MaxPool "pool" [3x3/2, overlapping] -> p (1,3,2,2)
      -> Upsample "up" [nearest, scales 1,1,2,2] -> u (1,3,4,4) -> Dropout "drop" [ratio .5]
      -> d -> Softmax "soft" [axis 1: softmax over the flattened 3*4*4 values] -> y
    """
    rng = np.random.default_rng(2)
    inits = [_init("w", _rng_weight(rng, (3, 2, 3, 3))),
             _init("s", np.asarray([1.0, 0.5, 2.0], np.float32)),
             _init("bb", np.asarray([0.1, 0.0, -0.1], np.float32)),
             _init("m", np.asarray([0.0, 0.2, -0.2], np.float32)),
             _init("v", np.asarray([1.0, 2.0, 0.5], np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["b"], name="bn",
                         spatial=1, epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3],
                         strides=[2, 2]),
        helper.make_node("Upsample", ["p"], ["u"], name="up", mode="nearest",
                         scales=[1.0, 1.0, 2.0, 2.0]),
        helper.make_node("Dropout", ["u"], ["d", "mask"], name="drop", ratio=0.5),
        helper.make_node("Softmax", ["d"], ["y"], name="soft", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "legacy_opset7",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])]
        + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    # IR 3 (as Caffe2 exports): initializers are also listed as graph inputs
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=3)
    onnx.checker.check_model(model)
    return model


# == stats helper: dataset-statistics fixtures ====================================================
def conv_clip_channels(opset: int = 13) -> onnx.ModelProto:
    """Clip(-1, 6) after a 3-channel conv; channel 1 pinned at 6, channel 2 at -1.

    x(N,1,6,6) -> Conv "conv" [w (3,1,3,3) = 0.1, b = (0, 100, -100)] -> c (N,3,4,4)
      -> Clip "clip" [min -1, max 6: inputs from opset 11, attributes before] -> y
    """
    inits = [_init("w", np.full((3, 1, 3, 3), 0.1, np.float32)),
             _init("b", np.array([0.0, 100.0, -100.0], np.float32))]
    if opset >= 11:
        inits += [_init("lo", np.array(-1.0, np.float32)), _init("hi", np.array(6.0, np.float32))]
        clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")
    else:
        clip = helper.make_node("Clip", ["c"], ["y"], name="clip", min=-1.0, max=6.0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), clip],
        "conv_clip_channels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])], inits)
    return make(graph, opset)


def conv_relu6_saturated() -> onnx.ModelProto:
    """ReLU6 (Clip 0..6) after a conv whose channel 2 is pushed to the upper bound.

    x(N,3,8,8) -> Conv "conv" [w (4,3,3,3) rng(3) * 0.3, b = (0, 0, 50, 0), pad 1] -> c
      -> Clip "relu6" [0, 6] -> y (N,4,8,8)
    """
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")],
        "conv_relu6_saturated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [_init("w", _rng_weight(rng, (4, 3, 3, 3))),
         _init("b", np.array([0.0, 0.0, 50.0, 0.0], np.float32)),
         _init("lo", np.array(0.0, np.float32)), _init("hi", np.array(6.0, np.float32))])
    return make(graph)


def conv_relu_dead_channel(channel: int = 1) -> onnx.ModelProto:
    """Two conv+ReLU layers; conv1's ``channel`` has zero weights and bias (a dead channel).

    x(N,3,8,8) -> Conv "conv1" [w1 (4,3,3,3) rng(4) * 0.3, w1[channel] = 0, b1 = 0.1,
      b1[channel] = 0, pad 1] -> c1 -> Relu "relu1" -> r1
      -> Conv "conv2" [w2 (6,4,3,3) rng(4) * 0.3, pad 1] -> c2 -> Relu "relu2" -> r2 (N,6,8,8)
    """
    rng = np.random.default_rng(4)
    w1 = _rng_weight(rng, (4, 3, 3, 3))
    b1 = np.full((4,), 0.1, np.float32)
    w1[channel], b1[channel] = 0.0, 0.0
    pads = [1, 1, 1, 1]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=pads),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=pads),
         helper.make_node("Relu", ["c2"], ["r2"], name="relu2")],
        "conv_relu_dead_channel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 6, 8, 8])],
        [_init("w1", w1), _init("b1", b1), _init("w2", _rng_weight(rng, (6, 4, 3, 3)))])
    return make(graph)


def log_of_negative() -> onnx.ModelProto:
    """A NaN planted in a middle layer: Log of a channel that is always negative.

    x(N,1,6,6) -> Conv "conv1" [w (2,1,3,3) = 0.01, b = (-10, 10)] -> c1 (N,2,4,4)
      -> Log "log" -> l (channel 0 NaN) -> Conv "conv2" [w (2,2,1,1) = 1] -> c2 (NaN)
      -> Relu "relu2" -> y (N,2,4,4)
    """
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
         helper.make_node("Log", ["c1"], ["l"], name="log"),
         helper.make_node("Conv", ["l", "w2"], ["c2"], name="conv2"),
         helper.make_node("Relu", ["c2"], ["y"], name="relu2")],
        "log_of_negative",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [_init("w1", np.full((2, 1, 3, 3), 0.01, np.float32)),
         _init("b1", np.array([-10.0, 10.0], np.float32)),
         _init("w2", np.ones((2, 2, 1, 1), np.float32))])
    return make(graph)


def offset_conv(offset: float = 1000.0) -> onnx.ModelProto:
    """Activations with a large mean and a small spread (numerical-stability fixture).

    x(N,2,5,5) -> Conv "conv" [w (3,2,1,1) = 0.01, b = offset * (1, -1, 0.5)] -> c (N,3,5,5)
      -> Relu "relu" -> y
    """
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "offset_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [_init("w", np.full((3, 2, 1, 1), 0.01, np.float32)),
         _init("b", (offset * np.array([1.0, -1.0, 0.5])).astype(np.float32))])
    return make(graph)
