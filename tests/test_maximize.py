"""Activation maximization and feature inversion on real sessions (api_synthesis, CLI)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz import api
from onnx_featviz.cli.commands import main
from onnx_featviz.errors import InputError, LayerNotFoundError, ModelError
from onnx_featviz.synthesis import heads as synth_heads
from onnx_featviz.synthesis import optim as syn_optim
from onnx_featviz.synthesis import pictures as synth_pictures
from onnx_featviz.synthesis import run as synth
from tests import graphs
from tests.conftest import MODELS, shared_path

#: A 5x5 vertical edge detector: dark on the left, bright on the right.
EDGE = np.array([[-1, -1, 0, 1, 1]] * 5, np.float32)


def _value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def edge_model() -> onnx.ModelProto:
    """x(N,1,H,W) gray -> Conv "edge" [EDGE, pad 2] -> edge -> Relu "relu" -> y."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["edge"], name="edge", pads=[2, 2, 2, 2]),
         helper.make_node("Relu", ["edge"], ["y"], name="relu")],
        "edge", [_value("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [_value("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [numpy_helper.from_array(EDGE[None, None], "w")])
    return graphs.make(graph)


def two_conv_model(*, fixed_batch: bool = False, reshape: bool = False,
                   middle: str = "Relu") -> onnx.ModelProto:
    """x(N|1,3,8,8) -> Conv "conv1" [rng (4,3,3,3), pad 1] -> c1 -> <middle> -> m
      -> Conv "conv2" [rng (6,4,3,3)] -> c2 (N,6,6,6) [-> Reshape (1,-1) -> Gemm "fc" (1,5)]."""
    rng = np.random.default_rng(0)
    batch = 1 if fixed_batch else "N"
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(
        np.float32), "w1"), numpy_helper.from_array((rng.standard_normal((6, 4, 3, 3)) * 0.5)
                                                      .astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node(middle, ["c1"], ["m"], name="middle"),
             helper.make_node("Conv", ["m", "w2"], ["c2"], name="conv2")]
    out = _value("c2", TensorProto.FLOAT, [batch, 6, 6, 6])
    if reshape:
        inits += [numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
                  numpy_helper.from_array((rng.standard_normal((216, 5)) * 0.1).astype(
                      np.float32), "fc_w")]
        nodes += [helper.make_node("Reshape", ["c2", "flat"], ["f"], name="flatten"),
                  helper.make_node("MatMul", ["f", "fc_w"], ["fc"], name="fc")]
        out = _value("fc", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph(nodes, "two_conv", [_value("x", TensorProto.FLOAT,
                                                         [batch, 3, 8, 8])], [out], inits)
    return graphs.make(graph)


def uint8_model() -> onnx.ModelProto:
    """x uint8 (N,3,8,8) -> Cast float -> Div 255 -> Conv "conv" [rng (4,3,3,3)] -> c."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
         helper.make_node("Div", ["xf", "k"], ["xs"]),
         helper.make_node("Conv", ["xs", "w"], ["c"], name="conv")],
        "uint8_input", [_value("x", TensorProto.UINT8, ["N", 3, 8, 8])],
        [_value("c", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(np.array(255.0, np.float32), "k"),
         numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    return graphs.make(graph)


def dequantize_model(*, zero_point: bool, per_channel: bool) -> onnx.ModelProto:
    """x uint8 (N,3,8,8) -> DequantizeLinear "dq" [scale 1/255 (per tensor) or (1, 2, 4) / 255
    (axis 1), zero point 0 / (0, 10, 20) or omitted] -> xf -> Conv "conv" [rng (4,3,3,3)] -> c."""
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 2.0, 4.0] if per_channel else 1.0, np.float32) / 255
    zero = np.array([0, 10, 20] if per_channel else 0, np.uint8)
    inputs = ["x", "s", "z"] if zero_point else ["x", "s"]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", inputs, ["xf"], name="dq",
                          **({"axis": 1} if per_channel else {})),
         helper.make_node("Conv", ["xf", "w"], ["c"], name="conv")],
        "dequantize_input", [_value("x", TensorProto.UINT8, ["N", 3, 8, 8])],
        [_value("c", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z"),
         numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    return graphs.make(graph)


def reduce_model() -> onnx.ModelProto:
    """x(N,1,6,6) -> Conv "conv" -> c -> ReduceMean "score" [all but batch, keepdims 0] -> s."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("ReduceMean", ["c"], ["s"], name="score", axes=[1, 2, 3],
                          keepdims=0)],
        "reduce", [_value("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [_value("s", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")])
    return graphs.make(graph)


