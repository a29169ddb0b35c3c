"""rewrite: exposed tensors and appended per-channel statistics against independent references."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.errors import InputError, LayerNotFoundError, ModelError
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.graph import reductions
from onnx_featviz.graph import rewrite as rewrite
from tests import graphs, reference
from tests.conftest import shared_path

ATOL = 1e-5
X44 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def run(model: onnx.ModelProto, feeds: Mapping[str, NDArray[np.generic]]
        ) -> dict[str, NDArray[np.generic]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def checked_expose(model: onnx.ModelProto, tensors: list[str], **kw: object) -> onnx.ModelProto:
    """expose_tensors + the two rules of every rewrite test: input untouched, checker passes."""
    before = model.SerializeToString()
    out = rewrite.expose_tensors(model, tensors, **kw)  # type: ignore[arg-type]
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    assert out.ir_version == model.ir_version
    assert list(out.opset_import) == list(model.opset_import)
    return out


def checked_stats(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    before = model.SerializeToString()
    out = reductions.append_channel_stats(model, tensors)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    assert out.ir_version == model.ir_version
    return out


def inits(model: onnx.ModelProto) -> dict[str, NDArray[np.generic]]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def calib() -> NDArray[np.float32]:
    return np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)


# -- expose_tensors ------------------------------------------------------------------------------
def test_exposed_conv_equals_reference_and_outputs_unchanged() -> None:
    model = graphs.conv_relu()
    out = checked_expose(model, ["c"])
    assert [o.name for o in out.graph.output] == ["y", "c"]
    assert out.graph.output[0] == model.graph.output[0]
    assert catalog.tensor_types(out)["c"] == ("float32", (1, 1, 2, 2))
    got = run(out, {"x": X44})
    np.testing.assert_array_equal(got["c"][0, 0], [[45, 54], [81, 90]])
    w = inits(model)["w"]
    np.testing.assert_allclose(got["c"], reference.conv2d(X44, w), atol=ATOL)
    np.testing.assert_array_equal(got["y"], run(model, {"x": X44})["y"])


def test_expose_is_idempotent_and_deterministic() -> None:
    model = graphs.conv_relu()
    once = checked_expose(model, ["c", "x", "c"])
    again = checked_expose(once, ["c", "x"])
    assert once.SerializeToString() == again.SerializeToString()
    assert once.SerializeToString() == rewrite.expose_tensors(model, ["c", "x"]).SerializeToString()
    same = checked_expose(model, ["y"])
    assert same.SerializeToString() == model.SerializeToString()


def test_expose_inputs_initializers_and_symbolic_batch() -> None:
    model = graphs.conv_relu_dynamic()
    out = checked_expose(model, ["x", "w", "c"])
    types = {o.name: o.type.tensor_type.shape.dim for o in out.graph.output}
    assert types["c"][0].dim_param == "N"
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    got = run(out, {"x": x})
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["w"], inits(model)["w"])
    np.testing.assert_allclose(got["c"], reference.conv2d(x, inits(model)["w"]), atol=ATOL)


def test_conv_bn_relu_tensors_equal_numpy() -> None:
    model = graphs.conv_bn_relu()
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    got = run(checked_expose(model, ["c", "n", "i"]), {"x": x})
    p = inits(model)
    conv = reference.conv2d(x, p["w"])
    bn = reference.batchnorm(conv, p["scale"], p["bias"], p["mean"], p["var"])
    np.testing.assert_allclose(got["c"], conv, atol=ATOL)
    np.testing.assert_allclose(got["n"], bn, atol=ATOL)
    np.testing.assert_allclose(got["y"], reference.relu(bn), atol=ATOL)


def test_unknown_and_subgraph_tensors_raise() -> None:
    with pytest.raises(LayerNotFoundError, match="close matches: c"):
        rewrite.expose_tensors(graphs.conv_relu(), ["cc"])
    with pytest.raises(ModelError, match="subgraph"):
        rewrite.expose_tensors(graphs.if_subgraph(), ["t"])
    with pytest.raises(ModelError, match="subgraph"):
        reductions.append_channel_stats(graphs.if_subgraph(), ["t2"])


def test_unknown_rank_gets_dtype_only_until_a_run_fills_it() -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
         helper.make_node("Relu", ["r"], ["y"], name="relu")],
        "runtime_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    out = rewrite.expose_tensors(model, ["r"])
    declared = out.graph.output[1].type.tensor_type
    assert declared.elem_type == TensorProto.FLOAT and not declared.HasField("shape")
    feeds = {"x": np.arange(16, dtype=np.float32).reshape(2, 8), "shape": np.array([4, 4])}
    assert run(out, feeds)["r"].shape == (4, 4)
    filled = checked_expose(model, ["r"], shapes={"r": (4, 4)})
    assert catalog.tensor_types(filled)["r"] == ("float32", (4, 4))


def test_qdq_exposure_and_dequantized_ints() -> None:
    model = graphs.qdq_model(graphs.small_cnn(), calib())
    info = catalog.read_catalog(model)
    convs = info.conv_layers
    tensors = rewrite.conv_tensors(info, "both") + [c.raw_output or "" for c in convs]
    out = checked_expose(model, tensors)
    x = calib()[:2]
    got, plain = run(out, {"x": x}), run(model, {"x": x})
    np.testing.assert_array_equal(got["logits"], plain["logits"])
    p = inits(model)
    for conv in convs:
        raw = conv.raw_output or ""
        quant = next(n for n in model.graph.node if raw in n.output)
        ref = reference.dequantize(got[raw], p[quant.input[1]], p[quant.input[2]])
        np.testing.assert_array_equal(got[rewrite.dequantized_name(raw)], ref)
        np.testing.assert_array_equal(got[conv.output], ref)
        assert got[raw].dtype == np.uint8
    assert rewrite.dequantized_name("c") == "featviz/dequant/c"


def test_qoperator_qlinearconv_dequantized() -> None:
    model = graphs.qoperator_model(graphs.small_cnn(), calib())
    info = catalog.read_catalog(model)
    convs = [c.output for c in info.conv_layers]
    out = checked_expose(model, convs)
    x = calib()[:2]
    got = run(out, {"x": x})
    np.testing.assert_array_equal(got["logits"], run(model, {"x": x})["logits"])
    p = inits(model)
    for conv, tensor in zip(info.conv_layers, convs, strict=True):
        scale, zero = p[conv.inputs[6]], p[conv.inputs[7]]
        deq = got[rewrite.dequantized_name(tensor)]
        np.testing.assert_array_equal(deq, reference.dequantize(got[tensor], scale, zero))
        assert deq.dtype == np.float32 and deq.shape == got[tensor].shape
    # every tensor (contrib-op outputs onnx cannot shape) passes the checker once a run fills shapes
    every = rewrite.all_tensors(info)
    first = run(rewrite.expose_tensors(model, every), {"x": x})
    shapes = {k: v.shape for k, v in first.items()}
    again = run(checked_expose(model, every, shapes=shapes), {"x": x})
    assert all(np.array_equal(again[k], v) for k, v in first.items())


def test_per_channel_quantize_dequantized_with_axis() -> None:
    model = graphs.per_channel_quantize()
    x = np.array([1.0, -2.0, 3.5, 0.25, 1.0, -2.0, 3.5, 0.25], np.float32).reshape(1, 2, 2, 2)
    got = run(checked_expose(model, ["xq"]), {"x": x})
    p = inits(model)
    ref = reference.dequantize(got["xq"], p["s"], p["z"], axis=1)
    np.testing.assert_array_equal(got[rewrite.dequantized_name("xq")], ref)
    np.testing.assert_array_equal(got["y"], ref)


def test_conv_and_all_tensors_lists() -> None:
    info = catalog.read_catalog(graphs.small_cnn())
    assert rewrite.conv_tensors(info, "conv") == ["c1", "c2"]
    assert rewrite.conv_tensors(info, "act") == ["r1", "r2"]
    assert rewrite.conv_tensors(info, "both") == ["c1", "r1", "c2", "r2"]
    assert rewrite.all_tensors(info) == ["c1", "r1", "p1", "c2", "r2", "g", "f", "logits"]
    with pytest.raises(InputError, match="unknown stage"):
        rewrite.conv_tensors(info, "post")
    qdq = catalog.read_catalog(graphs.qdq_model(graphs.small_cnn(), calib()))
    every = rewrite.all_tensors(qdq)
    assert all(qdq.layer(t).op_type == "DequantizeLinear" for t in every[:-1])
    assert [qdq.layer(t).name for t in every if qdq.layer(t).is_conv] == []


def test_torch_forward_hooks_match_exposed_tensors() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, groups=2), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    hooked: dict[int, NDArray[np.float32]] = {}
    for i in (2, 3, 4, 5):
        net[i].register_forward_hook(
            lambda _m, _a, y, i=i: hooked.__setitem__(i, y.detach().numpy().copy()))
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    info = catalog.read_catalog(model)
    conv1, conv2 = info.conv_layers
    pool = next(lay for lay in info.layers if lay.op_type == "MaxPool")
    out = checked_expose(model, [conv1.activation or "", pool.output, conv2.output,
                                 conv2.activation or ""])
    got = run(out, {"x": x})
    assert conv2.activation_op == "Clip"
    np.testing.assert_allclose(got[conv1.activation or ""], hooked[2], atol=ATOL)
    np.testing.assert_allclose(got[pool.output], hooked[3], atol=ATOL)
    np.testing.assert_allclose(got[conv2.output], hooked[4], atol=ATOL)
    np.testing.assert_allclose(got[conv2.activation or ""], hooked[5], atol=ATOL)
    np.testing.assert_allclose(got["logits"], logits, atol=ATOL)


# -- append_channel_stats ------------------------------------------------------------------------
def planted_input() -> NDArray[np.float32]:
    """(2, 3, 4, 5) with NaN in channel 0, +/-Inf in channel 1, exact zeros in channel 2."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 1, 2] = np.nan
    x[1, 1, 0, 0], x[0, 1, 3, 4] = np.inf, -np.inf
    x[:, 2, 0, :] = 0.0
    return x


