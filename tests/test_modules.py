"""Module paths and module outputs: torch forward hooks vs tensors onnxruntime computes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_featviz.graph.modules import module_outputs, node_modules, resolve_module
from tests.conftest_zoo import ZooExport, run_onnx, zoo_export_fixture  # noqa: F401

EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
CASES = [
    ("resnet", ("layer4", "layer4.1", "layer2.0", "layer4.0.relu", "fc")),
    ("vgg", ("features.12", "features.15", "features", "classifier.1")),
    ("mobilenet_v2", ("features.3", "features.6", "features.7")),
    ("efficientnet", ("features.2", "features.2.conv.3")),
    ("convnext", ("stages.2", "stages.2.1", "downsample_layers.1", "stages.3.0.pwconv1")),
    ("shufflenet_v2", ("stage2", "stage2.0", "stage3", "stage2.0.branch2")),
    ("unet", ("enc2", "bottleneck", "dec1", "up2")),
    ("vit", ("blocks.0", "blocks.1.attn", "blocks.1.mlp")),
    ("swin", ("layers.0", "layers.1", "layers.2.0.attn")),
]


def hooked_outputs(name: str, modules: tuple[str, ...], x: object) -> dict[str, np.ndarray]:
    """Return each module's forward output (its last call) captured with a forward hook."""
    torch = pytest.importorskip("torch")
    from tests import zoo

    net, seen = zoo.build(name), {}
    for path in modules:
        def hook(mod: object, args: object, out: Any, path: str = path) -> None:
            seen[path] = out.detach().numpy().copy()
        net.get_submodule(path).register_forward_hook(hook)
    with torch.no_grad():
        net(x)
    return seen


@EXPORTERS
@pytest.mark.slow
@pytest.mark.parametrize(("name", "modules"), CASES, ids=[c[0] for c in CASES])
def test_module_outputs_match_torch_hooks(zoo_export: ZooExport, name: str,
                                          modules: tuple[str, ...], dynamo: bool) -> None:
    from tests import zoo

    path = zoo_export(name, dynamo=dynamo)
    model = onnx.load(str(path), load_external_data=False)
    before = model.SerializeToString()
    tensors = [resolve_module(model, m) for m in modules]
    assert None not in tensors, dict(zip(modules, tensors, strict=True))
    assert model.SerializeToString() == before
    x = zoo.sample_input(name, seed=3)
    got = run_onnx(path, x.numpy(), [t for t in tensors if t is not None])[1:]
    want = hooked_outputs(name, modules, x)
    for module, array in zip(modules, got, strict=True):
        assert array.shape == want[module].shape, module
        np.testing.assert_allclose(array, want[module], atol=1e-4, rtol=0, err_msg=module)


@EXPORTERS
@pytest.mark.slow
def test_node_modules_name_the_torch_modules(zoo_export: ZooExport, dynamo: bool) -> None:
    pytest.importorskip("torch")
    from tests import zoo

    model = onnx.load(str(zoo_export("resnet", dynamo=dynamo)), load_external_data=False)
    paths = node_modules(model)
    real = {n for n, _ in zoo.build("resnet").named_modules()}
    conv_paths = {paths[n.name] for n in model.graph.node if n.op_type == "Conv"}
    assert conv_paths <= real, conv_paths - real
    # BN folding: TorchScript keeps the conv's scope, dynamo the BN's.
    suffix = "conv2" if not dynamo else "bn2"
    assert f"layer4.1.{suffix}" in conv_paths
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert paths[gemm.name] == paths[gemm.output[0]] == "fc"


def chain(names: list[str], ops: list[str] | None = None) -> onnx.ModelProto:
    """x -> op(names[0]) -> op(names[1]) -> ... -> y, all Relu unless ``ops`` says otherwise.

    Node i is named ``names[i]`` and outputs tensor ``t{i}`` (the last one ``y``).
    """
    ops = ops or ["Relu"] * len(names)
    outs = [f"t{i}" for i in range(len(names) - 1)] + ["y"]
    nodes = [helper.make_node(op, ["x" if i == 0 else outs[i - 1]], [outs[i]], name=n)
             for i, (n, op) in enumerate(zip(names, ops, strict=True))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    return helper.make_model(graph, ir_version=10)


def test_torchscript_names_merge_relative_segments_and_repeat_calls() -> None:
    model = chain(["/layer1/layer1.0/downsample/downsample.0/Conv", "/layer1/layer1.0/relu/Relu",
                   "/layer1/layer1.0/relu_1/Relu", "/stages.0/stages.0.0/dwconv/Conv",
                   "/act_1/Relu", "/Flatten", "Identity_3"])
    paths = node_modules(model)
    assert paths["/layer1/layer1.0/downsample/downsample.0/Conv"] == "layer1.0.downsample.0"
    assert paths["t1"] == paths["t2"] == "layer1.0.relu"  # relu_1: second call of relu
    assert paths["t3"] == "stages.0.0.dwconv"
    assert paths["t4"] == "act_1"  # no "act" beside it: a module really named act_1
    assert paths["/Flatten"] == ""
    assert "Identity_3" not in paths
    outs = module_outputs(model)
    assert outs["layer1.0.relu"] == "t2" and outs["layer1"] == "t2" and outs["layer1.0"] == "t2"
    assert outs["stages.0"] == "t3" and "" not in outs


def test_tensorflow_and_tflite_names_drop_the_model_scope() -> None:
    model = chain(["StatefulPartitionedCall/model/block1/conv2d/Conv2D",
                   "StatefulPartitionedCall/model/block1/re_lu/Relu",
                   "StatefulPartitionedCall/model/block2/conv2d_1/BiasAdd;"
                   "StatefulPartitionedCall/model/block2/conv2d_1/Conv2D",
                   "StatefulPartitionedCall/model/flatten/Reshape"])
    paths = node_modules(model)
    assert [paths[f"t{i}"] for i in range(3)] == ["block1.conv2d", "block1.re_lu",
                                                  "block2.conv2d_1"]
    assert paths["y"] == "flatten"
    assert resolve_module(model, "block1") == "t1"
    assert resolve_module(model, "block2/conv2d_1") == "t2"
    assert resolve_module(model, "flatten") == "y"  # a graph output
    assert resolve_module(model, "block3") is None


def test_dynamo_metadata_wins_over_names_and_unscoped_nodes_inherit() -> None:
    model = chain(["a", "b", "c"])
    scopes = ["['', 'enc', 'enc.0', 'relu']", None, "['', 'enc', 'enc.1', 'enc.1.act', 'r']"]
    for node, value in zip(model.graph.node, scopes, strict=True):
        if value is not None:
            node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=value)
    paths = node_modules(model)
    assert paths == {"a": "enc.0", "t0": "enc.0", "c": "enc.1.act", "y": "enc.1.act"}
    outs = module_outputs(model)
    # b has no scope: it sits between enc.0 and enc.1, so it belongs to enc; enc.0 ends at t0.
    assert outs["enc.0"] == "t0" and outs["enc"] == "y" and outs["enc.1"] == "y"


def test_graph_without_scopes_has_no_modules() -> None:
    model = chain(["relu_a", "relu_b"])
    assert node_modules(model) == {} and module_outputs(model) == {}
