"""Tests for ``featviz compare`` / ``audit_compare.compare_models`` on the MNIST CNN against its
int8 (QDQ and QLinearConv, quantized with onnxruntime.quantization on MNIST training images)
and float16 (onnxconverter-common) forms. Metrics are checked against numpy on tensors captured
independently: plain onnxruntime sessions with outputs added by hand, on MNIST pixels read
with gzip + numpy."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from onnx_featviz import runtime
from onnx_featviz.audit import compare as audit_compare
from onnx_featviz.audit import metrics as audit
from onnx_featviz.audit import output as audit_output
from onnx_featviz.audit import plots as audit_plots
from onnx_featviz.cli import audit as cli_audit
from onnx_featviz.errors import InputError, LayerNotFoundError
from onnx_featviz.graph import matching as matching
from onnx_featviz.structs import Progress
from tests import graphs
from tests.conftest import MODELS, interrupting_bar, run, shared_path, strict_json

pytestmark = pytest.mark.slow

MNIST_MODEL = MODELS / "mnist_cnn.onnx"
IMAGES = 200
CALIBRATION = 200
KINDS = ("qdq", "qop", "fp16_io", "fp16")


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` images of a gzip IDX file as (count, 28, 28) uint8."""
    with gzip.open(path, "rb") as fh:
        magic, total, rows, cols = struct.unpack(">IIII", fh.read(16))
        assert magic == 2051 and total >= count
        return np.frombuffer(fh.read(count * rows * cols), np.uint8).reshape(count, rows, cols)


def write_idx(path: Path, pixels: np.ndarray) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, *pixels.shape))
        fh.write(pixels.tobytes())
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, path)
    return path


def negate_channel(model: onnx.ModelProto, weight: str, channel: int) -> onnx.ModelProto:
    """A copy whose conv weight ``weight`` has output channel ``channel`` negated."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name == weight:
            array = numpy_helper.to_array(tensor).copy()
            array[channel] *= -1.0
            out.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, weight))
    return out


def fp16_keep_io(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    out: onnx.ModelProto = float16.convert_float_to_float16(model, keep_io_types=True)
    out.ir_version = model.ir_version
    return out


@pytest.fixture(scope="module")
def test_pixels() -> np.ndarray:
    return read_idx(shared_path("mnist", "t10k-images-idx3-ubyte.gz"), IMAGES)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare")


@pytest.fixture(scope="module")
def data(work: Path, test_pixels: np.ndarray) -> Path:
    """The first 200 MNIST test images as an IDX file (what DATA is in the tests)."""
    return write_idx(work / "t200-images-idx3-ubyte.gz", test_pixels)


@pytest.fixture(scope="module")
def models(work: Path) -> dict[str, Path]:
    """The float model and its int8 / fp16 forms, plus faulty copies (made once per module)."""
    model = onnx.load(MNIST_MODEL)
    train = read_idx(shared_path("mnist", "train-images-idx3-ubyte.gz"), CALIBRATION)
    calib = (train.astype(np.float32) / 255.0)[:, None]
    fault = negate_channel(model, "conv2.weight", 3)
    return {
        "float": MNIST_MODEL,
        "qdq": save(graphs.qdq_model(model, calib), work / "mnist_qdq.onnx"),
        "qop": save(graphs.qoperator_model(model, calib), work / "mnist_qop.onnx"),
        "qdq_full": save(graphs.qdq_model(model, calib, reduce_range=False),
                         work / "mnist_qdq_full.onnx"),
        "qop_full": save(graphs.qoperator_model(model, calib, reduce_range=False),
                         work / "mnist_qop_full.onnx"),
        "fp16_io": save(fp16_keep_io(model), work / "mnist_fp16_io.onnx"),
        "fp16": save(graphs.fp16_model(model), work / "mnist_fp16.onnx"),
        "fault": save(fault, work / "mnist_fault.onnx"),
        "fault_fp16": save(fp16_keep_io(fault), work / "mnist_fault_fp16.onnx"),
    }


def cpu_options(**kwargs: Any) -> audit_compare.CompareOptions:
    return audit_compare.CompareOptions(provider_a="cpu", provider_b="cpu", **kwargs)


@pytest.fixture(scope="module")
def results(models: dict[str, Path], data: Path) -> dict[str, audit_compare.CompareResult]:
    return {kind: audit_compare.compare_models(models["float"], models[kind], data, cpu_options())
            for kind in KINDS}


# -- independent reference ------------------------------------------------------------------
def ort_values(path: Path, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Run plain onnxruntime with ``names`` added as outputs by hand; int8 ones dequantized
    with the scale / zero point of the QLinear node that made them, float16 cast up."""
    model = onnx.load(path)
    for name in names:
        if name not in [o.name for o in model.graph.output]:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16 if session.get_inputs()[0].type == "tensor(float16)" else x.dtype)
    values = dict(zip(names, session.run(names, {model.graph.input[0].name: feed}), strict=True))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QLinearConv" and node.output[0] in values:
            scale, zero = inits[node.input[6]], inits[node.input[7]]
            raw = values[node.output[0]].astype(np.float32)
            values[node.output[0]] = (raw - zero.astype(np.float32)) * scale
    return {k: np.asarray(v, np.float32) for k, v in values.items()}


