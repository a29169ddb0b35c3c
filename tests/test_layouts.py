"""Tensor layouts: hand-built Transpose / Reshape graphs, and zoo exports vs torch modules."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from onnx_featviz.graph.layouts import layout_name, tensor_layouts
from onnx_featviz.graph.modules import node_modules, resolve_module
from onnx_featviz.structs import META_PREPROCESS
from tests.conftest_zoo import ZooExport, zoo_export_fixture  # noqa: F401

EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])


def graph_of(nodes: list[onnx.NodeProto], x_shape: list[int], *,
             inits: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    """Wrap ``nodes`` (input ``x``, last output ``y``) into an opset-17 model."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits or [])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def conv_weight(cout: int, cin: int) -> onnx.TensorProto:
    return const("w", np.ones((cout, cin, 1, 1), np.float32))


def test_transpose_chain_after_a_conv() -> None:
    """x (1,3,8,8) -> Conv -> c -> T(0,2,3,1) -> a -> Relu -> b -> T(0,2,3,1) -> d
    -> T(0,2,3,1) -> y  (three turns of the last three axes come back to NCHW;
    d is (N, W, C, H))."""
    t = [0, 2, 3, 1]
    model = graph_of([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Transpose", ["c"], ["a"], perm=t),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Transpose", ["b"], ["d"], perm=t),
        helper.make_node("Transpose", ["d"], ["y"], perm=t),
    ], [1, 3, 8, 8], inits=[conv_weight(5, 3)])
    before = model.SerializeToString()
    got = tensor_layouts(model)
    assert model.SerializeToString() == before
    assert got == {"x": "NCHW", "c": "NCHW", "a": "NHWC", "b": "NHWC", "d": None, "y": "NCHW"}


def test_nhwc_input_is_found_through_transposes_to_the_first_conv() -> None:
    """x (1,8,8,3) -> Sigmoid -> s -> T(0,3,1,2) -> t -> Conv -> y."""
    model = graph_of([
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["y"]),
    ], [1, 8, 8, 3], inits=[conv_weight(4, 3)])
    assert tensor_layouts(model) == {"x": "NHWC", "s": "NHWC", "t": "NCHW", "y": "NCHW"}


@pytest.mark.parametrize(("meta", "want"), [(None, None), ("NHWC", "NHWC"), ("NCHW", "NCHW")])
def test_input_without_conv_uses_the_preprocess_metadata(meta: str | None,
                                                         want: str | None) -> None:
    """x (1,8,8,3) -> T(0,3,1,2) -> y, no conv anywhere."""
    model = graph_of([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])],
                     [1, 8, 8, 3])
    if meta is not None:
        helper.set_model_props(model, {META_PREPROCESS: json.dumps({"layout": meta})})
    flipped = {None: None, "NHWC": "NCHW", "NCHW": None}[want]
    assert tensor_layouts(model) == {"x": want, "y": flipped}


def test_reshapes_keep_batch_splits_and_merges_only() -> None:
    """x (4,3,6,6) -> Conv -> c (4,8,6,6) -> Reshape (2,2,8,6,6) -> s -> Reshape (4,8,6,6) -> m
    -> Reshape (4,8,36) -> f -> Reshape (4,6,8,6) -> y (channels mixed with rows)."""
    shapes = {"s5": [2, 2, 8, 6, 6], "s4": [4, 8, 6, 6], "s3": [4, 8, 36], "sy": [4, 6, 8, 6]}
    inits = [conv_weight(8, 3)] + [const(k, np.array(v, np.int64)) for k, v in shapes.items()]
    model = graph_of([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "s5"], ["s"]),
        helper.make_node("Reshape", ["s", "s4"], ["m"]),
        helper.make_node("Reshape", ["m", "s3"], ["f"]),
        helper.make_node("Reshape", ["f", "sy"], ["y"]),
    ], [4, 3, 6, 6], inits=inits)
    got = tensor_layouts(model)
    assert got == {"x": "NCHW", "c": "NCHW", "s": None, "m": "NCHW", "f": None, "y": None}


def test_layernorm_and_linear_on_the_last_axis_are_channels_last() -> None:
    """x (1,3,4,4) -> Conv -> c (1,8,4,4) -> T(0,2,3,1) -> t -> LayerNorm -> n -> MatMul
    (W: 8x16) -> m -> MatMul (by its own transpose mt, not a weight) -> y; and t -> T(0,1,3,2)
    -> u (N,H,C,W) -> LayerNorm -> v."""
    model = graph_of([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "fc"], ["m"]),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["m", "mt"], ["y"]),
        helper.make_node("Transpose", ["t"], ["u"], perm=[0, 1, 3, 2]),
        helper.make_node("LayerNormalization", ["u", "g4", "b4"], ["v"], axis=-1),
    ], [1, 3, 4, 4], inits=[conv_weight(8, 3), const("g", np.ones(8, np.float32)),
                            const("b", np.zeros(8, np.float32)),
                            const("g4", np.ones(4, np.float32)),
                            const("b4", np.zeros(4, np.float32)),
                            const("fc", np.ones((8, 16), np.float32))])
    got = tensor_layouts(model)
    assert got["t"] == got["n"] == got["m"] == "NHWC"
    assert got["mt"] is None and got["y"] is None  # (N, H, C, W); then an attention-like map
    assert got["u"] is None and got["v"] is None  # a norm over W does not make it NHWC
    assert layout_name(("N", "S", "S", "C")) == "NHWC" and layout_name(("N", "T", "C")) == "NTC"


