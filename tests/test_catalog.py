"""catalog: layer listing, names, shapes, conv marking and activation links."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_featviz.errors import LayerNotFoundError
from onnx_featviz.graph import catalog as catalog
from tests import graphs
from tests.conftest import shared_path


def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)


def test_conv_relu_layers() -> None:
    model = graphs.conv_relu()
    before = model.SerializeToString()
    info = catalog.read_catalog(model)
    assert model.SerializeToString() == before
    assert [lay.name for lay in info.layers] == ["conv", "relu"]
    conv, relu = info.layers
    assert (conv.index, conv.op_type, conv.output, conv.inputs) == (0, "Conv", "c", ("x", "w", "b"))
    assert (conv.dtype, conv.shape, conv.params) == ("float32", (1, 1, 2, 2), 10)
    assert (conv.weight, conv.bias, conv.is_conv) == ("w", "b", True)
    assert (conv.activation, conv.activation_op, conv.raw_output) == ("y", "Relu", None)
    assert not relu.is_conv and relu.params == 0
    assert [s.name for s in info.inputs] == ["x"] and info.inputs[0].dtype == "float32"
    assert [(s.name, s.shape) for s in info.outputs] == [("y", (1, 1, 2, 2))]
    assert (info.opset, info.ir_version) == (13, graphs.IR_VERSION)
    assert info.conv_layers == (conv,)


def test_symbolic_dims_are_kept() -> None:
    info = catalog.read_catalog(graphs.conv_relu_dynamic())
    assert info.layer("conv").shape == ("N", 1, 2, 2)
    assert catalog.tensor_types(graphs.conv_relu_dynamic())["y"] == ("float32", ("N", 1, 2, 2))


def test_layer_lookup_by_node_tensor_and_index() -> None:
    info = catalog.read_catalog(graphs.conv_relu())
    assert info.layer("relu") is info.layer("y") is info.layer(1) is info.layer("1")
    with pytest.raises(LayerNotFoundError, match="close matches: relu"):
        info.layer("rel")
    with pytest.raises(LayerNotFoundError, match="out of range"):
        info.layer(5)


def test_empty_and_duplicate_names_get_stable_unique_names() -> None:
    model = graphs.empty_names()
    names = [lay.name for lay in catalog.read_catalog(model).layers]
    assert names == ["Conv_0", "Relu_1", "dup", "Relu_3"]
    assert catalog.model_names(model) == names
    assert [lay.name for lay in catalog.read_catalog(model).layers] == names


def test_generated_names_avoid_existing_names() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name=""),
         helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),
         helper.make_node("Relu", ["b"], ["y"], name="Relu_0")],
        "clash", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert catalog.model_names(graphs.make(graph)) == ["Relu_0_1", "Relu_0", "Relu_2"]


@pytest.mark.parametrize(
    ("build", "activation", "op"),
    [
        (graphs.conv_bn_relu, "y", "Relu"),
        (graphs.conv_clip, "y", "Clip"),
        (lambda: graphs.conv_gated("Sigmoid"), "y", "SiLU"),
        (lambda: graphs.conv_gated("HardSigmoid"), "y", "HardSwish"),
    ],
)
def test_activation_links(build: object, activation: str, op: str) -> None:
    conv = catalog.read_catalog(build()).layer("conv")  # type: ignore[operator]
    assert (conv.output, conv.activation, conv.activation_op) == ("c", activation, op)


def test_qdq_conv_links_float_tensors() -> None:
    conv = catalog.read_catalog(graphs.qdq_conv_relu()).layer("conv")
    assert (conv.output, conv.raw_output, conv.activation, conv.activation_op) == (
        "cd", "cq", "y", "Relu")
    assert conv.params == 9 and conv.weight == "wd"
    assert conv.dtype == "float32" and conv.shape == (1, 1, 2, 2)


def test_quantize_static_qdq_and_qoperator() -> None:
    qdq = catalog.read_catalog(graphs.qdq_model(graphs.small_cnn(), calib()))
    convs = qdq.conv_layers
    assert [c.op_type for c in convs] == ["Conv", "Conv"]
    for conv in convs:
        producer = qdq.layer(conv.output)
        assert producer.op_type == "DequantizeLinear" and conv.raw_output in producer.inputs
        assert conv.params > 0
    qop = catalog.read_catalog(graphs.qoperator_model(graphs.small_cnn(), calib()))
    assert [c.op_type for c in qop.conv_layers] == ["QLinearConv", "QLinearConv"]
    assert all(c.output == c.raw_output and c.dtype in ("int8", "uint8") for c in qop.conv_layers)
    assert qop.conv_layers[0].params == 4 * 3 * 3 * 3  # weights only (no bias, no scales)


def test_subgraph_layers_are_listed_not_exposable() -> None:
    info = catalog.read_catalog(graphs.if_subgraph())
    # subgraphs in attribute order (onnx.helper sorts them: else_branch, then_branch)
    assert [lay.name for lay in info.layers] == [
        "conv", "branch", "inner_id", "inner_conv", "inner_relu"]
    assert [lay.index for lay in info.layers] == list(range(5))
    assert all(lay.exposable for lay in info.layers[:2])
    inner = info.layer("inner_conv")
    assert not inner.exposable and inner.params == 1
    assert inner.reason == ("inside the 'then_branch' subgraph of If node 'branch'; subgraph "
                            "tensors cannot be graph outputs")
    assert "else_branch" in (info.layer("inner_id").reason or "")
    assert [c.name for c in info.conv_layers] == ["conv"]
    assert catalog.subgraph_tensors(graphs.if_subgraph()) == {"t", "t2", "e"}


def test_initializers_listed_as_inputs_are_not_model_inputs() -> None:
    model = graphs.conv_relu()
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(
            init.name, init.data_type, list(init.dims)))
    model.ir_version = 3
    info = catalog.read_catalog(model)
    assert [s.name for s in info.inputs] == ["x"] and info.ir_version == 3


def test_constant_params_and_metadata() -> None:
    model = graphs.with_constant_weight()
    onnx.helper.set_model_props(model, {"featviz.labels": '["a"]', "author": "me"})
    model.producer_name, model.producer_version = "tests", "1.0"
    info = catalog.read_catalog(model)
    assert info.layer("conv_const").params == 18 + 2
    assert info.layer("conv_cast").params == 36
    assert info.layer("wconst").params == 0 and not info.layer("wconst").is_conv
    assert dict(info.metadata) == {"featviz.labels": '["a"]', "author": "me"}
    assert info.producer == "tests 1.0"


def test_failed_inference_falls_back_to_run_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> onnx.ModelProto:
        raise onnx.shape_inference.InferenceError("boom")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    model = graphs.conv_relu()
    info = catalog.read_catalog(model)
    assert info.layer("conv").shape is None and info.layer("relu").shape == (1, 1, 2, 2)
    filled = catalog.read_catalog(model, shapes={"c": (1, 1, 2, 2)}, dtypes={"c": "float32"})
    assert (filled.layer("conv").dtype, filled.layer("conv").shape) == ("float32", (1, 1, 2, 2))


def test_unknown_op_shapes_filled_from_run() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["z"], name="odd", domain="custom.ops")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("custom.ops", 1)])
    assert catalog.read_catalog(model).layer("odd").shape is None
    assert catalog.read_catalog(model, shapes={"z": (1, 2)}).layer("odd").shape == (1, 2)


def test_find_softmax_logits() -> None:
    assert catalog.find_softmax_logits(graphs.small_cnn()) is None
    model = graphs.conv_relu()
    model.graph.node.append(helper.make_node("Flatten", ["y"], ["f"], name="flat"))
    model.graph.node.append(helper.make_node("Softmax", ["f"], ["p"], name="softmax"))
    model.graph.node.append(helper.make_node("Identity", ["p"], ["prob"], name="out"))
    model.graph.output.append(helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4]))
    assert catalog.find_softmax_logits(model) == "f"


@pytest.mark.slow
def test_squeezenet_caffe2_fp16_opset7() -> None:
    model = onnx.load(shared_path("models", "squeezenet1.1_caffe2_fp16.onnx"))
    info = catalog.read_catalog(model)
    assert (info.opset, info.ir_version) == (7, 3)
    assert [(s.name, s.dtype) for s in info.inputs] == [("data_0", "float16")]
    convs = info.conv_layers
    assert len(convs) == 26
    assert all(c.activation_op == "Relu" and c.dtype == "float16" for c in convs)
    assert convs[0].shape == (1, 64, 111, 111) and convs[0].params == 64 * 3 * 3 * 3 + 64
    assert len(set(lay.name for lay in info.layers)) == len(info.layers) == len(model.graph.node)
    assert catalog.find_softmax_logits(model) == "pool10_1"


@pytest.mark.slow
def test_cifar_pytorch() -> None:
    info = catalog.read_catalog(onnx.load(shared_path("models", "cifar10_cnn_pytorch.onnx")))
    assert len(info.conv_layers) == 4
    assert all(c.activation_op == "Relu" for c in info.conv_layers)
    assert info.conv_layers[0].shape == ("batch_size", 12, 30, 30)