def token_model() -> onnx.ModelProto:
    """ids float (N, 16) -> MatMul "proj" -> p (N, 4): not an image input."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["ids", "w"], ["p"], name="proj")], "tokens",
        [_value("ids", TensorProto.FLOAT, ["N", 16])], [_value("p", TensorProto.FLOAT,
                                                              ["N", 4])],
        [numpy_helper.from_array(np.ones((16, 4), np.float32), "w")])
    return graphs.make(graph)


def _centre_patch(image: np.ndarray, size: int) -> np.ndarray:
    c, r = image.shape[0] // 2, size // 2
    return image[c - r:c + r + 1, c - r:c + r + 1]


# -- evidence: the maximizing image shows the filter's pattern -------------------------------------
@pytest.mark.parametrize("recipe,steps,threshold", [("fourier", 64, 0.85),
                                                    ("pyramid", 10, 0.95)])
def test_maximizing_image_correlates_with_the_edge_filter(recipe, steps, threshold):
    """Measured: fourier 0.92, pyramid 0.99 (the zero column of the filter stays free)."""
    opts = synth.MaximizeOptions("edge", objective="neuron", recipe=recipe, steps=steps,
                                 size=32, start_size=16, scales=4)
    result = synth.maximize(edge_model(), opts, provider="cpu")
    patch = _centre_patch(result.images[0, :, :, 0], 5)
    assert syn_optim.image_correlation(patch[None], EDGE[None])[0] >= threshold
    assert result.final[0] >= 0.75 * 10.0  # the neuron's maximum on [0, 1] images is 10
    assert result.start[0] < 1.0


def test_channel_objective_draws_vertical_edges():
    """relu(edge) averaged over the map: horizontal gradients dominate (measured 9.2 x)."""
    opts = synth.MaximizeOptions("y", recipe="pyramid", steps=8, size=32, start_size=16,
                                 scales=4)
    image = synth.maximize(edge_model(), opts, provider="cpu").images[0, :, :, 0]
    gx, gy = np.diff(image, axis=1), np.diff(image, axis=0)
    assert (gx**2).sum() >= 4 * (gy**2).sum()


# -- evidence: MNIST conv2 channels ---------------------------------------------------------------
@pytest.mark.slow
def test_mnist_conv2_channels_end_far_above_the_start():
    """All 32 conv2 channels (pre-ReLU objective), 96 fourier steps at 28x28.

    The activation (relu2, the layer's ReLU) of each channel on the final image is at least
    10x its value on the start image (measured: min 14x, mean 0.012 -> 0.61, 1.3 s on CPU).
    """
    with api.Inspector(MODELS / "mnist_cnn.onnx", "cpu") as inspector:
        opts = synth.MaximizeOptions("conv2", channels=tuple(range(32)), steps=96)
        result = synth.maximize(inspector, opts)
        rows = np.arange(32)
        final = inspector.capture(result.model_input, ["relu2"])["relu2"].mean(axis=(2, 3))
        start_in = np.ascontiguousarray(result.start_images.transpose(0, 3, 1, 2))
        start = inspector.capture(start_in, ["relu2"])["relu2"].mean(axis=(2, 3))
    final, start = final[rows, rows], start[rows, rows]
    assert np.all(final >= 10 * start) and final.mean() >= 0.4
    assert np.all(result.final > result.start)
    window = result.history.mean(axis=1).reshape(6, 16).mean(axis=1)
    assert window[-1] > window[0] and np.all(np.diff(window[:3]) > 0)


@pytest.mark.slow
def test_mnist_inversion_keeps_the_digit_at_conv1_and_less_deeper():
    """Correlation with the digit: conv1 >= 0.8 (measured 1.00), fc1 far lower (0.28)."""
    digit = MODELS / "samples" / "digit_7.png"
    with api.Inspector(MODELS / "mnist_cnn.onnx", "cpu") as inspector:
        found = {layer: synth.invert(inspector, digit, synth.InvertOptions(layer, steps=150))
                 for layer in ("conv1", "pool2", "fc1")}
    corr = {k: float(v.correlation[0]) for k, v in found.items()}
    assert corr["conv1"] >= 0.8
    assert corr["fc1"] < corr["pool2"] <= corr["conv1"] and corr["fc1"] < 0.6
    assert found["conv1"].loss[0] < 0.01
    assert found["conv1"].originals.shape == (1, 28, 28, 1)


# -- heads against host references ----------------------------------------------------------------
def _directional_fd(grads: synth_heads._GradientSession, x: np.ndarray, feeds: dict, seed: int
                    ) -> tuple[float, float]:
    """<d(sum objective)/dx, d> from the gradient model and from central differences."""
    _, grad = grads.run_model(x, feeds)
    d = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    eps = 3e-3  # truncation error ~ eps^2 (1.8% for the layer objective at 1e-2)
    plus, _ = grads.run_model(x + eps * d, feeds)
    minus, _ = grads.run_model(x - eps * d, feeds)
    return float((grad.astype(np.float64) * d).sum()), float((plus.sum() - minus.sum()) / (2 * eps))


@pytest.mark.parametrize("kind", ["channel", "neuron", "layer"])
def test_objective_head_matches_the_numpy_reference(kind):
    """Values against ``objective_values`` (numpy), input gradients against finite differences
    (Tanh in the middle keeps the objective smooth)."""
    x = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    units = (-1, -1, -1) if kind == "layer" else (0, 5, 2)
    with api.Inspector(two_conv_model(middle="Tanh"), "cpu") as inspector:
        acts = inspector.capture(x, ["c2"])["c2"]
        head = synth_heads._Head(kind, 6)
        feeds = synth._unit_feeds(head, units, acts.shape[1:])
        with synth_heads._GradientSession(inspector, "c2", head) as grads:
            values, grad = grads.run_model(x, feeds)
            analytic, numeric = _directional_fd(grads, x, feeds, 4)
    want, _ = syn_optim.objective_values(kind, acts, [] if kind == "layer" else list(units))
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-6)
    assert grad.shape == x.shape
    assert analytic == pytest.approx(numeric, rel=1e-2)


def test_diversity_head_matches_numpy_and_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.random((4, 3, 8, 8), dtype=np.float32)
    units, weight = (1, 1, 4, 4), 0.7
    head = synth_heads._Head("channel", 6, group=2, diversity=weight)
    with api.Inspector(two_conv_model(middle="Tanh"), "cpu") as inspector:
        acts = inspector.capture(x, ["c2"])["c2"]
        feeds = synth._unit_feeds(head, units, acts.shape[1:])
        with synth_heads._GradientSession(inspector, "c2", head) as grads:
            values, _ = grads.run_model(x, feeds)
            analytic, numeric = _directional_fd(grads, x, feeds, 5)
    channel, _ = syn_optim.objective_values("channel", acts, list(units))
    np.testing.assert_allclose(values, channel - weight * syn_optim.diversity(acts, 2)[0],
                               rtol=1e-4, atol=1e-5)
    assert analytic == pytest.approx(numeric, rel=2e-2)


def test_inversion_head_matches_the_numpy_reference():
    rng = np.random.default_rng(3)
    x0, x = rng.random((2, 3, 8, 8), dtype=np.float32), rng.random((2, 3, 8, 8), dtype=np.float32)
    with api.Inspector(two_conv_model(middle="Tanh"), "cpu") as inspector:
        target, acts = (inspector.capture(v, ["c2"])["c2"] for v in (x0, x))
        flat = target.reshape(2, 6, -1)
        feeds = {synth_heads.TARGET_IN: flat,
                 synth_heads.WEIGHT_IN: (1 / np.mean(flat**2, axis=(1, 2))).astype(np.float32)}
        with synth_heads._GradientSession(inspector, "c2", synth_heads._Head("invert", 6)) as grads:
            values, _ = grads.run_model(x, feeds)
            analytic, numeric = _directional_fd(grads, x, feeds, 6)
    np.testing.assert_allclose(values, syn_optim.inversion_loss(acts, target)[0], rtol=1e-4)
    assert analytic == pytest.approx(numeric, rel=1e-2)


# -- inputs of every kind ----------------------------------------------------------------------
def test_fixed_batch_is_freed_for_one_call_per_step():
    with api.Inspector(two_conv_model(fixed_batch=True), "cpu") as inspector:
        head = synth_heads._Head("channel", 6)
        with synth_heads._GradientSession(inspector, "c2", head) as grads:
            values, _ = grads.run_model(np.zeros((3, 3, 8, 8), np.float32),
                                        synth._unit_feeds(head, (0, 1, 2), (6, 6, 6)))
            assert grads.freed and values.shape == (3,)


def test_a_batch_that_cannot_be_freed_falls_back_to_one_row_per_call():
    model = two_conv_model(fixed_batch=True, reshape=True)
    opts = synth.MaximizeOptions("fc", channels=(0, 3), steps=4)
    result = synth.maximize(model, opts, provider="cpu")
    assert result.images.shape == (2, 8, 8, 3) and np.all(result.final > result.start)
    with pytest.raises(InputError, match="diversity term needs all images"):
        synth.maximize(model, synth.MaximizeOptions("fc", channels=(0,), steps=2,
                                                    diversity=1.0), provider="cpu")


def test_uint8_input_is_optimized_in_float_and_rounded_at_the_end():
    result = synth.maximize(uint8_model(), synth.MaximizeOptions("c", channels=(1,), steps=16),
                            provider="cpu")
    assert result.model_input.dtype == np.uint8
    # the returned image is the rounded one the model scored
    np.testing.assert_allclose(result.images[0].transpose(2, 0, 1) * 255,
                               result.model_input[0], atol=1e-3)
    with api.Inspector(uint8_model(), "cpu") as inspector:
        acts = inspector.capture(result.model_input, ["c"])["c"]
    assert result.final[0] == pytest.approx(acts[0, 1].mean(), rel=1e-5)


def test_invert_on_a_uint8_input_returns_the_rounded_image_it_scores():
    rng = np.random.default_rng(4)
    photo = rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    result = synth.invert(uint8_model(), photo, synth.InvertOptions("c", steps=20, tv=0.0),
                          provider="cpu")
    scaled = result.images[0].transpose(2, 0, 1) * 255
    x = np.rint(scaled)
    np.testing.assert_allclose(scaled, x, atol=1e-3)
    with api.Inspector(uint8_model(), "cpu") as inspector:
        got, want = (inspector.capture(v, ["c"])["c"].astype(np.float64)
                     for v in (x[None].astype(np.uint8), photo))
    loss = np.mean((got - want) ** 2) / np.mean(want**2)
    assert result.loss[0] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("zero_point,per_channel", [(False, False), (True, True),
                                                     (False, True)])
def test_uint8_input_through_any_dequantize_linear(zero_point, per_channel):
    """A 2-input (zero point omitted) or per-channel DequantizeLinear right after the input is
    a float path too; the final objective is that of the rounded uint8 input, computed by the
    original model."""
    model = dequantize_model(zero_point=zero_point, per_channel=per_channel)
    result = synth.maximize(model, synth.MaximizeOptions("c", channels=(2,), steps=16),
                            provider="cpu")
    assert result.model_input.dtype == np.uint8
    with api.Inspector(model, "cpu") as inspector:
        acts = inspector.capture(result.model_input, ["c"])["c"]
    assert result.final[0] == pytest.approx(acts[0, 2].mean(), rel=1e-5)
    assert result.final[0] > result.start[0]


def test_nhwc_float16_and_caffe_style_inputs():
    nhwc = synth.maximize(graphs.nhwc_keras_style(),
                          synth.MaximizeOptions("c", channels=(2,), steps=8), provider="cpu")
    assert nhwc.model_input.shape == (1, 8, 8, 3) and nhwc.final[0] > nhwc.start[0]
    prep = api.PrepOptions(preset="caffe", size=(16, 16))
    with api.Inspector(graphs.fp16_model(graphs.small_cnn()), "cpu", prep=prep) as inspector:
        half = synth.maximize(inspector, synth.MaximizeOptions("conv2", channels=(0, 1), steps=8))
    assert half.model_input.dtype == np.float16 and np.all(half.final > half.start)
    bgr = half.model_input[0].astype(np.float32) + np.array([104, 117, 123])[:, None, None]
    np.testing.assert_allclose(bgr[::-1].transpose(1, 2, 0), half.images[0] * 255, atol=0.2)


def test_seeded_runs_are_identical_and_seeds_differ():
    def run(seed: int) -> np.ndarray:
        opts = synth.MaximizeOptions("conv2", channels=(0, 3), steps=6, seed=seed)
        return synth.maximize(graphs.small_cnn(), opts, provider="cpu").images

    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    assert not np.array_equal(first, run(1))


def test_layer_and_diversity_objectives_and_progress():
    seen = []
    opts = synth.MaximizeOptions("conv2", objective="layer", steps=5, diversity=0.5, images=2)
    result = synth.maximize(graphs.small_cnn(), opts, seen.append, provider="cpu")
    assert result.units == (-1, -1) and result.images.shape == (2, 16, 16, 3)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5] and seen[-1].total == 5
    assert seen[-1].status.startswith("objective ")
    assert not np.allclose(result.images[0], result.images[1])


@pytest.mark.parametrize("recipe", ["fourier", "pyramid"])
def test_diversity_reports_the_channel_objective_alone(recipe):
    """With diversity on, start/final/history are the unit's activation (the diversity term
    is optimized but not reported): final equals the channel means of the returned model
    input captured by a plain forward pass."""
    opts = synth.MaximizeOptions("conv2", channels=(1, 6), steps=4, diversity=2.0, images=2,
                                 recipe=recipe, start_size=12, scales=2, seed=3)
    result = synth.maximize(graphs.small_cnn(), opts, provider="cpu")
    assert result.units == (1, 1, 6, 6)
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        acts = inspector.capture(result.model_input, [result.tensor])[result.tensor]
    want = acts.mean(axis=(2, 3))[np.arange(4), list(result.units)]
    np.testing.assert_allclose(result.final, want, rtol=1e-5, atol=1e-6)
    assert result.history.shape[1] == 4 and np.all(result.final > result.start)


def test_pyramid_on_a_dynamic_model_grows_the_image():
    opts = synth.MaximizeOptions("edge", recipe="pyramid", steps=2, start_size=10, scales=3,
                                 blur=3, size=20)
    result = synth.maximize(edge_model(), opts, provider="cpu")
    assert result.start_images.shape == (1, 10, 10, 1)
    assert result.images.shape == (1, 14, 14, 1) and len(result.history) == 6
    assert result.model_input.shape == (1, 1, 14, 14)  # a dynamic model sees each scale


def test_pyramid_keeps_the_aspect_of_a_fixed_non_square_input():
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["edge"], name="edge", pads=[2, 2, 2, 2])],
        "wide", [_value("x", TensorProto.FLOAT, [1, 1, 12, 20])],
        [_value("edge", TensorProto.FLOAT, [1, 1, 12, 20])],
        [numpy_helper.from_array(EDGE[None, None], "w")])
    opts = synth.MaximizeOptions("edge", recipe="pyramid", steps=3, start_size=8, scales=3,
                                 factor=1.5)
    result = synth.maximize(graphs.make(graph), opts, provider="cpu")
    # long sides 8, 12, 18; short sides 8, 12, 18 x 12/20 rounded
    assert result.start_images.shape == (1, 5, 8, 1)
    assert result.images.shape == (1, 11, 18, 1)
    assert result.model_input.shape == (1, 1, 12, 20)
    assert result.final[0] > result.start[0]


# -- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_have_clear_errors():
    cnn = graphs.small_cnn()
    with pytest.raises(InputError, match=r"channel\(s\) \[8\] out of range.*8 channels"):
        synth.maximize(cnn, synth.MaximizeOptions("conv2", channels=(1, 8)), provider="cpu")
    with pytest.raises(InputError, match="without a channel axis"):
        synth.maximize(reduce_model(), synth.MaximizeOptions("s"), provider="cpu")
    with pytest.raises(InputError, match=r"neuron objective needs a layer with spatial dims.*"
                       r"'logits' has shape \(N, 10\)"):
        synth.maximize(cnn, synth.MaximizeOptions("fc", objective="neuron"), provider="cpu")
    with pytest.raises(InputError, match="image input"):
        synth.maximize(token_model(), synth.MaximizeOptions("proj"), provider="cpu")
    with pytest.raises(LayerNotFoundError, match="close matches: conv2"):
        synth.maximize(cnn, synth.MaximizeOptions("conv3"), provider="cpu")
    with pytest.raises(InputError, match="unknown objective"):
        synth.maximize(cnn, synth.MaximizeOptions("conv2", objective="max"), provider="cpu")
    with pytest.raises(InputError, match="diversity"):
        synth.maximize(cnn, synth.MaximizeOptions("conv2", diversity=1.0, images=1))
    with pytest.raises(InputError, match="fixed size 8x8"):
        synth.maximize(two_conv_model(), synth.MaximizeOptions("c2", size=16), provider="cpu")
    with api.Inspector(edge_model(), "cpu", prep=api.PrepOptions(size=(4, 6))) as tiny:
        with pytest.raises(InputError, match=r"at least 8 pixels, got \(4, 6\)"):
            synth.maximize(tiny, synth.MaximizeOptions("edge", steps=1))


def test_an_op_without_a_gradient_rule_is_named():
    model = two_conv_model(middle="Asinh")
    with pytest.raises(ModelError, match=r"layer tensor 'c2'.*no gradient rule for Asinh "
                       r"\(node 'middle'\).*layer before") as err:
        synth.maximize(model, synth.MaximizeOptions("c2", steps=1), provider="cpu")
    # the autodiff advice is about CAMs and internal names, not this task
    assert "CAM" not in str(err.value) and "featviz/synth" not in str(err.value)
    assert synth.maximize(model, synth.MaximizeOptions("c1", steps=1), provider="cpu").final.size


def test_invert_rejects_bad_options_and_dead_features():
    with pytest.raises(InputError, match="steps >= 1"):
        synth.invert(graphs.small_cnn(), np.zeros((1, 3, 16, 16)),
                     synth.InvertOptions("conv1", steps=0))
    with pytest.raises(InputError, match="all zero"):
        synth.invert(graphs.small_cnn(), np.zeros((1, 3, 16, 16), np.float32),
                     synth.InvertOptions("relu1"), provider="cpu")


# -- pictures and the command line ----------------------------------------------------------
def test_render_maximized_names_and_arrays():
    opts = synth.MaximizeOptions("conv2", channels=(0, 5), steps=2, images=2)
    result = synth.maximize(graphs.small_cnn(), opts, provider="cpu")
    rendered = synth_pictures.render_maximized(result, tile=48)
    names = [p.name for p in rendered.pictures]
    assert names == ["maximize_c2.png", "c2/channel_0_0.png", "c2/channel_0_1.png",
                     "c2/channel_5_0.png", "c2/channel_5_1.png"]
    assert rendered.pictures[1].image.size == (16, 16)
    assert set(rendered.arrays) == {"images", "model_input", "units", "start", "final",
                                    "history"}


def test_cli_maximize_writes_grid_channels_and_npz(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(graphs.small_cnn(), model)
    out, npz = tmp_path / "out", tmp_path / "m.npz"
    result = CliRunner().invoke(main, [
        "maximize", str(model), "--layer", "conv2", "--channel", "1", "--channel", "4",
        "--steps", "3", "--provider", "cpu", "--out", str(out), "--save-npz", str(npz),
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["units"] == [1, 4] and len(report["final"]) == 2
    assert (out / "maximize_c2.png").exists() and (out / "c2" / "channel_4.png").exists()
    with np.load(npz) as arrays:
        assert arrays["images"].shape == (2, 16, 16, 3)


def test_cli_maximize_errors(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(graphs.small_cnn(), model)
    bad = CliRunner().invoke(main, ["maximize", str(model), "--layer", "conv2", "--channel",
                                    "9", "--provider", "cpu", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "out of range" in bad.output
    wrong = CliRunner().invoke(main, ["maximize", str(model), "--layer", "conv2",
                                      "--objective", "max"])
    assert wrong.exit_code == 2


@pytest.mark.parametrize("command", ["maximize", "invert"])
@pytest.mark.parametrize("where", ["png", "under a file", "npz under a file"])
def test_cli_refuses_unwritable_outputs_before_optimizing(tmp_path, monkeypatch, command, where):
    """A bad --out or --save-npz fails in one line before any optimization step is spent."""
    model, image, blocker = tmp_path / "cnn.onnx", tmp_path / "x.npy", tmp_path / "file"
    onnx.save(graphs.small_cnn(), model)
    np.save(image, np.zeros((1, 3, 16, 16), np.float32))
    blocker.write_text("not a folder")

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the optimization ran before the outputs were checked")

    monkeypatch.setattr(synth, command, no_run)
    out = {"png": tmp_path / "grid.png", "under a file": blocker / "out"}.get(where,
                                                                            tmp_path / "o")
    npz = ["--save-npz", str(blocker / "m.npz")] if where.startswith("npz") else []
    head = ["maximize", str(model)] if command == "maximize" else ["invert", str(model),
                                                                    str(image)]
    result = CliRunner().invoke(main, [*head, "--layer", "conv2", "--steps", "2", "--provider",
                                       "cpu", "--out", str(out), *npz])
    assert result.exit_code == 1 and not isinstance(result.exception, AssertionError)
    assert "folder" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "file", "x.npy"]


def test_cli_invert_checks_every_layer_before_the_first_inversion(tmp_path, monkeypatch):
    model, image = tmp_path / "cnn.onnx", tmp_path / "x.npy"
    onnx.save(graphs.small_cnn(), model)
    np.save(image, np.zeros((1, 3, 16, 16), np.float32))
    calls: list[object] = []
    monkeypatch.setattr(synth, "invert", lambda *args, **kwargs: calls.append(args))
    result = CliRunner().invoke(main, ["invert", str(model), str(image), "--layer", "conv1",
                                       "--layer", "conv3", "--provider", "cpu", "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1 and "close matches: conv2" in result.output
    assert calls == []


def test_cli_invert_writes_the_comparison(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(graphs.small_cnn(), model)
    image = tmp_path / "x.npy"
    np.save(image, np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "inv"
    result = CliRunner().invoke(main, [
        "invert", str(model), str(image), "--layer", "conv1", "--layer", "conv2",
        "--steps", "5", "--provider", "cpu", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert [r["tensor"] for r in report["layers"]] == ["c1", "c2"]
    assert (out / "invert.png").exists() and (out / "x_x" / "invert_c2.png").exists()


# -- the real SqueezeNet (float16, Caffe preprocessing, fixed batch 1) ------------------------
@pytest.mark.slow
def test_squeezenet_fire2_channels_rise_in_one_batched_call():
    model = shared_path("models", "squeezenet1.1_caffe2_fp16.onnx")
    with api.Inspector(model, "cpu", prep=api.PrepOptions(preset="caffe")) as inspector:
        result = synth.maximize(inspector, synth.MaximizeOptions(
            "fire2/concat_1", channels=(3, 40), steps=6))
    assert result.images.shape == (2, 224, 224, 3)
    assert result.model_input.dtype == np.float16
    assert np.all(result.final > 2 * result.start)
