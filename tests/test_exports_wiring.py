"""Modern exports wired into the verbs: module paths as layer names, the default CAM layer,
channels-last tensors, bias Add after a conv, dynamic sizes, IR versions, long names.

References: torch forward hooks and autograd on the zoo models, numpy on hand-set weights,
direct onnxruntime runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_featviz import api, runtime
from onnx_featviz.attribution.layers import cam_layer
from onnx_featviz.errors import LayerNotFoundError, ModelError
from tests.conftest import run
from tests.conftest_zoo import ZooExport, zoo_export_fixture  # noqa: F401

EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])


def _torch_grad_cam(name: str, module: str, *, channels_last: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Return (Grad-CAM at ``module``, its activation, input gradient, target) from torch."""
    torch = pytest.importorskip("torch")
    from tests import zoo

    torch.set_num_threads(1)
    net, x = zoo.build(name), zoo.sample_input(name).requires_grad_(True)
    seen: dict[str, Any] = {}

    def hook(mod: object, args: object, out: Any) -> None:
        out.retain_grad()
        seen["a"] = out
    net.get_submodule(module).register_forward_hook(hook)
    logits = net(x)
    target = int(logits.argmax(1)[0])
    logits[0, target].backward()
    act, grad = seen["a"].detach().numpy(), seen["a"].grad.numpy()
    spatial, chan = ((1, 2), -1) if channels_last else ((2, 3), 1)
    weights = grad.mean(axis=spatial, keepdims=True)
    cam = np.maximum((weights * act).sum(axis=chan), 0.0)
    assert x.grad is not None
    return cam, act, x.grad.numpy(), target


# -- module paths ------------------------------------------------------------------------------
@pytest.mark.slow
@EXPORTERS
def test_grad_cam_at_a_module_path_equals_torch(zoo_export: ZooExport, dynamo: bool) -> None:
    """Grad-CAM at ``layer4`` (the module's output) equals torch autograd within 1e-5."""
    from tests import zoo

    path = zoo_export("resnet", dynamo=dynamo)
    ref, act, _, target = _torch_grad_cam("resnet", "layer4")
    x = zoo.sample_input("resnet").numpy()
    with api.Inspector(path, "cpu") as inspector:
        tensor = inspector.layer_tensors(["layer4"])[0]
        got = np.asarray(inspector.capture(x, [tensor])[tensor], np.float32)
        np.testing.assert_allclose(got, act, rtol=1e-5, atol=1e-5)
        report = inspector.cam(x, api.CamOptions(layer="layer4", overlays=False))
    assert report.layer == tensor and report.module == "layer4"
    assert int(report.targets[0]) == target
    np.testing.assert_allclose(report.layer_cam, ref, rtol=1e-5, atol=1e-5 * ref.max())