def per_sample_reference(value: NDArray[np.generic]) -> dict[str, NDArray[np.float64]]:
    """Numpy per-sample, per-channel mean, variance, extremes and counts (float64)."""
    x = np.asarray(value, np.float64)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return {"shift": flat[0, :, 0], "mean": flat.mean(axis=2), "var": flat.var(axis=2),
            "min": flat.min(axis=2), "max": flat.max(axis=2), "zeros": (flat == 0).sum(axis=2),
            "nonfinite": (~np.isfinite(flat)).sum(axis=2)}


def per_sample_found(got: Mapping[str, NDArray[np.generic]], tensor: str, channels: int
                     ) -> dict[str, NDArray[np.float64]]:
    """Mean and variance per sample from the shifted sums (K + S1 / L, S2 / L - (S1 / L)^2)."""
    positions = int(got[reductions.stat_output("count", tensor)]) // (
        got[reductions.stat_output("sum", tensor)].shape[0] * channels)
    shift = got[reductions.stat_output("shift", tensor)].astype(np.float64).reshape(1, channels)
    s1 = got[reductions.stat_output("sum", tensor)].astype(np.float64) / positions
    s2 = got[reductions.stat_output("sumsq", tensor)].astype(np.float64) / positions
    return {"shift": shift[0], "mean": shift + s1, "var": s2 - s1 * s1}