def test_layernorm_marks_an_unknown_last_axis_as_channels() -> None:
    """x (1,3,4,4) -> Conv -> c (1,8,4,4) -> Reshape (1,4,4,8) -> r -> LayerNorm -> y."""
    model = graph_of([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "s"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "g", "b"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "fc"], ["y"]),
    ], [1, 3, 4, 4], inits=[conv_weight(8, 3), const("s", np.array([1, 4, 4, 8], np.int64)),
                            const("g", np.ones(8, np.float32)),
                            const("b", np.zeros(8, np.float32)),
                            const("fc", np.ones((8, 16), np.float32))])
    got = tensor_layouts(model)
    assert got["r"] is None and got["n"] is None and got["y"] is None  # H,W never shown


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of the computed tensors, from ONNX shape inference (not the package)."""
    inferred = shape_inference.infer_shapes(model)
    weights = {i.name for i in model.graph.initializer}
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in [*inferred.graph.value_info, *inferred.graph.output]
            if v.name not in weights}


@EXPORTERS
@pytest.mark.slow
def test_convnext_channels_last_tensors(zoo_export: ZooExport, dynamo: bool) -> None:
    pytest.importorskip("torch")
    from tests import zoo

    net = zoo.build("convnext")
    model = onnx.load(str(zoo_export("convnext", dynamo=dynamo)))
    layouts, shapes = tensor_layouts(model), inferred_shapes(model)
    checked = 0
    for path, mod in net.named_modules():
        if not isinstance(mod, zoo.ConvNeXtBlock):
            continue
        channels = {"norm": mod.norm.normalized_shape[0], "pwconv1": mod.pwconv1.out_features,
                    "pwconv2": mod.pwconv2.out_features, "act": mod.pwconv1.out_features}
        for child, count in channels.items():
            tensor = resolve_module(model, f"{path}.{child}")
            assert tensor is not None and layouts[tensor] == "NHWC", (path, child)
            assert shapes[tensor][-1] == count
        for child, nchw in ((f"{path}.dwconv", mod.dwconv.out_channels),
                            (path, mod.dwconv.out_channels)):
            tensor = resolve_module(model, child)
            assert tensor is not None and layouts[tensor] == "NCHW", child
            assert shapes[tensor][1] == nchw
        checked += 1
    assert checked == 5
    nodes = node_modules(model)  # every LayerNorm of the blocks works on NHWC tensors
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and nodes[node.name].startswith("stages."):
            assert layouts[node.output[0]] == "NHWC"


@EXPORTERS
@pytest.mark.slow
def test_swin_channels_last_and_token_tensors(zoo_export: ZooExport, dynamo: bool) -> None:
    pytest.importorskip("torch")
    from tests import zoo

    net = zoo.build("swin")
    model = onnx.load(str(zoo_export("swin", dynamo=dynamo)))
    layouts, shapes = tensor_layouts(model), inferred_shapes(model)
    blocks = [(p, m) for p, m in net.named_modules() if isinstance(m, zoo.SwinBlock)]
    assert len(blocks) == 2
    for path, mod in blocks:
        for child, count in (("norm1", mod.norm1.normalized_shape[0]),
                             ("norm2", mod.norm2.normalized_shape[0]),
                             ("mlp.fc1", mod.mlp.fc1.out_features),
                             ("mlp", mod.mlp.fc2.out_features),
                             ("", mod.mlp.fc2.out_features)):
            tensor = resolve_module(model, f"{path}.{child}".rstrip("."))
            assert tensor is not None and layouts[tensor] == "NHWC", (path, child)
            assert shapes[tensor][-1] == count
        qkv = resolve_module(model, f"{path}.attn.qkv")  # (windows, tokens, 3C)
        assert qkv is not None and layouts[qkv] == "NTC"
        assert shapes[qkv][1:] == (mod.window ** 2, mod.attn.qkv.out_features)
    merged = resolve_module(model, "layers.1")
    assert merged is not None and layouts[merged] == "NHWC"
    assert shapes[merged][-1] == net.get_submodule("layers.1.reduction").out_features


@EXPORTERS
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "groupnorm", "shufflenet_v2", "mobilenet_v3"])
def test_cnns_are_nchw(zoo_export: ZooExport, name: str, dynamo: bool) -> None:
    model = onnx.load(str(zoo_export(name, dynamo=dynamo)))
    layouts = tensor_layouts(model)
    shapes = inferred_shapes(model)
    four_d = [t for t, s in shapes.items() if len(s) == 4]
    assert four_d and all(layouts[t] == "NCHW" for t in four_d), [
        t for t in four_d if layouts[t] != "NCHW"]
    if name == "shufflenet_v2":  # the (N, 2, C/2, H, W) shuffle views are not NCHW
        assert {layouts[t] for t, s in shapes.items() if len(s) == 5} == {None}
