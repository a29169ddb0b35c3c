"""dataset_stats and ``featviz stats``: statistics merged over batches against float64 numpy on
tensors captured independently (plain onnxruntime), planted dead / saturated / NaN channels, the
JSON and plot, exit codes, interrupted and unwritable runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnx_featviz import api
from onnx_featviz.audit import compare as audit_compare
from onnx_featviz.audit import metrics as audit
from onnx_featviz.audit import plots as audit_plots
from onnx_featviz.audit import stats as audit_stats
from onnx_featviz.cli import audit as cli_audit
from onnx_featviz.errors import InputError, LayerNotFoundError
from onnx_featviz.io import external as model_files
from onnx_featviz.structs import ChannelStats, Progress
from tests import graphs
from tests.conftest import MODELS, interrupting_bar, run, shared_path, strict_json

CPU = audit_stats.StatsOptions(provider="cpu")


def captured(model: onnx.ModelProto, x: np.ndarray, tensors: list[str]
             ) -> dict[str, np.ndarray]:
    """Reference: plain onnxruntime with ``tensors`` added as outputs by hand (no rewrite)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in tensors:
        copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(tensors, {session.get_inputs()[0].name: x})
    return dict(zip(tensors, values, strict=True))


def numpy_stats(value: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics over every sample and position at once, in float64."""
    x = np.moveaxis(np.asarray(value, np.float64), 1, 0).reshape(value.shape[1], -1)
    return {"mean": x.mean(axis=1), "std": x.std(axis=1), "min": x.min(axis=1),
            "max": x.max(axis=1), "zeros": (x == 0).mean(axis=1),
            "nonfinite": (~np.isfinite(x)).sum(axis=1)}


def assert_equal_to_numpy(found: ChannelStats, value: np.ndarray, rtol: float = 1e-6) -> None:
    ref = numpy_stats(value)
    assert found.count == value.size // value.shape[1]
    scale = float(np.abs(value).max())
    for name in ("mean", "std", "min", "max", "zeros"):
        got = getattr(found, name)
        # relative to the value and, for values near 0 (a mean of 1e-3 is summed from
        # values of order 1 in float32), relative to the tensor's largest magnitude
        np.testing.assert_allclose(got, ref[name], rtol=rtol, atol=rtol * scale,
                                   err_msg=name)
    np.testing.assert_array_equal(found.nonfinite, ref["nonfinite"])


def save_batch(path: Path, x: np.ndarray) -> Path:
    np.save(path, x)
    return path


# -- statistics against numpy ----------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [3, 64])
def test_merged_batches_equal_numpy_over_the_whole_set(tmp_path: Path, batch_size: int) -> None:
    model = graphs.small_cnn()
    x = np.random.default_rng(0).standard_normal((10, 3, 16, 16)).astype(np.float32)
    options = audit_stats.StatsOptions(layers="all", provider="cpu", batch_size=batch_size)
    result = audit_stats.dataset_stats(model, save_batch(tmp_path / "x.npy", x), options)
    tensors = [lay.tensor for lay in result.layers]
    assert tensors == ["c1", "r1", "p1", "c2", "r2", "g", "f", "logits"]  # graph order
    reference = captured(model, x, tensors)
    for lay in result.layers:
        assert_equal_to_numpy(lay.stats, reference[lay.tensor])
    assert result.images == 10 and not result.partial and result.first_nonfinite is None
    assert result.layers[1].op == "Relu" and result.layers[1].dead == ()


def test_large_mean_small_spread_stays_exact(tmp_path: Path) -> None:
    """Channels at +-1000 (and 500) with spreads of 1e-2: shifted sums keep the variance."""
    model = graphs.offset_conv(1000.0)
    x = np.random.default_rng(1).standard_normal((13, 2, 5, 5)).astype(np.float32)
    options = audit_stats.StatsOptions(layers=["c", "y"], provider="cpu", batch_size=4)
    result = audit_stats.dataset_stats(model, save_batch(tmp_path / "x.npy", x), options)
    reference = captured(model, x, ["c", "y"])
    conv = result.layers[0].stats
    assert np.all(np.abs(conv.mean) > 400) and np.all(conv.std < 0.1)
    assert_equal_to_numpy(conv, reference["c"])
    assert_equal_to_numpy(result.layers[1].stats, reference["y"])
    assert result.layers[1].dead == (1,)  # Relu of a channel at -1000


def test_merge_is_order_free_and_exact_in_float64() -> None:
    """audit.merge_channel_stats of two halves equals the statistics of the union."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 4, 50)) + 7, rng.standard_normal((5, 4, 50)) * 3

    def stats(v: np.ndarray) -> ChannelStats:
        flat = np.moveaxis(v, 1, 0).reshape(4, -1)
        return ChannelStats(flat.shape[1], flat.mean(1), flat.var(1), flat.min(1), flat.max(1),
                            (flat == 0).mean(1), np.zeros(4, np.int64), flat.mean(1) * 0,
                            None)

    whole = stats(np.concatenate([a, b]))
    for merged in (audit.merge_channel_stats(stats(a), stats(b)),
                   audit.merge_channel_stats(stats(b), stats(a))):
        assert merged.count == whole.count == 8 * 50
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(merged.var, whole.var, rtol=1e-12)
        np.testing.assert_array_equal(merged.min, whole.min)
        np.testing.assert_array_equal(merged.max, whole.max)
        assert merged.at_low is not None and merged.at_high is None


# -- findings ------------------------------------------------------------------------------------
def test_zeroed_conv_channel_is_dead(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(np.float32)
    result = audit_stats.dataset_stats(graphs.conv_relu_dead_channel(1),
                                     save_batch(tmp_path / "x.npy", x), CPU)
    assert [lay.tensor for lay in result.layers] == ["r1", "r2"]  # the convs' activations
    relu1 = result.layers[0]
    assert relu1.dead == (1,) and relu1.op == "Relu"
    assert relu1.stats.max[1] == 0.0 and relu1.stats.zeros[1] == 1.0
    assert result.findings()["dead"] >= 1
    conv_only = audit_stats.dataset_stats(graphs.conv_relu_dead_channel(1), tmp_path / "x.npy",
                                        audit_stats.StatsOptions(layers=["c1"], provider="cpu"))
    assert conv_only.layers[0].dead == ()  # a conv output is not a ReLU-family activation


def test_relu6_channel_pushed_to_the_bound_is_saturated(tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((5, 3, 8, 8)).astype(np.float32)
    result = audit_stats.dataset_stats(graphs.conv_relu6_saturated(),
                                     save_batch(tmp_path / "x.npy", x), CPU)
    (lay,) = result.layers
    assert lay.tensor == "y" and lay.op == "Clip" and lay.bounds == (0.0, 6.0)
    assert lay.saturated == (2,) and lay.dead == ()
    y = captured(graphs.conv_relu6_saturated(), x, ["y"])["y"]
    assert lay.stats.at_high is not None and lay.stats.at_low is not None
    np.testing.assert_allclose(lay.stats.at_high, (y == 6).mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(lay.stats.at_low, (y == 0).mean(axis=(0, 2, 3)), atol=1e-12)


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_lower_bound_other_than_zero_counts(tmp_path: Path, opset: int) -> None:
    x = np.random.default_rng(5).standard_normal((4, 1, 6, 6)).astype(np.float32)
    result = audit_stats.dataset_stats(graphs.conv_clip_channels(opset),
                                     save_batch(tmp_path / "x.npy", x), CPU)
    (lay,) = result.layers
    assert lay.bounds == (-1.0, 6.0) and lay.saturated == (1, 2)
    assert lay.stats.at_low is not None and lay.stats.at_low[2] == 1.0
    strict = audit_stats.dataset_stats(graphs.conv_clip_channels(opset), tmp_path / "x.npy",
                                     audit_stats.StatsOptions(provider="cpu", saturation=1.0))
    assert strict.layers[0].saturated == ()  # "more than all values" never happens


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_planted_nan_names_the_first_non_finite_layer(tmp_path: Path) -> None:
    x = np.random.default_rng(6).standard_normal((5, 1, 6, 6)).astype(np.float32)
    options = audit_stats.StatsOptions(layers="all", provider="cpu", batch_size=2)
    result = audit_stats.dataset_stats(graphs.log_of_negative(),
                                     save_batch(tmp_path / "x.npy", x), options)
    by_name = {lay.tensor: lay for lay in result.layers}
    assert list(by_name) == ["c1", "l", "c2", "y"]
    assert result.first_nonfinite == "l"
    reference = captured(graphs.log_of_negative(), x, ["c1", "l", "c2"])
    for name in ("l", "c2"):
        np.testing.assert_array_equal(by_name[name].stats.nonfinite,
                                      numpy_stats(reference[name])["nonfinite"])
    assert by_name["l"].nonfinite == 5 * 16 and by_name["c1"].nonfinite == 0
    assert_equal_to_numpy(by_name["c1"].stats, reference["c1"])
    assert result.findings()["nonfinite"] >= 2


# -- options and errors ---------------------------------------------------------------------------
def test_layer_names_and_bad_options(tmp_path: Path) -> None:
    x = np.random.default_rng(7).standard_normal((2, 3, 16, 16)).astype(np.float32)
    data = save_batch(tmp_path / "x.npy", x)
    named = audit_stats.dataset_stats(graphs.small_cnn(), data,
                                    audit_stats.StatsOptions(layers=["r2", "conv1"],
                                                           provider="cpu"))
    assert [lay.tensor for lay in named.layers] == ["r1", "r2"]  # conv node -> activation
    with pytest.raises(LayerNotFoundError, match="close matches: conv2"):
        audit_stats.dataset_stats(graphs.small_cnn(), data,
                                audit_stats.StatsOptions(layers=["conv_2"], provider="cpu"))
    with pytest.raises(InputError, match="saturation must be a share"):
        audit_stats.dataset_stats(graphs.small_cnn(), data,
                                audit_stats.StatsOptions(provider="cpu", saturation=0.0))
    with pytest.raises(InputError, match="no conv layers"):
        audit_stats.dataset_stats(graphs.relu_probe(13), data, CPU)


def test_progress_reports_images_with_total(tmp_path: Path) -> None:
    x = np.random.default_rng(8).standard_normal((7, 3, 16, 16)).astype(np.float32)
    seen: list[Progress] = []
    audit_stats.dataset_stats(graphs.small_cnn(), save_batch(tmp_path / "x.npy", x),
                            audit_stats.StatsOptions(provider="cpu", batch_size=3),
                            progress=seen.append)
    assert [(p.done, p.total, p.unit) for p in seen] == [(3, 7, "image"), (6, 7, "image"),
                                                          (7, 7, "image")]


def test_plot_has_one_panel_per_layer(tmp_path: Path) -> None:
    x = np.random.default_rng(9).standard_normal((4, 3, 8, 8)).astype(np.float32)
    result = audit_stats.dataset_stats(graphs.conv_relu_dead_channel(1),
                                     save_batch(tmp_path / "x.npy", x), CPU)
    image = audit_plots.render_stats_plot(result)
    assert image.mode == "RGB" and image.width == 900
    assert image.height > 2 * 100  # two panels
    with pytest.raises(InputError, match="no measured tensors"):
        audit_plots.render_stats_plot(audit_stats.StatsResult("m", (), (), 0, (), False, None))


# -- command line -------------------------------------------------------------------------------
@pytest.fixture
def dead_model(tmp_path: Path) -> Path:
    path = tmp_path / "dead.onnx"
    model_files.save_model(graphs.conv_relu_dead_channel(1), path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A nested folder of 5 PNGs of mixed sizes plus one corrupt PNG."""
    rng = np.random.default_rng(10)
    for i, (w, h) in enumerate([(8, 8), (20, 11), (9, 30), (64, 64), (8, 8)]):
        folder = tmp_path / "images" / ("sub" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "images" / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return tmp_path / "images"


def test_cli_json_plot_and_fail_on(dead_model: Path, images: Path, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "o" / "stats.json", tmp_path / "o" / "stats.png"
    result = run("stats", dead_model, images, "--provider", "cpu", "--json", out_json,
                 "--plot", out_png, "--batch", "2")
    assert result.exit_code == 0, result.output
    report = strict_json(out_json.read_text())
    assert report["images"] == 5 and report["partial"] is False
    assert [s["source"] for s in report["skipped"]] == [str(images / "sub" / "corrupt.png")]
    assert list(report["layers"]) == ["r1", "r2"]
    relu1 = report["layers"]["r1"]
    for key in ("mean", "std", "min", "max", "zeros", "nonfinite_channels"):
        assert len(relu1[key]) == relu1["channels"] == 4, key
    assert relu1["dead"] == [1] and relu1["saturated"] == [] and relu1["nonfinite"] == 0
    assert relu1["zeros"][1] == 1.0 and relu1["max"][1] == 0.0  # exact over 3 batches
    assert relu1["count"] == 5 * 8 * 8 and relu1["op"] == "Relu"
    assert report["findings"]["dead"] >= 1 and report["first_nonfinite"] is None
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.mode == "RGB"
    assert "dead: r1 (Relu) channels [1] (1)" in result.output
    assert str(out_json) in result.output and str(out_png) in result.output
    gated = run("stats", dead_model, images, "--provider", "cpu", "--fail-on", "dead")
    assert gated.exit_code == 1  # a finding, not an error:
    assert not any(line.startswith("Error:") for line in gated.output.splitlines())
    assert "5 inputs (1 skipped)" in gated.output
    passing = run("stats", dead_model, images, "--provider", "cpu", "--fail-on",
                  "saturated,nonfinite")
    assert passing.exit_code == 0, passing.output
    bad = run("stats", dead_model, images, "--fail-on", "dead,zombie")
    assert bad.exit_code == 2 and "unknown finding zombie" in bad.output


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_cli_nonfinite_json_to_stdout(tmp_path: Path) -> None:
    model = tmp_path / "nan.onnx"
    model_files.save_model(graphs.log_of_negative(), model)
    data = save_batch(tmp_path / "x.npy",
                      np.random.default_rng(11).random((3, 1, 6, 6), np.float32))
    result = run("stats", model, data, "--provider", "cpu", "--layers", "all", "--json", "-",
                 "--fail-on", "nonfinite")
    assert result.exit_code == 1
    report = strict_json(result.stdout)
    assert report["first_nonfinite"] == "l" and report["layers"]["l"]["nonfinite"] == 48
    assert report["layers"]["l"]["mean"][0] is None  # NaN is null in JSON


def test_cli_interrupt_writes_partial_result(dead_model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_audit, "progress_bar", interrupting_bar(6))  # after 2 batches of 3
    x = np.random.default_rng(12).standard_normal((20, 3, 8, 8)).astype(np.float32)
    data = save_batch(tmp_path / "x.npy", x)
    out = tmp_path / "out" / "partial.json"
    result = run("stats", dead_model, data, "--provider", "cpu", "--batch", "3", "--json", out)
    assert result.exit_code == cli_audit.EXIT_INTERRUPTED == 130
    report = strict_json(out.read_text())
    assert report["partial"] is True and report["images"] == 6
    assert report["layers"]["r1"]["count"] == 6 * 8 * 8
    assert "INTERRUPTED, partial result" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["partial.json"]  # no temp file left


def test_cli_interrupt_before_the_first_batch_exits_130(dead_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C before any input was measured: nothing to write, still exit 130 in one line."""
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_compare.api_data, "open_data", interrupted)
    data = save_batch(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    out = tmp_path / "out.json"
    result = run("stats", dead_model, data, "--provider", "cpu", "--json", out)
    assert result.exit_code == 130, result.output
    assert "interrupted before any input was measured; nothing written" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_interrupt_between_two_layers_keeps_the_batches_consistent(
        dead_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C after one layer of a batch was merged but not the next: the partial result
    must not count that batch for one layer only (``images`` covers every layer)."""
    x = np.random.default_rng(13).standard_normal((20, 3, 8, 8)).astype(np.float32)
    data = save_batch(tmp_path / "x.npy", x)
    merge = audit.merge_channel_stats
    calls = []

    def interrupted_merge(a: ChannelStats, b: ChannelStats) -> ChannelStats:
        calls.append(1)
        if len(calls) == 4:  # batch 3: r1 merged (call 3), Ctrl-C before r2
            raise KeyboardInterrupt
        return merge(a, b)

    monkeypatch.setattr(audit, "merge_channel_stats", interrupted_merge)
    result = audit_stats.dataset_stats(dead_model, data,
                                     audit_stats.StatsOptions(provider="cpu", batch_size=3))
    assert result.partial and result.images == 6
    assert [lay.stats.count for lay in result.layers] == [6 * 8 * 8, 6 * 8 * 8]
    monkeypatch.setattr(audit, "merge_channel_stats", merge)
    reference = captured(onnx.load(dead_model), x[:6], ["r1", "r2"])
    for lay in result.layers:
        assert_equal_to_numpy(lay.stats, reference[lay.tensor])


def test_cli_unwritable_output_and_empty_folder(dead_model: Path, images: Path,
                                                tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    plot = tmp_path / "plot.png"
    result = run("stats", dead_model, images, "--provider", "cpu", "--json",
                 blocker / "s.json", "--plot", plot)
    assert result.exit_code == 1
    assert f"Error: cannot write {blocker / 's.json'}: {blocker} is a file" in result.output
    assert "Traceback" not in result.output and not plot.exists()
    kept = tmp_path / "kept.json"
    result = run("stats", dead_model, images, "--provider", "cpu", "--json", kept, "--plot",
                 tmp_path / "plot.xyz")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot tell the image format of" in result.output and "use one of .png" in result.output
    assert "stats [" not in result.output  # refused before the run
    assert not kept.exists()
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # like /dev/stdout: the atomic rename would replace the node by a file
    result = run("stats", dead_model, images, "--provider", "cpu", "--json", fifo)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot write {fifo}: it is not a regular file" in result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    fifo.unlink()
    (tmp_path / "empty").mkdir()
    empty = run("stats", dead_model, tmp_path / "empty", "--provider", "cpu")
    assert empty.exit_code == 1 and "Traceback" not in empty.output
    assert "holds no images; add files ending in .png" in empty.output


@pytest.mark.slow
def test_cli_mnist_t10k_counts_every_image(tmp_path: Path) -> None:
    data = shared_path("mnist", "t10k-images-idx3-ubyte.gz")
    out = tmp_path / "mnist.json"
    result = run("stats", MODELS / "mnist_cnn.onnx", data, "--provider", "cpu", "--batch",
                 "500", "--json", out)
    assert result.exit_code == 0, result.output
    report = strict_json(out.read_text())
    assert report["images"] == 10000 and report["skipped"] == []
    assert list(report["layers"]) == ["relu1", "relu2"]
    assert report["layers"]["relu1"]["count"] == 10000 * 28 * 28


@pytest.mark.slow
def test_mnist_stats_equal_numpy_on_a_slice(tmp_path: Path) -> None:
    """The shipped model on 300 real digits (uint8 .npy, preprocessed like images)."""
    import gzip

    raw = gzip.decompress(shared_path("mnist", "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:300]
    data = save_batch(tmp_path / "digits.npy", digits)
    model = onnx.load(MODELS / "mnist_cnn.onnx")
    options = audit_stats.StatsOptions(layers=["conv1", "relu1", "conv2", "relu2"],
                                     provider="cpu", batch_size=64)
    result = audit_stats.dataset_stats(model, data, options)
    x = (digits[:, None] / np.float32(255)).astype(np.float32)
    reference = captured(model, x, [lay.tensor for lay in result.layers])
    for lay in result.layers:
        assert_equal_to_numpy(lay.stats, reference[lay.tensor])
    with api.Inspector(model, "cpu") as inspector:  # Inspector.stats agrees on one batch
        one = inspector.stats(x[:64], ["relu1"], stage="conv")["relu1"]
    assert_equal_to_numpy(one, reference["relu1"][:64])