def assert_stats(got: Mapping[str, NDArray[np.generic]], tensor: str,
                 value: NDArray[np.generic], clean: list[int], rtol: float = 1e-5) -> None:
    """Compare every reduction with numpy per sample; sums only on channels free of NaN/Inf."""
    ref = per_sample_reference(value)
    n, c = value.shape[:2]
    assert int(got[reductions.stat_output("count", tensor)]) == value.size
    shift = got[reductions.stat_output("shift", tensor)]
    assert shift.dtype == np.float32 and shift.shape == (1, c, *[1] * (value.ndim - 2))
    found = per_sample_found(got, tensor, c)
    for stat in ("shift", "mean", "var", "min", "max", "zeros"):
        out = found[stat] if stat in found else got[reductions.stat_output(stat, tensor)]
        if stat not in found:
            assert out.dtype == np.float32 and out.shape == (n, c), stat
        picked = slice(None) if stat == "zeros" else clean
        cols = (Ellipsis, picked)
        scale = float(np.abs(ref[stat][..., clean]).max(initial=1.0))
        np.testing.assert_allclose(out[cols], ref[stat][cols], rtol=rtol,
                                   atol=ATOL * scale, err_msg=f"{stat} of {tensor}")


def run_nonfinite(model: onnx.ModelProto, tensors: list[str],
                  feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
    before = model.SerializeToString()
    out = reductions.append_nonfinite_counts(model, tensors)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    return run(out, feeds)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("opset", [7, 11, 13, 18])
def test_channel_stats_equal_numpy(opset: int) -> None:
    model = graphs.relu_probe(opset)
    out = checked_stats(model, ["x", "r"])
    assert [o.name for o in out.graph.output][0] == "y"
    x = planted_input()
    got = run(out, {"x": x})
    assert_stats(got, "x", x, clean=[2])
    assert_stats(got, "r", reference.relu(x), clean=[2])
    # NaN / Inf make the channel's sum non-finite: that is how a batch is flagged for a recount
    assert not np.isfinite(got[reductions.stat_output("sum", "x")][:, :2].sum(axis=0)).any()
    counts = run_nonfinite(model, ["x", "r"], {"x": x})
    np.testing.assert_array_equal(counts[reductions.stat_output("nonfinite", "x")],
                                  per_sample_reference(x)["nonfinite"])
    np.testing.assert_array_equal(counts[reductions.stat_output("nonfinite", "x")].sum(axis=0),
                                  [1, 2, 0])
    np.testing.assert_array_equal(got["y"], run(model, {"x": x})["y"])
    added = len(out.graph.node) - len(model.graph.node)
    assert added <= 2 * 14  # a few nodes per tensor keeps the on-device cost small


def test_channel_stats_idempotent_and_named() -> None:
    model = graphs.relu_probe(13)
    once = checked_stats(model, ["r"])
    assert once.SerializeToString() == checked_stats(once, ["r", "r"]).SerializeToString()
    assert [o.name for o in once.graph.output][1:] == [
        reductions.stat_output(s, "r") for s in reductions.STAT_NAMES]
    assert reductions.stat_output("sumsq", "r") == "featviz/stats/sumsq/r"
    assert all(n.name.startswith("featviz/") for n in once.graph.node[len(model.graph.node):])
    with pytest.raises(InputError, match="unknown statistic"):
        reductions.stat_output("median", "r")
    with pytest.raises(ModelError, match="at least 2 dims"):
        reductions.append_channel_stats(graphs.small_cnn(), ["f", "fc_b"])
    with pytest.raises(ModelError, match="at least 2 dims"):
        reductions.append_nonfinite_counts(graphs.small_cnn(), ["fc_b"])


def test_channel_stats_large_mean_small_spread() -> None:
    """Shifting by a value of the channel keeps the variance when |mean| >> std."""
    model = graphs.relu_probe(13)
    x = (1000.0 + 0.01 * np.random.default_rng(1).standard_normal((2, 3, 4, 5))
         ).astype(np.float32)
    got = run(checked_stats(model, ["x"]), {"x": x})
    found = per_sample_found(got, "x", 3)
    ref = per_sample_reference(x)
    np.testing.assert_allclose(found["var"], ref["var"], rtol=1e-5)
    np.testing.assert_allclose(found["mean"], ref["mean"], rtol=1e-9)
    # the same sums without the shift lose the spread entirely in float32
    unshifted = x.reshape(2, 3, -1).astype(np.float32)
    naive = (unshifted * unshifted).mean(axis=2) - unshifted.mean(axis=2) ** 2
    assert np.abs(naive / ref["var"] - 1).max() > 0.5


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_bound_counts(opset: int) -> None:
    model = graphs.conv_clip_channels(opset)
    assert reductions.clip_bounds(model, ["y", "c"]) == {"y": (-1.0, 6.0), "c": (None, None)}
    out = checked_stats(model, ["y", "c"])
    names = [o.name for o in out.graph.output]
    assert reductions.stat_output("at_high", "y") in names
    assert reductions.stat_output("at_low", "c") not in names
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32) * 4
    got = run(out, {"x": x})
    y = run(rewrite.expose_tensors(model, ["y"]), {"x": x})["y"]
    for stat, bound in (("at_low", -1.0), ("at_high", 6.0)):
        np.testing.assert_array_equal(got[reductions.stat_output(stat, "y")],
                                      (y == np.float32(bound)).sum(axis=(2, 3)))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_channel_stats_fp16_and_quantized() -> None:
    model = graphs.relu_probe(13, elem_type=TensorProto.FLOAT16)
    x = planted_input().astype(np.float16)
    got = run(checked_stats(model, ["r"]), {"x": x})
    assert_stats(got, "r", reference.relu(x.astype(np.float32)), clean=[2])
    qdq = graphs.qdq_model(graphs.small_cnn(), calib())
    raw = catalog.read_catalog(qdq).conv_layers[1].raw_output or ""
    batch = calib()[:2]
    values = run(rewrite.expose_tensors(qdq, [raw]), {"x": batch})
    got = run(checked_stats(qdq, [raw]), {"x": batch})
    assert_stats(got, raw, values[rewrite.dequantized_name(raw)], clean=list(range(8)))


