"""Tests for onnx_featviz.api: the Inspector against hand-checked numbers, plain onnxruntime and
numpy, bounded-memory streaming, statistics, predictions, quantized/fp16 models and the shared
real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_featviz import api
from onnx_featviz.errors import LayerNotFoundError, ModelError
from onnx_featviz.graph import catalog as catalog
from tests import graphs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {'/'.join(parts)} not found at ../shared/data")
    return path


def plain_run(model: onnx.ModelProto, x: np.ndarray, extra: list[str] | None = None
              ) -> dict[str, np.ndarray]:
    """Reference: onnxruntime on the model (plus ``extra`` tensors added as outputs by hand)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in extra or []:
        copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name  # initializers listed as inputs are optional ones
    return dict(zip(names, session.run(names, {feed: x}), strict=True))


def rng_batch(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- hand-checked


def test_activations_hand_checked_conv_relu() -> None:
    model = graphs.conv_relu()
    before = model.SerializeToString()
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    with api.Inspector(model, "cpu") as inspector:
        conv = inspector.activations(x, stage="conv")
        act = inspector.activations(x, ["conv"], stage="act")
        both = inspector.activations(x - 8, ["conv"], stage="both")
        by_tensor = inspector.activations(x, ["c"])
        by_index = inspector.activations(x, [0])
    assert list(conv) == ["c"] and list(act) == ["y"] and list(both) == ["c", "y"]
    np.testing.assert_array_equal(conv["c"], [[[[45, 54], [81, 90]]]])
    np.testing.assert_array_equal(act["y"], [[[[45, 54], [81, 90]]]])
    # x - 8 lowers every 3x3 window sum by 72
    np.testing.assert_array_equal(both["c"], [[[[-27, -18], [9, 18]]]])
    np.testing.assert_array_equal(both["y"], [[[[0, 0], [9, 18]]]])
    np.testing.assert_array_equal(by_tensor["c"], conv["c"])
    np.testing.assert_array_equal(by_index["c"], conv["c"])
    assert conv["c"].dtype == np.float32
    assert model.SerializeToString() == before


def test_unknown_layer_lists_close_matches() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)
    with api.Inspector(graphs.conv_relu(), "cpu") as inspector:
        with pytest.raises(LayerNotFoundError, match=r"'convv'.*close matches: conv"):
            inspector.activations(x, ["convv"])
        with pytest.raises(LayerNotFoundError, match="relu"):
            inspector.activations(x, ["reluu"])


def test_layer_inside_subgraph_is_model_error() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)
    with api.Inspector(graphs.if_subgraph(), "cpu") as inspector:
        assert not inspector.layer("inner_conv").exposable
        with pytest.raises(ModelError, match="inner_conv"):
            inspector.activations(x, ["inner_conv"])


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("max_bytes", [40_000, 10_000])
def test_stream_groups_stay_under_max_bytes(max_bytes: int) -> None:
    batch = rng_batch(7)
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        tensors = inspector.layer_tensors(["conv1", "conv2"], "both")
        assert tensors == ["c1", "r1", "c2", "r2"]
        unbounded = inspector.capture(batch, tensors)
        parts: dict[str, list[tuple[int, np.ndarray]]] = {t: [] for t in tensors}
        groups = list(inspector.stream(batch, tensors, max_bytes=max_bytes))
        for rows, group in groups:
            assert sum(v.nbytes for v in group.values()) <= max_bytes
            for name, value in group.items():
                assert len(value) == len(range(*rows.indices(len(batch))))
                parts[name].append((rows.indices(len(batch))[0], value))
    assert len(groups) > 1
    reference = plain_run(graphs.small_cnn(), batch, tensors)
    for name in tensors:
        joined = np.concatenate([v for _, v in sorted(parts[name], key=lambda p: p[0])])
        np.testing.assert_array_equal(joined, unbounded[name])
        np.testing.assert_array_equal(joined, reference[name])


def test_activations_with_max_bytes_equal_unbounded() -> None:
    batch = rng_batch(5)
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        bounded = inspector.activations(batch, stage="both", max_bytes=10_000)
        free = inspector.activations(batch, stage="both")
    assert list(bounded) == list(free) == ["c1", "r1", "c2", "r2"]
    for name in free:
        np.testing.assert_array_equal(bounded[name], free[name])


