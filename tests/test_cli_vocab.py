"""Tests for the shared option vocabulary: ``--layer``/``--layers`` on every verb, ``--channel``
indices and ranges (with the old ``--channels``), and backprop's ``--labels``, ``--layer``,
``--json``, ``--save-npz`` and ``--explain-top``; checked against hand-written expectations and
direct onnxruntime runs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from onnx_featviz.cli.commands import main
from tests.conftest import run

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "models" / "mnist_cnn.onnx"
DIGIT9 = REPO / "models" / "samples" / "digit_9.png"
DIGIT7 = REPO / "models" / "samples" / "digit_7.png"


def parsed(verb: str, *args: str) -> dict[str, object]:
    """The parameters click gives ``verb`` for ``args`` (parsing only, nothing runs)."""
    command = main.commands[verb]
    assert isinstance(command, click.Command)
    with command.make_context(verb, list(args)) as context:
        return dict(context.params)


@pytest.mark.parametrize("verb, extra", [
    ("filters", ["M"]), ("maps", ["M", "I"]), ("cam", ["M", "I"]), ("backprop", ["M", "I"]),
    ("invert", ["M", "I"]), ("report", ["M", "I"]), ("maximize", ["M"]),
    ("compare", ["A", "B", "D"]), ("stats", ["M", "D"])])
def test_layer_and_layers_alias_on_every_verb(verb: str, extra: list[str]) -> None:
    """``--layer`` repeats and ``--layers`` is the same option, on every verb that takes one."""
    both = parsed(verb, *extra, "--layer", "conv1", "--layers", "conv2")
    assert both["layers"] == ("conv1", "conv2")
    assert parsed(verb, *extra, "--layers", "conv2")["layers"] == ("conv2",)


def mnist_logits(*images: Path) -> np.ndarray:
    """Logits of MNIST for ``images`` by a direct onnxruntime run (unit-scaled grey pixels)."""
    session = ort.InferenceSession(str(MNIST), providers=["CPUExecutionProvider"])
    batch = np.stack([np.asarray(Image.open(p).convert("L"), np.float32)[None] / 255.0
                      for p in images])
    out = session.run(None, {session.get_inputs()[0].name: batch})[0]
    return np.asarray(out)


def test_maps_channel_items_name_files_and_titles(tmp_path: Path) -> None:
    """Indices, ranges and comma lists combine in order; each spelling writes its own file."""
    names = {}
    for spec in (["--channel", "5"], ["--channel", "0:4"], ["--channel", "2,6"],
                 ["--channel", "5", "--channel", "0:2", "--channel", "1,7"]):
        result = run("maps", MNIST, DIGIT9, "--layer", "relu1", *spec, "--out", tmp_path,
                     "--preset", "mnist", "--json")
        assert result.exit_code == 0, result.output
        pngs = [p for p in json.loads(result.stdout)["written"] if p.endswith(".png")]
        assert len(pngs) == 1
        names[" ".join(spec)] = Path(pngs[0]).name
    assert names == {"--channel 5": "relu1_ch5.png", "--channel 0:4": "relu1_ch0-4.png",
                     "--channel 2,6": "relu1_ch2+6.png",
                     "--channel 5 --channel 0:2 --channel 1,7": "relu1_ch5+0-2+1+7.png"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len({Path(f["file"]).name for f in manifest["files"]}) == 4  # none replaced
    (entry,) = [f for f in manifest["files"] if f["file"] == "digit_9/relu1_ch5+0-2+1+7.png"]
    # channel 1 is drawn once, the items are listed as given
    assert entry["title"] == "relu1  channels 5, 0..1, 1, 7 of 16"
    assert entry["shows"].startswith("4 channels of relu1")


def test_old_channels_spelling_works_with_one_notice_after_success(tmp_path: Path) -> None:
    result = run("maps", MNIST, DIGIT9, "--layer", "relu1", "--channels", "0:4", "--out",
                 tmp_path / "a", "--preset", "mnist")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "digit_9" / "relu1_ch0-4.png").is_file()
    notices = [line for line in result.output.splitlines() if "deprecated" in line]
    assert notices == ["featviz: --channels is deprecated; use --channel 0:4 (repeatable; "
                       "indices, ranges and comma lists)"]
    assert result.output.strip().splitlines()[-1] == notices[0]
    failed = run("maps", MNIST, DIGIT9, "--layer", "relu1", "--channels", "0:99", "--out",
                 tmp_path / "b", "--preset", "mnist")
    assert failed.exit_code == 1 and "deprecated" not in failed.output
    assert "0:99" in failed.output and "16 channels" in failed.output


@pytest.mark.parametrize("bad", ["3:1", "x", "-2", "1:2:3", "4:4"])
def test_bad_channel_values_exit_2(tmp_path: Path, bad: str) -> None:
    for verb, args in (("maps", [MNIST, DIGIT9]), ("maximize", [MNIST, "--layer", "conv1"])):
        result = run(verb, *args, "--channel", bad, "--out", tmp_path)
        assert result.exit_code == 2, result.output
        assert "is not a channel or channel range" in result.output
    assert not any(tmp_path.iterdir())


def test_maximize_runs_each_layer_with_channel_ranges(tmp_path: Path) -> None:
    result = run("maximize", MNIST, "--layer", "conv1", "--layers", "conv2", "--channel",
                 "0:2,5", "--steps", "2", "--out", tmp_path / "out", "--save-npz",
                 tmp_path / "m.npz", "--json", "--preset", "mnist")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert [entry["tensor"] for entry in record["layers"]] == ["conv1", "conv2"]
    assert all(entry["units"] == [0, 1, 5] for entry in record["layers"])
    for tensor in ("conv1", "conv2"):
        assert (tmp_path / "out" / f"maximize_{tensor}.png").is_file()
        assert sorted(p.name for p in (tmp_path / "out" / tensor).iterdir()) == [
            "channel_0.png", "channel_1.png", "channel_5.png"]
    with np.load(tmp_path / "m.npz") as saved:
        assert saved["conv1/units"].tolist() == [0, 1, 5]
        assert saved["conv2/images"].shape[0] == 3
    open_end = run("maximize", MNIST, "--layer", "conv1", "--channel", "4:", "--out",
                   tmp_path / "x")
    assert open_end.exit_code == 2 and "4:12" in open_end.output


def test_backprop_explain_top_json_and_npz_follow_onnxruntime_ranking(tmp_path: Path) -> None:
    labels = tmp_path / "digits.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    result = run("backprop", MNIST, DIGIT9, DIGIT7, "--explain-top", "3", "--labels", labels,
                 "--json", "--save-npz", tmp_path / "b.npz", "--out", tmp_path / "out",
                 "--preset", "mnist")
    assert result.exit_code == 0, result.output
    best = np.argsort(-mnist_logits(DIGIT9, DIGIT7), axis=1, kind="stable")[:, :3]
    rows = json.loads(result.stdout)["images"]
    assert [(r["target"], r["rank"]) for r in rows] == [
        (int(best[i, k]), k + 1) for i in range(2) for k in range(3)]
    assert [r["label"] for r in rows] == [f"digit {r['target']}" for r in rows]
    with np.load(tmp_path / "b.npz") as saved:
        assert saved["target"].tolist() == best.reshape(-1).tolist()
        assert saved["image"].tolist() == [0, 0, 0, 1, 1, 1]
        assert saved["rank"].tolist() == [0, 1, 2, 0, 1, 2]
        views = saved["view"]
    for row, (image, stem) in enumerate([(i, s) for i, s in ((0, "digit_9"), (1, "digit_7"))
                                         for _ in range(3)]):
        rank, target = row % 3 + 1, int(best[image, row % 3])
        png = tmp_path / "out" / stem / f"backprop_saliency_top{rank}_class{target}.png"
        pixels = np.asarray(Image.open(png), np.float32)
        assert np.abs(pixels - np.round(views[row] * 255)).max() <= 1


def test_backprop_label_target_and_layer(tmp_path: Path) -> None:
    labels = tmp_path / "digits.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    named = run("backprop", MNIST, DIGIT9, "--labels", labels, "--target", "digit 4", "--json",
                "--out", tmp_path / "a", "--preset", "mnist")
    assert named.exit_code == 0, named.output
    (row,) = json.loads(named.stdout)["images"]
    assert (row["target"], row["label"], row["rank"]) == (4, "digit 4", None)
    views = {}
    for layer in ("conv1", "conv2"):
        out = tmp_path / layer
        result = run("backprop", MNIST, DIGIT9, "--method", "guided-gradcam", "--layer", layer,
                     "--json-file", tmp_path / f"{layer}.json", "--save-npz",
                     tmp_path / f"{layer}.npz", "--out", out, "--preset", "mnist")
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / f"{layer}.json").read_text())
        # the Grad-CAM layer of a conv is its activation output (relu1, relu2)
        assert record["images"][0]["layer"] == layer.replace("conv", "relu")
        with np.load(tmp_path / f"{layer}.npz") as saved:
            views[layer] = saved["view"]
    assert not np.allclose(views["conv1"], views["conv2"])
    two = run("backprop", MNIST, DIGIT9, "--layer", "conv1", "--layer", "conv2", "--out",
              tmp_path / "c")
    assert two.exit_code == 2 and "one Grad-CAM layer" in two.output
    both = run("backprop", MNIST, DIGIT9, "--explain-top", "2", "--target", "3", "--out",
               tmp_path / "d", "--preset", "mnist")
    assert both.exit_code == 1 and "explain_top=2" in both.output
