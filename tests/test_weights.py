"""Tests for onnx_featviz.graph.weights: filters equal the (dequantized) stored weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.errors import ModelError
from onnx_featviz.graph.weights import Filters, read_all_filters, read_filters
from onnx_featviz.structs import Layer
from tests import graphs

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "models"


def layer_of(model: onnx.ModelProto, key: str | int) -> Layer:
    """Build a Layer for the main-graph node with this name (or index), as catalog would."""
    nodes = list(model.graph.node)
    index = key if isinstance(key, int) else [n.name for n in nodes].index(key)
    node = nodes[index]
    return Layer(
        index=index, name=node.name or f"{node.op_type}_{index}", op_type=node.op_type,
        output=node.output[0], inputs=tuple(node.input), outputs=tuple(node.output),
        dtype=None, shape=None, is_conv=True,
    )


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[int]:
    return [i for i, n in enumerate(model.graph.node) if n.op_type == op_type]


def init(model: onnx.ModelProto, name: str) -> NDArray[Any]:
    """The raw stored array of an initializer."""
    found = [t for t in model.graph.initializer if t.name == name]
    assert len(found) == 1, name
    return numpy_helper.to_array(found[0])


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    found: onnx.NodeProto = next(n for n in model.graph.node if tensor in n.output)
    return found


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def along_axis0(param: NDArray[Any], ndim: int) -> NDArray[np.float64]:
    """Broadcast a scale / zero point over axis 0 of an ndim-D weight (scalar stays scalar)."""
    out = param.astype(np.float64)
    return out.reshape((-1,) + (1,) * (ndim - 1)) if out.ndim else out


@pytest.fixture(scope="module")
def calib() -> NDArray[np.float32]:
    return np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)


# --- float models --------------------------------------------------------------------------


def test_small_cnn_filters_equal_initializers_and_model_unchanged() -> None:
    model = graphs.small_cnn()
    before = model.SerializeToString()
    f1 = read_filters(model, layer_of(model, "conv1"))
    f2 = read_filters(model, layer_of(model, "conv2"))
    assert model.SerializeToString() == before
    np.testing.assert_array_equal(f1.weight, init(model, "w1"))
    assert f1.bias is None and f1.groups == 1 and not f1.transposed and f1.layer == "conv1"
    assert f1.weight.dtype == np.float32 and f1.weight.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(f2.weight, init(model, "w2"))
    assert f2.bias is not None
    np.testing.assert_array_equal(f2.bias, init(model, "b2"))
    assert f2.nonfinite == 0 and f2.stored_dtype == "float32"
    assert not f2.weight.flags.writeable


def test_read_all_filters_keys_in_order() -> None:
    model = graphs.small_cnn()
    out = read_all_filters(model, [layer_of(model, "conv2"), layer_of(model, "conv1")])
    assert list(out) == ["conv2", "conv1"]
    assert all(isinstance(f, Filters) for f in out.values())
    np.testing.assert_array_equal(out["conv1"].weight, init(model, "w1"))


def test_non_conv_layer_is_refused() -> None:
    model = graphs.small_cnn()
    with pytest.raises(ModelError, match=r"'relu1' is a Relu.*conv_layers"):
        read_filters(model, layer_of(model, "relu1"))


def test_layer_from_another_model_is_refused() -> None:
    with pytest.raises(ModelError, match="not a node of this model"):
        read_filters(graphs.conv_relu(), layer_of(graphs.small_cnn(), "conv2"))


def test_grouped_and_depthwise() -> None:
    model = graphs.grouped_conv()
    grouped = read_filters(model, layer_of(model, "grouped"))
    depthwise = read_filters(model, layer_of(model, "depthwise"))
    assert grouped.weight.shape == (6, 2, 3, 3) and grouped.groups == 2
    assert depthwise.weight.shape == (6, 1, 3, 3) and depthwise.groups == 6
    np.testing.assert_array_equal(grouped.weight, init(model, "wg"))
    np.testing.assert_array_equal(depthwise.weight, init(model, "wd"))
    assert grouped.bias is not None
    np.testing.assert_array_equal(grouped.bias, np.arange(6))


@pytest.mark.parametrize(("node", "groups"), [("deconv", 1), ("deconv_grouped", 2)])
def test_conv_transpose_orientation_matches_one_hot_response(node: str, groups: int) -> None:
    """A one-hot input at channel i scatters filter[o, i_local] into every output channel o."""
    model = graphs.conv_transpose()
    filters = read_filters(model, layer_of(model, node))
    assert filters.transposed and filters.groups == groups
    assert filters.weight.shape == (6, 4 // groups, 3, 2)
    output = "y1" if node == "deconv" else "y2"
    sess = session(model)
    offset = filters.bias if filters.bias is not None else np.zeros(6, np.float32)
    per_group_in, per_group_out = 4 // groups, 6 // groups
    for i in range(4):
        x = np.zeros((1, 4, 5, 5), np.float32)
        x[0, i, 2, 2] = 1.0  # stride 2: lands at output rows 4..6, cols 4..5
        y = sess.run([output], {"x": x})[0][0] - offset[:, None, None]
        group = i // per_group_in
        for o in range(6):
            patch = y[o, 4:7, 4:6]
            if o // per_group_out == group:
                np.testing.assert_allclose(patch, filters.weight[o, i % per_group_in], atol=1e-6)
            else:
                np.testing.assert_allclose(patch, 0.0, atol=1e-6)
        rows = slice(group * per_group_out, (group + 1) * per_group_out)
        in_group = np.abs(filters.weight[rows, i % per_group_in]).sum()
        assert np.abs(y).sum() == pytest.approx(float(in_group), rel=1e-5)  # nothing elsewhere


def test_nhwc_keras_style() -> None:
    model = graphs.nhwc_keras_style()
    filters = read_filters(model, layer_of(model, "conv"))
    np.testing.assert_array_equal(filters.weight, init(model, "w"))
    assert filters.bias is not None
    np.testing.assert_array_equal(filters.bias, init(model, "b"))


def test_empty_and_duplicated_names() -> None:
    model = graphs.empty_names()
    first = read_filters(model, layer_of(model, 0))
    second = read_filters(model, layer_of(model, 2))
    assert first.layer == "Conv_0" and second.layer == "dup"
    np.testing.assert_array_equal(first.weight, np.ones((2, 1, 3, 3)))
    np.testing.assert_array_equal(second.weight, init(model, "wb"))


def test_constant_identity_and_cast_weights() -> None:
    model = graphs.with_constant_weight()
    const = read_filters(model, layer_of(model, "conv_const"))
    cast = read_filters(model, layer_of(model, "conv_cast"))
    expected = numpy_helper.to_array(producer(model, "wc").attribute[0].t)
    np.testing.assert_array_equal(const.weight, expected)
    assert const.bias is not None
    np.testing.assert_array_equal(const.bias, [1, -1])
    w16 = init(model, "w16")
    assert w16.dtype == np.float16 and cast.stored_dtype == "float16"
    np.testing.assert_array_equal(cast.weight, w16.astype(np.float32))


def test_runtime_weight_names_the_node() -> None:
    model = graphs.runtime_weight()
    with pytest.raises(ModelError, match=r"computed at run time by node 'scale_w' \(Mul\).*"
                                         r"do_constant_folding=True"):
        read_filters(model, layer_of(model, "conv"))


def test_graph_input_weight_is_refused() -> None:
    model = graphs.runtime_weight()
    model.graph.node[1].input[1] = "k"
    with pytest.raises(ModelError, match="graph input 'k'"):
        read_filters(model, layer_of(model, "conv"))


def test_nan_weights_are_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    model = graphs.with_nan_weight()
    filters = read_filters(model, layer_of(model, "conv"))
    assert filters.nonfinite == 3
    assert np.isnan(filters.weight[0, 0, 0, 0]) and np.isposinf(filters.weight[1, 1, 2, 2])
    assert filters.bias is not None and np.isnan(filters.bias[1])
    np.testing.assert_array_equal(filters.weight[0, 1], init(model, "w")[0, 1])
    assert "3 NaN/Inf" in caplog.text


def test_conv1d_gets_unit_height() -> None:
    model = graphs.conv1d()
    filters = read_filters(model, layer_of(model, "conv1d"))
    assert filters.weight.shape == (3, 2, 1, 3)
    np.testing.assert_array_equal(filters.weight[:, :, 0, :], init(model, "w"))


def test_conv3d_is_refused() -> None:
    model = graphs.conv3d()
    with pytest.raises(ModelError, match="3-D kernels are not drawable"):
        read_filters(model, layer_of(model, "conv3d"))


def test_external_data(tmp_path: Path) -> None:
    path = graphs.external_data_model(tmp_path)
    assert (tmp_path / graphs.EXTERNAL_WEIGHT_FILE).is_file()
    model = onnx.load(path)
    filters = read_filters(model, layer_of(model, "conv"))
    np.testing.assert_array_equal(filters.weight, graphs.external_data_weight())
    unloaded = onnx.load(path, load_external_data=False)
    with pytest.raises(ModelError, match="external file that was not loaded"):
        read_filters(unloaded, layer_of(unloaded, "conv"))


def test_constant_path_ops_reshape_transpose_constant_of_shape() -> None:
    """w = Reshape(Transpose(init (3,3,2,1), perm 3,2,0,1), [0, -1, 3, 3]); b = ConstantOfShape."""
    stored = np.arange(18, dtype=np.float32).reshape(3, 3, 2, 1)
    fill = numpy_helper.from_array(np.array([0.02], np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["ws"], ["wt"], perm=[3, 2, 0, 1]),
            helper.make_node("Reshape", ["wt", "shape"], ["w"]),
            helper.make_node("ConstantOfShape", ["bshape"], ["b"], value=fill),
            helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv"),
        ],
        "paths",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])],
        [numpy_helper.from_array(stored, "ws"),
         numpy_helper.from_array(np.array([0, -1, 3, 3], np.int64), "shape"),
         numpy_helper.from_array(np.array([1], np.int64), "bshape")],
    )
    model = graphs.make(graph)
    filters = read_filters(model, layer_of(model, "conv"))
    expected = stored.transpose(3, 2, 0, 1).reshape(1, 2, 3, 3)
    np.testing.assert_array_equal(filters.weight, expected)
    assert filters.bias is not None
    np.testing.assert_array_equal(filters.bias, np.full(1, 0.02, np.float32))
    y = session(model).run(None, {"x": np.ones((1, 2, 3, 3), np.float32)})[0]
    assert float(y.ravel()[0]) == pytest.approx(float(expected.sum()) + 0.02, rel=1e-6)


def test_conv_integer_weight_minus_zero_point() -> None:
    w = np.arange(18, dtype=np.uint8).reshape(2, 1, 3, 3) + 100
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="convint")],
        "conv_integer",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0, np.uint8), "xz"),
         numpy_helper.from_array(np.array(110, np.uint8), "wz")],
    )
    model = graphs.make(graph, opset=13)
    filters = read_filters(model, layer_of(model, "convint"))
    np.testing.assert_array_equal(filters.weight, w.astype(np.float32) - 110)
    assert filters.stored_dtype == "uint8" and filters.bias is None


def test_dequantize_linear_axis_1_on_conv_transpose() -> None:
    """A per-channel QDQ ConvTranspose weight (I, O, kH, kW) is quantized along axis 1."""
    rng = np.random.default_rng(0)
    wq = rng.integers(-100, 100, (2, 3, 2, 2)).astype(np.int8)
    scale = np.array([0.1, 0.2, 0.5], np.float32)
    zero = np.array([1, -2, 0], np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=1),
            helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv"),
        ],
        "qdq_deconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 3])],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(zero, "z")],
    )
    model = graphs.make(graph)
    filters = read_filters(model, layer_of(model, "deconv"))
    onnx_layout = (wq.astype(np.float64) - zero[None, :, None, None]) * scale[None, :, None, None]
    np.testing.assert_allclose(filters.weight, onnx_layout.transpose(1, 0, 2, 3), rtol=1e-6)
    assert filters.stored_dtype == "int8"


# --- quantized and fp16 models of small_cnn --------------------------------------------------


@pytest.mark.parametrize(("per_channel", "weight_type"), [(True, "int8"), (False, "uint8")])
def test_qdq_filters_equal_dequantized_initializers(
    calib: NDArray[np.float32], per_channel: bool, weight_type: str
) -> None:
    float_model = graphs.small_cnn()
    model = graphs.qdq_model(float_model, calib, per_channel=per_channel, weight_type=weight_type)
    before = model.SerializeToString()
    convs = nodes_of(model, "Conv")
    assert len(convs) == 2
    for index, float_name in zip(convs, ["w1", "w2"], strict=True):
        filters = read_filters(model, layer_of(model, index))
        dq = producer(model, model.graph.node[index].input[1])
        assert dq.op_type == "DequantizeLinear"
        wq, scale, zero = (init(model, name) for name in dq.input)
        assert wq.dtype == np.dtype(weight_type) and scale.ndim == (1 if per_channel else 0)
        expected = (wq.astype(np.float64) - along_axis0(zero, 4)) * along_axis0(scale, 4)
        np.testing.assert_allclose(filters.weight, expected, rtol=1e-6, atol=0)
        assert filters.stored_dtype == weight_type
        # the dequantized weights are the float weights up to half a quantization step
        step = along_axis0(scale, 4)
        assert np.all(np.abs(filters.weight - init(float_model, float_name)) <= step / 2 + 1e-6)
    conv2 = read_filters(model, layer_of(model, convs[1]))
    bias_dq = producer(model, model.graph.node[convs[1]].input[2])
    bq, bscale = init(model, bias_dq.input[0]), init(model, bias_dq.input[1])
    assert conv2.bias is not None and bq.dtype == np.int32
    np.testing.assert_allclose(conv2.bias, bq * bscale.astype(np.float64), rtol=1e-6)
    assert model.SerializeToString() == before


@pytest.mark.parametrize(("per_channel", "weight_type"), [(True, "int8"), (False, "uint8")])
def test_qlinearconv_filters_equal_dequantized_initializers(
    calib: NDArray[np.float32], per_channel: bool, weight_type: str
) -> None:
    model = graphs.qoperator_model(graphs.small_cnn(), calib, per_channel=per_channel,
                                   weight_type=weight_type)
    convs = nodes_of(model, "QLinearConv")
    assert len(convs) == 2
    for index in convs:
        node = model.graph.node[index]
        filters = read_filters(model, layer_of(model, index))
        wq, w_scale, w_zero = (init(model, node.input[i]) for i in (3, 4, 5))
        assert wq.dtype == np.dtype(weight_type)
        expected = (wq.astype(np.float64) - along_axis0(w_zero, 4)) * along_axis0(w_scale, 4)
        np.testing.assert_allclose(filters.weight, expected, rtol=1e-6, atol=0)
        assert filters.weight.shape == ((4, 3, 3, 3) if index == convs[0] else (8, 4, 3, 3))
    node = model.graph.node[convs[1]]
    filters = read_filters(model, layer_of(model, convs[1]))
    bq, x_scale, w_scale = (init(model, node.input[i]) for i in (8, 1, 4))
    assert filters.bias is not None and bq.dtype == np.int32
    expected_bias = bq * (x_scale.astype(np.float64) * w_scale.astype(np.float64))
    np.testing.assert_allclose(filters.bias, expected_bias, rtol=1e-6)
    np.testing.assert_allclose(filters.bias, init(graphs.small_cnn(), "b2"), atol=1e-3)


def test_fp16_model_weights_are_float32() -> None:
    model = graphs.fp16_model(graphs.small_cnn())
    assert model.ir_version == graphs.IR_VERSION
    for name, weight in (("conv1", "w1"), ("conv2", "w2")):
        conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name == name)
        filters = read_filters(model, layer_of(model, conv.name))
        stored = init(model, conv.input[1]) if conv.input[1] in {
            t.name for t in model.graph.initializer} else None
        assert stored is not None and stored.dtype == np.float16, weight
        assert filters.weight.dtype == np.float32 and filters.stored_dtype == "float16"
        np.testing.assert_array_equal(filters.weight, stored.astype(np.float32))


# --- shared real models -------------------------------------------------------------------


def shared_model(name: str) -> onnx.ModelProto:
    path = SHARED_MODELS / name
    if not path.is_file():
        pytest.skip(f"shared model {name} not found in ../shared/data/models beside the repo")
    return onnx.load(path)


@pytest.mark.slow
def test_squeezenet_fp16_conv1() -> None:
    model = shared_model("squeezenet1.1_caffe2_fp16.onnx")
    filters = read_filters(model, layer_of(model, 0))
    assert filters.weight.shape == (64, 3, 3, 3) and filters.weight.dtype == np.float32
    stored = init(model, "conv1_w_0")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(filters.weight, stored.astype(np.float32))
    assert filters.bias is not None and filters.bias.shape == (64,)
    every = read_all_filters(model, [layer_of(model, i) for i in nodes_of(model, "Conv")])
    assert len(every) == 26 and all(f.nonfinite == 0 for f in every.values())


@pytest.mark.slow
def test_cifar_conv1() -> None:
    model = shared_model("cifar10_cnn_pytorch.onnx")
    filters = read_filters(model, layer_of(model, "Conv_0"))
    assert filters.weight.shape == (12, 3, 5, 5)
    np.testing.assert_array_equal(filters.weight, init(model, model.graph.node[0].input[1]))