@pytest.mark.slow
def test_squeezenet_all_convs_exposed_and_reduced() -> None:
    model = onnx.load(shared_path("models", "squeezenet1.1_caffe2_fp16.onnx"))
    info = catalog.read_catalog(model)
    tensors = rewrite.conv_tensors(info, "both")
    assert len(tensors) == 52
    out = checked_expose(model, tensors)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float16)
    got, plain = run(out, {"data_0": x}), run(model, {"data_0": x})
    np.testing.assert_array_equal(got["softmaxout_1"], plain["softmaxout_1"])
    stats = run(checked_stats(model, tensors[:4]), {"data_0": x})
    for tensor in tensors[:4]:
        # ORT CPU runs fp16 Conv in float32 and drops the Cast pair around it, so the stats see
        # the float32 values before fp16 rounding (relative difference <= 2^-11)
        assert_stats(stats, tensor, got[tensor].astype(np.float32),
                     clean=list(range(got[tensor].shape[1])), rtol=1e-3)
    np.testing.assert_array_equal(stats["softmaxout_1"], plain["softmaxout_1"])


@pytest.mark.slow
def test_cifar_every_tensor() -> None:
    model = onnx.load(shared_path("models", "cifar10_cnn_pytorch.onnx"))
    every = rewrite.all_tensors(catalog.read_catalog(model))
    # 4 Conv, 4 Relu, MaxPool, Reshape (flatten), Gemm; the Constant shape is left out
    assert len(every) == 11
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = run(checked_expose(model, every), {"modelInput": x})
    np.testing.assert_array_equal(got["modelOutput"],
                                  run(model, {"modelInput": x})["modelOutput"])


def test_float16_transfer_exposes_half_precision_copies() -> None:
    model = graphs.conv_relu_dynamic()
    before = model.SerializeToString()
    out = rewrite.expose_tensors(model, ["c"], float16=True)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    half = rewrite.float16_name("c")
    assert [o.name for o in out.graph.output] == ["y", half]
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    assert got[1].dtype == np.float16
    want = reference.conv2d(x, np.ones((1, 1, 3, 3), np.float32))
    np.testing.assert_array_equal(got[1], want.astype(np.float16))
    np.testing.assert_array_equal(got[0], np.maximum(got[0], 0))