# ----------------------------------------------------------------------------- statistics


def test_stats_over_batches_equal_numpy_over_full_batch() -> None:
    batch = rng_batch(7)
    model = graphs.small_cnn()
    with api.Inspector(model, "cpu", max_batch=3) as inspector:
        stats = inspector.stats(batch, ["conv1", "conv2"], stage="both")
    reference = plain_run(model, batch, ["c1", "r1", "c2", "r2"])
    assert list(stats) == ["c1", "r1", "c2", "r2"]
    for name, found in stats.items():
        x = reference[name].astype(np.float64)
        axes = (0, 2, 3)
        scale = float(np.abs(x).max())
        assert found.count == x.shape[0] * x.shape[2] * x.shape[3]
        for field, expected in (("mean", x.mean(axis=axes)), ("var", x.var(axis=axes)),
                                ("min", x.min(axis=axes)), ("max", x.max(axis=axes)),
                                ("zeros", (x == 0).mean(axis=axes))):
            np.testing.assert_allclose(getattr(found, field), expected, rtol=1e-6,
                                       atol=1e-6 * scale ** (2 if field == "var" else 1),
                                       err_msg=f"{name} {field}")
        np.testing.assert_array_equal(found.nonfinite, np.zeros(x.shape[1]))
    assert (stats["r1"].zeros > 0).any()


# ----------------------------------------------------------------------------- outputs, predict


def test_outputs_equal_plain_onnxruntime_bit_for_bit() -> None:
    batch = rng_batch(4)
    model = graphs.small_cnn()
    with api.Inspector(model, "cpu") as inspector:
        inspector.activations(batch, stage="both")  # exposing must change nothing
        outputs = inspector.outputs(batch)
    expected = plain_run(model, batch)
    assert list(outputs) == ["logits"]
    np.testing.assert_array_equal(outputs["logits"], expected["logits"])
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    with api.Inspector(graphs.conv_relu(), "cpu") as inspector:
        np.testing.assert_array_equal(inspector.outputs(x)["y"],
                                      plain_run(graphs.conv_relu(), x)["y"])


def test_predict_applies_softmax_to_logits() -> None:
    batch = rng_batch(3)
    model = graphs.small_cnn()
    labels = [f"class{i}" for i in range(10)]
    with api.Inspector(model, "cpu", labels=labels) as inspector:
        predictions = inspector.predict(batch, top_k=10)
    probs = softmax(plain_run(model, batch)["logits"].astype(np.float64))
    assert len(predictions) == 3
    for row, prediction in zip(probs, predictions, strict=True):
        assert prediction.softmax_applied and prediction.output == "logits"
        order = np.argsort(-row, kind="stable")
        assert [c.index for c in prediction.top] == order.tolist()
        assert [c.label for c in prediction.top] == [labels[i] for i in order]
        np.testing.assert_allclose([c.score for c in prediction.top], row[order], rtol=1e-6)
        assert sum(c.score for c in prediction.top) == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------- quantized, fp16


def float_reference(batch: np.ndarray) -> dict[str, np.ndarray]:
    return plain_run(graphs.small_cnn(), batch, ["c1", "r1", "c2", "r2"])


def assert_close_to_float(found: np.ndarray, expected: np.ndarray, fraction: float) -> None:
    """Quantized/fp16 results follow the float model within ``fraction`` of its range."""
    assert found.dtype == np.float32 and found.shape == expected.shape
    span = float(expected.max() - expected.min())
    assert float(np.abs(found - expected).max()) <= fraction * span


def test_qdq_model_exposes_dequantized_conv_outputs() -> None:
    calib = rng_batch(8)
    model = graphs.qdq_model(graphs.small_cnn(), calib)
    with api.Inspector(model, "cpu") as inspector:
        convs = [lay.name for lay in inspector.info.conv_layers]
        assert len(convs) == 2
        values = inspector.activations(calib, stage="both")
    # the quantizer folds each Relu into its conv: the conv output is the DequantizeLinear after it
    assert list(values) == ["r1_DequantizeLinear_Output", "r2_DequantizeLinear_Output"]
    reference = float_reference(calib)
    exposed = plain_run(model, calib, list(values))
    for (name, value), float_name in zip(values.items(), ("r1", "r2"), strict=True):
        assert value.dtype == np.float32 and value.ndim == 4
        np.testing.assert_array_equal(value, exposed[name])
        assert_close_to_float(value, reference[float_name], 0.05)