@pytest.mark.slow
@EXPORTERS
def test_input_gradient_equals_torch(zoo_export: ZooExport, dynamo: bool) -> None:
    """The reverse-mode input gradient of the top logit equals torch autograd (1e-5 rel)."""
    import onnxruntime as ort

    from onnx_featviz import autodiff
    from tests import zoo

    path = zoo_export("resnet", dynamo=dynamo)
    _, _, ref, target = _torch_grad_cam("resnet", "layer4")
    grad = autodiff.differentiate(onnx.load(str(path)), of="output", wrt=["input"])
    sess = ort.InferenceSession(grad.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    seed = np.zeros((1, 10), np.float32)
    seed[0, target] = 1.0
    got = sess.run([grad.gradient("input")], {"input": zoo.sample_input("resnet").numpy(),
                                              "featviz/seed": seed})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow
@EXPORTERS
def test_module_paths_in_info_and_suggestions(zoo_export: ZooExport, dynamo: bool) -> None:
    """``info --json`` records carry module and layout; an unknown name suggests modules."""
    path = zoo_export("resnet", dynamo=dynamo)
    result = run("info", path, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["layers"]
    assert {"layer4.1.relu", "layer1.0.relu", "fc"} <= {r["module"] for r in records}
    assert all(r["layout"] in ("NCHW", None) for r in records)
    assert any(r["layout"] == "NCHW" for r in records)
    lines = run("info", path, "--provider", "cpu").output.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[:5] == ["#", "name", "op", "output", "module"]
    info = api.inspect_model(path)
    with pytest.raises(LayerNotFoundError, match=r"layer4\.1"):
        info.layer("layer4.1x")


# -- default CAM layer ---------------------------------------------------------------------------
@pytest.mark.slow
@EXPORTERS
@pytest.mark.parametrize(("name", "module", "hooked"), [
    ("resnet", "layer4", "layer4"), ("vgg", "features", "features"),
    ("densenet", "features", "features"), ("convnext", "stages", "stages.3")])
def test_default_cam_layer_is_the_last_spatial_block(zoo_export: ZooExport, dynamo: bool,
                                                     name: str, module: str,
                                                     hooked: str) -> None:
    """The default layer is what the head's pooling reads: the last block's output (hooked;
    ConvNeXt's ``stages`` is a ModuleList, never called, so its last stage is hooked)."""
    torch = pytest.importorskip("torch")
    from tests import zoo

    path = zoo_export(name, dynamo=dynamo)
    x = zoo.sample_input(name)
    seen: dict[str, np.ndarray] = {}
    net = zoo.build(name)

    def hook(mod: object, args: object, out: Any) -> None:
        seen["out"] = out.detach().numpy()
    net.get_submodule(hooked).register_forward_hook(hook)
    with torch.no_grad():
        net(x)
    with api.Inspector(path, "cpu") as inspector:
        tensor = cam_layer(inspector)
        assert inspector.info.module_of(tensor) == module
        got = np.asarray(inspector.capture(x.numpy(), [tensor])[tensor], np.float32)
    np.testing.assert_allclose(got, seen["out"], rtol=1e-4, atol=1e-4)


# -- channels-last tensors ---------------------------------------------------------------------
@pytest.mark.slow
@EXPORTERS
def test_channels_last_stats_and_cam(zoo_export: ZooExport, dynamo: bool) -> None:
    """ConvNeXt's pwconv1 output is NHWC: stats count its true channels, Grad-CAM at it has
    the layer's spatial shape and equals torch (channel axis last)."""
    from tests import zoo

    module = "stages.2.0.pwconv1"
    path = zoo_export("convnext", dynamo=dynamo)
    ref, act, _, _ = _torch_grad_cam("convnext", module, channels_last=True)
    x = zoo.sample_input("convnext").numpy()
    with api.Inspector(path, "cpu") as inspector:
        tensor = inspector.layer_tensors([module])[0]
        assert inspector.info.layout(tensor) == "NHWC"
        stats = inspector.stats(x, [module])[tensor]
        report = inspector.cam(x, api.CamOptions(layer=module, overlays=False))
    assert stats.mean.shape == (act.shape[-1],)
    np.testing.assert_allclose(stats.mean, act.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert report.layer_cam.shape == (1, *act.shape[1:3])
    np.testing.assert_allclose(report.layer_cam, ref, rtol=1e-5, atol=1e-5 * ref.max())


# -- dynamic sizes -------------------------------------------------------------------------------
@pytest.mark.slow
@EXPORTERS
def test_dynamic_hw_export_picks_a_layer_and_runs_cams(zoo_export: ZooExport,
                                                       dynamo: bool) -> None:
    """With symbolic N/H/W the default layer is found and Grad-CAM runs at another size."""
    from tests import zoo

    path = zoo_export("resnet", dynamo=dynamo, dynamic=True)
    h, w = zoo.DYNAMIC["resnet"]
    x = np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)
    with api.Inspector(path, "cpu") as inspector:
        tensor = cam_layer(inspector)
        assert inspector.info.module_of(tensor) == "layer4"
        report = inspector.cam(x, api.CamOptions(overlays=False))
        assert report.cam.shape == (2, h, w)
        views = inspector.backprop(x, "guided-gradcam")
    assert views.shape[:3] == (2, h, w)


# -- bias Add between conv and activation (CNTK / TF) ------------------------------------------
def _bias_add_model() -> onnx.ModelProto:
    """input (1,1,8,8) -> Conv (no bias, 3 ch) -> Add(bias (1,3,1,1)) -> Relu -> output.

    Channel 1 has zero weights and bias -1: dead after the ReLU for every input.
    """
    weight = np.ones((3, 1, 3, 3), np.float32)
    weight[1] = 0.0
    bias = np.array([0.0, -1.0, 0.5], np.float32).reshape(1, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv", pads=[1] * 4),
         helper.make_node("Add", ["conv_out", "b"], ["biased"], name="bias_add"),
         helper.make_node("Relu", ["biased"], ["relu_out"], name="relu")],
        "cntk", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, [1, 3, 8, 8])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_bias_add_activation_is_found_and_dead_channel_reported(tmp_path: Path) -> None:
    model_path = tmp_path / "cntk.onnx"
    onnx.save(_bias_add_model(), model_path)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(
            data / f"{i}.png")
    conv = api.inspect_model(model_path).layer("conv")
    assert (conv.activation, conv.activation_op) == ("relu_out", "Relu")
    result = run("stats", model_path, data, "--json", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "stats.json").read_text())
    assert report["layers"]["relu_out"]["dead"] == [1]
    assert report["layers"]["relu_out"]["channels"] == 3