def model_input(pixels: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 by the model's documented recipe
    ``x = p * scale`` with scale = 1/255 in float32 (which differs from p / 255 by an ulp)."""
    x = pixels.astype(np.float32)[:, None] * np.float32(1.0 / 255.0)
    np.testing.assert_allclose(x, pixels[:, None] / 255.0, rtol=1e-7)
    return x


def numpy_metrics(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    err = np.sum((x - y) ** 2)
    cosine = np.dot(x, y) / math.sqrt(np.dot(x, x) * np.dot(y, y))
    snr = math.inf if err == 0 else 10 * math.log10(np.dot(x, x) / err)
    return float(cosine), snr, float(np.max(np.abs(x - y))), math.sqrt(err / np.dot(x, x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_against_reference(result: audit_compare.CompareResult, models: dict[str, Path],
                            kind: str, pixels: np.ndarray) -> None:
    x = model_input(pixels)
    ref_a = ort_values(models["float"], x, [lay.a for lay in result.layers])
    ref_b = ort_values(models[kind], x, [lay.b for lay in result.layers])
    for lay in result.layers:
        cosine, snr, max_abs, rel = numpy_metrics(ref_a[lay.a], ref_b[lay.b])
        d = lay.drift
        assert d.count == ref_a[lay.a].size
        assert d.cosine == pytest.approx(cosine, rel=1e-9), lay
        assert d.snr_db == pytest.approx(snr, abs=1e-6), lay
        assert d.max_abs == pytest.approx(max_abs, rel=1e-6), lay
        assert d.rel_l2 == pytest.approx(rel, rel=1e-6), lay
    (output,) = result.outputs
    pa, pb = softmax(ref_a[output.a]), softmax(ref_b[output.b])
    top = pa.argmax(axis=1)
    rows = np.arange(len(pa))
    assert output.agreement.count == IMAGES
    assert output.agreement.top1_agreement == pytest.approx(np.mean(top == pb.argmax(axis=1)))
    delta = np.abs(pa[rows, top] - pb[rows, top])
    assert output.agreement.mean_abs_dprob == pytest.approx(np.mean(delta), rel=1e-6, abs=1e-12)
    assert output.agreement.max_abs_dprob == pytest.approx(np.max(delta), rel=1e-6, abs=1e-12)


# -- the four deployment forms ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_conv_layer_is_matched_and_metrics_equal_numpy(
        kind: str, results: dict[str, audit_compare.CompareResult], models: dict[str, Path],
        test_pixels: np.ndarray) -> None:
    result = results[kind]
    assert [lay.layer for lay in result.layers if not lay.output] == ["conv1", "conv2"]
    assert not [u for u in result.unmatched if u.model == "a"]
    expected_how = {"qdq": "qdq", "qop": "qlinear", "fp16_io": "fp16", "fp16": "fp16"}[kind]
    assert {lay.how for lay in result.layers if not lay.output} == {expected_how}
    assert result.images == IMAGES and result.skipped == () and not result.partial
    assert result.passed, audit_output.format_compare(result)
    check_against_reference(result, models, kind, test_pixels)


def test_int8_rows_pair_the_fused_activation(results: dict[str, audit_compare.CompareResult]
                                             ) -> None:
    qdq, qop = results["qdq"], results["qop"]
    assert [(lay.a, lay.b) for lay in qdq.layers] == [
        ("relu1", "relu1_DequantizeLinear_Output"), ("relu2", "relu2_DequantizeLinear_Output"),
        ("logits", "logits")]
    assert [(lay.a, lay.b) for lay in qop.layers] == [
        ("relu1", "conv1_quantized"), ("relu2", "conv2_quantized"), ("logits", "logits")]
    assert [(lay.a, lay.b) for lay in results["fp16"].layers] == [
        ("conv1", "conv1"), ("conv2", "conv2"), ("logits", "logits")]
    assert qdq.thresholds == audit.Thresholds(0.98, 15.0, "int8")
    assert results["fp16"].thresholds == audit.Thresholds(0.999, 30.0, "fp16")
    assert (qdq.model_b.precision, results["fp16"].model_b.precision) == ("int8", "fp16")


def test_fp16_forms_with_and_without_float16_input(models: dict[str, Path]) -> None:
    elem = {kind: onnx.load(models[kind]).graph.input[0].type.tensor_type.elem_type
            for kind in ("fp16", "fp16_io")}
    assert elem == {"fp16": onnx.TensorProto.FLOAT16, "fp16_io": onnx.TensorProto.FLOAT}


def test_int8_snr_is_finite_and_below_fp16(results: dict[str, audit_compare.CompareResult]) -> None:
    for int8 in ("qdq", "qop"):
        for lay8, lay16 in zip(results[int8].layers, results["fp16_io"].layers, strict=True):
            assert math.isfinite(lay8.drift.snr_db)
            assert lay8.drift.snr_db < lay16.drift.snr_db - 10, (lay8, lay16)


# -- faults -------------------------------------------------------------------------------------
def test_planted_fault_is_first_divergent_at_its_layer(models: dict[str, Path],
                                                       data: Path) -> None:
    result = audit_compare.compare_models(models["float"], models["fault"], data, cpu_options())
    assert result.first_divergent == "conv2" and not result.passed
    conv1, conv2 = result.layers[0], result.layers[1]
    assert (conv1.drift.snr_db, conv1.drift.cosine, conv1.broken) == (math.inf, 1.0, None)
    assert conv2.broken is not None and conv2.drift.snr_db < 20
    assert "FAIL: first divergent tensor conv2 (layer conv2)" in audit_output.format_compare(result)


def test_fp16_thresholds_pass_drift_but_catch_a_fault(
        models: dict[str, Path], data: Path, results: dict[str, audit_compare.CompareResult]
) -> None:
    assert results["fp16_io"].passed  # plain fp16 rounding is acceptable drift
    faulty = audit_compare.compare_models(models["float"], models["fault_fp16"], data,
                                          cpu_options())
    assert faulty.thresholds.kind == "fp16"
    assert faulty.first_divergent == "conv2"
    assert faulty.layers[0].broken is None and 60 < faulty.layers[0].drift.snr_db < math.inf


def test_same_model_on_cpu_twice(models: dict[str, Path], data: Path) -> None:
    result = audit_compare.compare_models(models["float"], models["float"], data, cpu_options())
    assert result.passed and result.thresholds.kind == "fp32"
    for lay in result.layers:
        assert (lay.drift.snr_db, lay.drift.cosine, lay.drift.max_abs) == (math.inf, 1.0, 0.0)
    assert result.outputs[0].agreement.top1_agreement == 1.0
    assert result.model_a.providers == ("CPUExecutionProvider",)


@pytest.mark.gpu
def test_cpu_vs_cuda_passes_fp32_thresholds(models: dict[str, Path], data: Path) -> None:
    options = audit_compare.CompareOptions(provider_a="cpu", provider_b="cuda")
    result = audit_compare.compare_models(models["float"], models["float"], data, options)
    assert result.model_b.providers[0] == "CUDAExecutionProvider"
    assert result.passed, audit_output.format_compare(result)
    assert all(lay.drift.snr_db > 40 for lay in result.layers)


# -- options ------------------------------------------------------------------------------------
def test_layer_names_and_every_layer(models: dict[str, Path], data: Path) -> None:
    named = audit_compare.compare_models(models["float"], models["qdq"], data,
                                     cpu_options(layers=("pool1", "conv2")))
    assert [(lay.a, lay.layer) for lay in named.layers] == [
        ("pool1", "pool1"), ("relu2", "conv2"), ("logits", "fc2")]
    every = audit_compare.compare_models(models["float"], models["qdq"], data,
                                     cpu_options(layers="all"))
    assert [lay.a for lay in every.layers] == ["relu1", "pool1", "relu2", "pool2", "flatten",
                                               "relu3", "logits"]
    assert not any(lay.output for lay in every.layers)  # logits is one of "all"
    reasons = {u.tensor: u.reason for u in every.unmatched}
    assert set(reasons) == {"conv1", "conv2", "fc1"}
    assert "fuses the Relu after conv 'conv1'" in reasons["conv1"]
    with pytest.raises(LayerNotFoundError, match="model A: no layer or tensor named 'conv3'.*"
                                                 "close matches: conv2, conv1"):
        audit_compare.compare_models(models["float"], models["qdq"], data,
                                 cpu_options(layers=("conv3",)))


def test_thresholds_can_be_overridden(models: dict[str, Path], data: Path) -> None:
    strict = audit_compare.compare_models(models["float"], models["qdq"], data,
                                      cpu_options(min_snr_db=60.0))
    assert strict.thresholds == audit.Thresholds(0.98, 60.0, "int8+custom")
    assert strict.first_divergent == "relu1"
    with pytest.raises(InputError, match=r"min_cosine must be in \[-1, 1\], got 2"):
        audit_compare.compare_models(models["float"], models["qdq"], data,
                                     cpu_options(min_cosine=2))


def test_progress_and_interrupt(models: dict[str, Path], data: Path) -> None:
    seen: list[Progress] = []
    audit_compare.compare_models(models["float"], models["fp16"], data,
                             cpu_options(batch_size=64), progress=seen.append)
    assert [(p.done, p.total, p.unit) for p in seen] == [
        (64, IMAGES, "image"), (128, IMAGES, "image"), (192, IMAGES, "image"),
        (200, IMAGES, "image")]

    def interrupt(progress: Progress) -> None:
        if progress.done >= 64:
            raise KeyboardInterrupt

    partial = audit_compare.compare_models(models["float"], models["fp16"], data,
                                       cpu_options(batch_size=32), progress=interrupt)
    assert partial.partial and partial.images == 64
    assert partial.layers[0].drift.count == 64 * 16 * 28 * 28


def test_cli_interrupt_before_the_first_batch_exits_130(models: dict[str, Path], data: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_compare.api_data, "open_data", interrupted)
    out = tmp_path / "r.json"
    result = run("compare", models["float"], models["fp16"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--json", out)
    assert result.exit_code == 130, result.output
    assert "interrupted before any input was compared; nothing written" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert not out.exists()


def colour_pixels(image: Image.Image, rgb: tuple[int, int, int]) -> int:
    pixels = np.asarray(image, np.int16)
    return int(np.count_nonzero(np.abs(pixels - np.array(rgb)).max(axis=2) <= 8))


TAB_RED, TAB_GREEN, TAB_ORANGE = (214, 39, 40), (44, 160, 44), (255, 127, 14)


def test_plot_images(results: dict[str, audit_compare.CompareResult], models: dict[str, Path],
                     data: Path) -> None:
    for metric in audit_compare.METRICS:
        image = audit_plots.render_compare_plot(results["qdq"], metric)
        assert image.mode == "RGB" and image.width >= 640 and image.height == 480
    passing = audit_plots.render_compare_plot(results["qdq"], "snr")
    assert colour_pixels(passing, TAB_RED) > 100  # the dashed threshold line
    assert colour_pixels(passing, TAB_GREEN) == colour_pixels(passing, TAB_ORANGE) == 0
    fault = audit_compare.compare_models(models["float"], models["fault"], data,
                                     cpu_options(layers="all"))
    failing = audit_plots.render_compare_plot(fault, "snr")
    assert colour_pixels(failing, TAB_GREEN) > 50  # conv1, relu1, pool1: SNR = inf
    assert colour_pixels(failing, TAB_ORANGE) > 100  # first divergent line
    with pytest.raises(InputError, match="unknown metric 'psnr'; choose one of cosine, snr"):
        audit_plots.render_compare_plot(results["qdq"], "psnr")


# -- bad input ----------------------------------------------------------------------------------
def test_models_with_different_inputs(models: dict[str, Path], data: Path, work: Path) -> None:
    other = save(graphs.small_cnn(), work / "small_cnn.onnx")
    with pytest.raises(InputError, match=r"the models take different inputs: model A 'input' "
                                         r"float32 \['batch', 1, 28, 28\], model B 'x' float32 "
                                         r"\['N', 3, 16, 16\] \(layout NCHW/1 channels vs "
                                         r"NCHW/3 channels; height 28 vs 16; width 28 vs 16\)"):
        audit_compare.compare_models(models["float"], other, data, cpu_options())
    result = run("compare", models["float"], other, data, "--provider-a", "cpu",
                 "--provider-b", "cpu")
    assert result.exit_code == 1
    assert "Error: the models take different inputs" in result.output
    assert "Traceback" not in result.output


def test_mixed_sizes_and_unreadable_files(models: dict[str, Path], test_pixels: np.ndarray,
                                          tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(test_pixels[0]).save(folder / "a.png")
    Image.fromarray(test_pixels[1]).resize((40, 56)).save(folder / "sub" / "b.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = audit_compare.compare_models(models["float"], models["fp16_io"], folder, cpu_options())
    assert result.images == 2 and result.passed
    assert [s for s, _ in result.skipped] == [str(folder / "broken.png")]
    out = tmp_path / "r.json"
    cli = run("compare", models["float"], models["fp16_io"], folder, "--provider-a", "cpu",
              "--provider-b", "cpu", "--json", out)
    assert cli.exit_code == 0, cli.output
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["skipped"][0]["source"].endswith("broken.png")
    assert "2 inputs (1 skipped)" in cli.output


def test_empty_data_folder(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("compare", models["float"], models["qdq"], tmp_path / "empty")
    assert result.exit_code == 1
    assert "Error:" in result.output and "empty" in result.output
    assert "Traceback" not in result.output


# -- command line -------------------------------------------------------------------------------
def test_cli_same_model_exit_0_json_and_plot(models: dict[str, Path], data: Path,
                                             tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "plots" / "snr.png"
    result = run("compare", models["float"], models["float"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--json", out_json, "--plot", out_png)
    assert result.exit_code == 0, result.output
    report = strict_json(out_json.read_text())
    assert report["first_divergent"] is None and report["passed"] is True
    assert [row["a"] for row in report["layers"]] == ["conv1", "conv2", "logits"]
    for row in report["layers"]:
        assert {"a", "b", "cosine", "snr_db", "max_abs", "rel_l2"} <= set(row)
        assert (row["snr_db"], row["cosine"], row["max_abs"], row["rel_l2"]) == ("inf", 1.0,
                                                                                  0.0, 0.0)
    assert report["outputs"] == [{"a": "logits", "b": "logits", "top1_agreement": 1.0,
                                  "mean_abs_dprob": 0.0, "max_abs_dprob": 0.0, "count": IMAGES}]
    assert report["unmatched"] == [] and report["images"] == IMAGES
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.mode == "RGB"
    assert "PASS: all 3 compared tensors are within the thresholds" in result.output
    assert str(out_json) in result.output and str(out_png) in result.output


def test_cli_fault_exit_1_with_out_folder(models: dict[str, Path], data: Path,
                                          tmp_path: Path) -> None:
    result = run("compare", models["float"], models["fault"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--out", tmp_path / "o", "--metric", "cosine",
                 "--layers", "all")
    assert result.exit_code == 1, result.output
    report = strict_json((tmp_path / "o" / "compare.json").read_text())
    assert report["first_divergent"] == "conv2" and report["passed"] is False
    assert report["layers"][0]["snr_db"] == "inf"
    assert (tmp_path / "o" / "compare_cosine.png").is_file()
    assert "FAIL: first divergent tensor conv2 (layer conv2)" in result.output


def test_cli_json_to_stdout_and_thresholds(models: dict[str, Path], data: Path) -> None:
    ok = run("compare", models["float"], models["qdq"], data, "--provider-a", "cpu",
             "--provider-b", "cpu", "--json", "-")
    assert ok.exit_code == 0, ok.output
    report = strict_json(ok.stdout)
    assert report["thresholds"] == {"kind": "int8", "min_cosine": 0.98, "min_snr_db": 15.0}
    assert all(isinstance(row["snr_db"], float) for row in report["layers"])
    strict = run("compare", models["float"], models["qdq"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--min-snr", "60", "--min-cosine", "0.5")
    assert strict.exit_code == 1
    assert "thresholds (int8+custom): cosine >= 0.5, SNR >= 60 dB" in strict.output
    bad = run("compare", models["float"], models["qdq"], data, "--min-cosine", "1.5")
    assert bad.exit_code == 2 and "1.5 is not in the range" in bad.output


def test_cli_layer_names_with_close_matches(models: dict[str, Path], data: Path) -> None:
    result = run("compare", models["float"], models["qdq"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--layers", "pool1,conv2", "--layers", "relu3")
    assert result.exit_code == 0, result.output
    assert "relu3_DequantizeLinear_Output" in result.output
    wrong = run("compare", models["float"], models["qdq"], data, "--layers", "conv_2")
    assert wrong.exit_code == 1
    assert "Error: model A: no layer or tensor named 'conv_2'" in wrong.output
    assert "close matches: conv2" in wrong.output


def test_cli_unwritable_outputs_write_nothing(models: dict[str, Path], data: Path,
                                              tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    plot = tmp_path / "plot.png"
    result = run("compare", models["float"], models["qdq"], data, "--json",
                 blocker / "r.json", "--plot", plot)
    assert result.exit_code == 1
    assert f"Error: cannot write {blocker / 'r.json'}: {blocker} is a file" in result.output
    assert "Traceback" not in result.output and not plot.exists()
    folder = tmp_path / "folder.png"
    folder.mkdir()
    result = run("compare", models["float"], models["qdq"], data, "--plot", folder)
    assert result.exit_code == 1 and "it is a folder" in result.output
    result = run("compare", models["float"], models["qdq"], data, "--json",
                 tmp_path / "r.json", "--plot", tmp_path / "plot.svgz")
    assert result.exit_code == 1 and "cannot tell the image format of" in result.output
    assert "compare [" not in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder.png"]


def test_cli_interrupt_writes_partial_result(models: dict[str, Path], data: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setattr(cli_audit, "progress_bar", interrupting_bar(64))
    out = tmp_path / "partial.json"
    result = run("compare", models["float"], models["fp16"], data, "--provider-a", "cpu",
                 "--provider-b", "cpu", "--json", out)
    assert result.exit_code == cli_audit.EXIT_INTERRUPTED == 130
    report = strict_json(out.read_text())
    assert report["partial"] is True and report["images"] == 64
    assert "INTERRUPTED, partial result" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["partial.json"]  # no temp file left


def test_qoperator_all_layers_pairs_int8_pools_flatten_and_qgemm(
        models: dict[str, Path], data: Path, test_pixels: np.ndarray) -> None:
    """QOperator runs MaxPool/Flatten on int8 and fuses fc1's Relu into a QGemm: every A
    activation is paired with B's ``*_quantized`` tensor, dequantized with the scale of the
    QLinearConv / QGemm that made it, and the metrics equal numpy on plain onnxruntime runs."""
    result = audit_compare.compare_models(models["float"], models["qop"], data,
                                      cpu_options(layers="all"))
    assert [(lay.a, lay.b, lay.how) for lay in result.layers] == [
        ("relu1", "conv1_quantized", "qlinear"), ("pool1", "pool1_quantized", "qlinear"),
        ("relu2", "conv2_quantized", "qlinear"), ("pool2", "pool2_quantized", "qlinear"),
        ("flatten", "flatten_quantized", "qlinear"), ("relu3", "fc1_quantized", "qlinear"),
        ("logits", "logits", "name")]
    assert "QGemm" in result.layers[5].note and "Relu" in result.layers[5].note
    assert {u.tensor for u in result.unmatched} == {"conv1", "conv2", "fc1"}
    assert all("fuses the Relu" in u.reason for u in result.unmatched)
    assert result.passed, audit_output.format_compare(result)

    model_b = onnx.load(models["qop"])
    makers = {o: n for n in model_b.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model_b.graph.initializer}
    slots = {"QLinearConv": (6, 7), "QGemm": (7, 8)}
    x = model_input(test_pixels)
    ref_a = ort_values(models["float"], x, [lay.a for lay in result.layers])
    names_b = [lay.b for lay in result.layers]
    raw_b = dict(zip(names_b, ort.InferenceSession(
        _with_outputs(model_b, names_b), providers=["CPUExecutionProvider"]).run(
        names_b, {"input": x}), strict=True))
    for lay in result.layers:
        value = raw_b[lay.b].astype(np.float64)
        node = makers[lay.b]
        while node.op_type in ("MaxPool", "Flatten"):  # int8 moved on with its producer's scale
            node = makers[node.input[0]]
        if node.op_type in slots:
            scale, zero = (inits[node.input[i]] for i in slots[node.op_type])
            value = (value - zero.astype(np.float64)) * scale
        cosine, snr, max_abs, _ = numpy_metrics(ref_a[lay.a], value)
        assert lay.drift.cosine == pytest.approx(cosine, rel=1e-9), lay
        assert lay.drift.snr_db == pytest.approx(snr, abs=1e-5), lay
        assert lay.drift.max_abs == pytest.approx(max_abs, rel=1e-5), lay


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        if name not in [o.name for o in copy.graph.output]:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy.SerializeToString()


# ----------------------------------------------------------------------------- int8 on non-VNNI
def full_range_int8(path: Path) -> list[str]:
    """Independent reference: int8 initializers with some |value| > 64, read with numpy."""
    model = onnx.load(path)
    return [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
            and np.abs(numpy_helper.to_array(t).astype(np.int32)).max() > 64]


@pytest.mark.parametrize("kind", ["qdq_full", "qop_full"])
def test_full_range_int8_weights_are_found(models: dict[str, Path], kind: str) -> None:
    expected = full_range_int8(models[kind])
    assert len(expected) == 4  # conv1, conv2, fc1, fc2 weights use the whole int8 range
    assert list(matching.int8_saturating_weights(onnx.load(models[kind]))) == expected
    reduced = kind.removesuffix("_full")
    assert full_range_int8(models[reduced]) == []  # reduce_range: 7-bit weights
    assert matching.int8_saturating_weights(onnx.load(models[reduced])) == ()
    assert matching.int8_saturating_weights(onnx.load(models["float"])) == ()


def test_int8_note_without_vnni_in_table_and_json(models: dict[str, Path], data: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without VNNI, full-range int8 weights get a note naming the fix; 7-bit
    (reduce_range) weights and CPUs with VNNI get none."""
    monkeypatch.setattr(runtime, "cpu_has_vnni", lambda: False)
    result = audit_compare.compare_models(models["float"], models["qdq_full"], data,
                                      cpu_options(layers=("relu1",)))
    assert len(result.notes) == 1
    note = result.notes[0]
    assert note.startswith("model B (mnist_qdq_full.onnx): 4 int8 weight tensor(s)")
    assert "no VNNI" in note and "reduce_range=True" in note
    assert audit_output.compare_to_json(result)["notes"] == [note]
    assert f"note: {note}" in audit_output.format_compare(result).splitlines()
    quiet = audit_compare.compare_models(models["float"], models["qdq"], data,
                                     cpu_options(layers=("relu1",)))
    assert quiet.notes == () and audit_output.compare_to_json(quiet)["notes"] == []
    monkeypatch.setattr(runtime, "cpu_has_vnni", lambda: True)
    assert audit_compare.compare_models(models["float"], models["qop_full"], data,
                                    cpu_options(layers=("relu1",))).notes == ()


def test_cli_prints_the_int8_note(models: dict[str, Path], data: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_vnni", lambda: False)
    result = run("compare", models["float"], models["qop_full"], data,
                 "--provider-a", "cpu", "--provider-b", "cpu", "--layers", "relu1")
    notes = [line for line in result.output.splitlines() if line.startswith("note: model B")]
    assert len(notes) == 1 and "quantize with reduce_range=True" in notes[0]


def test_cpu_has_vnni_agrees_with_proc_cpuinfo() -> None:
    """The CPUID probe agrees with the kernel's flags (Linux x86-64 only)."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.is_file():
        pytest.skip("needs Linux on x86-64 (/proc/cpuinfo flags)")
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("flags"))
    expected = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    assert runtime.cpu_has_vnni() is expected