def test_qlinearconv_model_exposes_dequantized_conv_outputs() -> None:
    calib = rng_batch(8)
    model = graphs.qoperator_model(graphs.small_cnn(), calib)
    with api.Inspector(model, "cpu") as inspector:
        layers = inspector.info.conv_layers
        assert [lay.op_type for lay in layers] == ["QLinearConv", "QLinearConv"]
        values = inspector.activations(calib)
    assert len(values) == 2
    reference = float_reference(calib)
    for value, name in zip(values.values(), ("r1", "r2"), strict=True):
        # QLinearConv fuses the Relu: its output is the post-activation map, dequantized
        assert value.dtype == np.float32 and value.ndim == 4
        assert_close_to_float(value, reference[name], 0.05)


def test_fp16_model_gives_float32_arrays() -> None:
    batch = rng_batch(2)
    model = graphs.fp16_model(graphs.small_cnn())
    with api.Inspector(model, "cpu") as inspector:
        values = inspector.activations(batch, stage="both")
        raw = inspector.activations(batch, ["conv1"], float32=False)
    reference = float_reference(batch)
    assert list(values) == ["c1", "r1", "c2", "r2"]
    for name, value in values.items():
        assert_close_to_float(value, reference[name], 0.01)
    assert raw["c1"].dtype == np.float16


# ----------------------------------------------------------------------------- shared models


@pytest.mark.slow
def test_squeezenet_caffe_predictions_and_every_conv() -> None:
    model_path = shared("models", "squeezenet1.1_caffe2_fp16.onnx")
    expected = {"cat_chelsea.png": 285, "coffee_espresso.png": 967, "hot_dog.jpg": 934}
    images = [shared("images", name) for name in expected]
    with api.Inspector(model_path, "cpu", prep=api.PrepOptions(preset="caffe")) as inspector:
        predictions = inspector.predict(images, top_k=5)
        assert [p.top[0].index for p in predictions] == list(expected.values())
        assert not predictions[0].softmax_applied
        batch = inspector.load_batch(images[:1]).array
        values = inspector.activations(batch)
    assert len(values) == 26
    for value in values.values():
        assert value.dtype == np.float32 and value.ndim == 4 and value.shape[0] == 1
    first = next(iter(values))
    reference = plain_run(onnx.load(model_path), batch, [first])[first]
    np.testing.assert_array_equal(values[first], reference.astype(np.float32))


@pytest.mark.slow
def test_cifar_model_predicts_cat() -> None:
    model_path = shared("models", "cifar10_cnn_pytorch.onnx")
    prep = api.PrepOptions(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with api.Inspector(model_path, "cpu", prep=prep) as inspector:
        (prediction,) = inspector.predict(shared("images", "cat_chelsea.png"), top_k=3)
        assert prediction.top[0].index == 3
        assert prediction.softmax_applied
        values = inspector.activations(shared("images", "cat_chelsea.png"))
    assert len(values) == 4
    assert all(v.dtype == np.float32 and v.ndim == 4 for v in values.values())


def test_shapes_inference_cannot_give_come_from_one_real_run() -> None:
    # com.microsoft.Gelu is unknown to onnx shape inference but runs in onnxruntime.
    model = graphs.conv_relu()
    model.graph.node.append(onnx.helper.make_node("Gelu", ["y"], ["g"], name="gelu",
                                                  domain="com.microsoft"))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, None))
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    assert catalog.read_catalog(model).layer("gelu").shape is None
    with api.Inspector(model, "cpu") as insp:
        layer = insp.layer("gelu")
        assert layer.shape == (1, 1, 2, 2)
        assert layer.dtype == "float32"
        x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        got = insp.activations(x, ["gelu"])["g"]
    want = np.array([[45, 54], [81, 90]], np.float64)  # gelu(x) == x for large x
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-6)