# -- IR versions ---------------------------------------------------------------------------------
def test_ir_14_model_runs_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    """onnx 1.23 writes IR 14 by default; the model needs nothing newer, so it runs lowered."""
    model = _bias_add_model()
    model.ir_version = onnx.IR_VERSION
    if runtime.max_ir_version() >= model.ir_version:
        pytest.skip("the installed onnxruntime reads this IR version")
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 64
    with caplog.at_level(logging.WARNING), api.Inspector(model, "cpu") as inspector:
        got = inspector.outputs(x)["relu_out"]
        summary = api.describe(inspector)
    notices = [r.getMessage() for r in caplog.records if "IR version" in r.getMessage()]
    assert notices and f"IR version {model.ir_version}" in notices[0]
    assert summary["warning"] and str(runtime.max_ir_version()) in summary["warning"]
    padded = np.pad(x[0, 0], 1)
    box = sum(padded[i:i + 8, j:j + 8] for i in range(3) for j in range(3))
    np.testing.assert_allclose(got[0, 0], box, rtol=1e-6)
    assert model.ir_version == onnx.IR_VERSION  # the caller's model is untouched


def test_ir_needed_by_the_model_gives_a_one_line_error() -> None:
    model = _bias_add_model()
    newest = runtime.max_ir_version()
    model.ir_version = newest + 1
    rows = [row for row in helper.VERSION_TABLE if row[1] > newest]
    if not rows:
        pytest.skip("onnx knows no IR version newer than the runtime reads")
    model.opset_import[0].version = int(rows[-1][2])
    with pytest.raises(ModelError, match=rf"IR version {newest + 1}.*<= {newest}") as err:
        runtime.Session(model, "cpu")
    assert "\n" not in str(err.value)


# -- long names ----------------------------------------------------------------------------------
def _tflite_model() -> onnx.ModelProto:
    """input -> Conv -> Relu with 250-character TFLite-style tensor and node names."""
    prefix = ";".join(f"model/block1/conv2d_{i}/BiasAdd" for i in range(7))
    conv, relu = (prefix + suffix for suffix in (";Conv2D", ";Relu"))
    conv, relu = conv.rjust(250, "x"), relu.rjust(250, "x")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["serving_default_input:0", "w"], [conv], name=conv),
         helper.make_node("Relu", [conv], [relu], name=relu)],
        "tflite", [helper.make_tensor_value_info("serving_default_input:0", TensorProto.FLOAT,
                                                 [1, 1, 6, 6])],
        [helper.make_tensor_value_info(relu, TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[numpy_helper.from_array(
            np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_long_names_write_files_mapped_in_the_manifest(tmp_path: Path) -> None:
    model = _tflite_model()
    names = [n.output[0] for n in model.graph.node]
    assert all(len(n) == 250 for n in names)
    path = tmp_path / "tflite.onnx"
    onnx.save(model, path)
    image = tmp_path / "in.png"
    Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6) * 7, "L").save(image)
    filters = run("filters", path, "--out", tmp_path / "filters", "--json")
    maps = run("maps", path, image, "--layer", names[0], "--stage", "both",
               "--out", tmp_path / "maps", "--json", "--provider", "cpu")
    for result in (filters, maps):
        assert result.exit_code == 0, result.output
    mapped = {entry["name"]: Path(entry["file"]) for entry in json.loads(maps.stdout)["files"]}
    assert set(names) <= set(mapped)
    assert len({mapped[n] for n in names}) == 2
    assert all(p.is_file() and len(p.name) < 128 for p in mapped.values())
    filter_files = json.loads(filters.stdout)["files"]
    assert [e["name"] for e in filter_files] == [names[0]]
    assert Path(filter_files[0]["file"]).is_file()


# -- strided Slice gradient (Swin's PatchMerging x[:, 0::2, 1::2]) -----------------------------
@pytest.mark.parametrize(("starts", "ends", "steps"), [
    ([0, 1], [8, 7], [2, 2]), ([1, 0], [2**62, 6], [2, 3]), ([-7, 2], [8, 3], [3, 1])])
def test_strided_slice_gradient_scatters_the_seed(starts: list[int], ends: list[int],
                                                  steps: list[int]) -> None:
    """d(sum(seed * x[:, :, a::s, b::t])) / dx is the seed placed at the sliced positions."""
    import onnxruntime as ort

    from onnx_featviz import autodiff

    x = np.random.default_rng(0).standard_normal((1, 2, 8, 7)).astype(np.float32)
    ref_y = x[:, :, slice(starts[0], min(ends[0], 8), steps[0]),
              slice(starts[1], min(ends[1], 7), steps[1])]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"], name="strided")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(ref_y.shape))],
        initializer=[numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                     (("s", starts), ("e", ends), ("a", [2, 3]), ("t", steps))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    grad = autodiff.differentiate(model, of="y", wrt=["x"])
    seed = np.random.default_rng(1).standard_normal(ref_y.shape).astype(np.float32)
    sess = ort.InferenceSession(grad.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run([grad.gradient("x")], {"x": x, "featviz/seed": seed})[0]
    ref = np.zeros_like(x)
    ref[:, :, slice(starts[0], min(ends[0], 8), steps[0]),
        slice(starts[1], min(ends[1], 7), steps[1])] = seed
    np.testing.assert_array_equal(got, ref)


# -- external data left on disk ------------------------------------------------------------------
def test_weights_left_on_disk_give_the_same_results(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose weights stay in ``model.onnx.data`` (no copy in memory) gives the plain,
    exposed, gradient and statistics sessions the same values as the fully loaded model."""
    import onnx_featviz.inspector as inspection

    model = _bias_add_model()
    model.graph.output[0].type.tensor_type.shape.Clear()
    model.graph.node.extend([
        helper.make_node("GlobalAveragePool", ["relu_out"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["scores"])])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, size_threshold=0,
                    location="model.onnx.data", all_tensors_to_one_file=True)
    x = np.random.default_rng(0).random((2, 1, 8, 8), np.float32)
    results: list[tuple[Any, dict[str, Any], Any, Any, Any]] = []
    for keep in (False, True):
        monkeypatch.setattr(inspection, "KEEP_EXTERNAL_MODEL_BYTES", 0 if keep else 1 << 62)
        monkeypatch.setattr(inspection, "KEEP_EXTERNAL_TENSOR_BYTES", 0)
        with api.Inspector(path, "cpu") as inspector:
            assert (inspector.external_folder is not None) == keep
            on_disk = [t.name for t in inspector.model.graph.initializer
                       if t.data_location == TensorProto.EXTERNAL]
            assert sorted(on_disk) == (["b", "w"] if keep else [])
            report = inspector.cam(x, api.CamOptions(layer="relu_out", overlays=False))
            results.append((inspector.outputs(x)["scores"],
                            inspector.activations(x, ["conv"], stage="both"),
                            report.layer_cam, inspector.stats(x, ["relu"])["relu_out"].mean,
                            inspector.filters("conv").weight))
    loaded, kept = results
    assert loaded[1].keys() == kept[1].keys()
    for key in loaded[1]:
        np.testing.assert_array_equal(loaded[1][key], kept[1][key])
    for i in (0, 2, 3, 4):
        np.testing.assert_array_equal(np.asarray(loaded[i]), np.asarray(kept[i]))


@pytest.mark.slow
@EXPORTERS
def test_dynamic_unet_gradient_equals_torch(zoo_export: ZooExport, dynamo: bool) -> None:
    """The input gradient through a dynamic-H/W UNet (ConvTranspose, skip Concat; shapes known
    only at run time) at a size other than the export's equals torch autograd."""
    import onnxruntime as ort
    torch = pytest.importorskip("torch")

    from onnx_featviz import autodiff
    from tests import zoo

    path = zoo_export("unet", dynamo=dynamo, dynamic=True)
    h, w = zoo.DYNAMIC["unet"]
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0), requires_grad=True)
    net = zoo.build("unet")
    y = net(x)
    seed = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * seed).sum().backward()
    assert x.grad is not None
    ref = x.grad.numpy()
    grad = autodiff.differentiate(onnx.load(str(path)), of="output", wrt=["input"])
    sess = ort.InferenceSession(grad.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run([grad.gradient("input")], {"input": x.detach().numpy(),
                                              "featviz/seed": seed.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
