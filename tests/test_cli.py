"""Tests for the ``featviz`` command line: the four walkthroughs end to end, checked against
independent references (initializers, onnxruntime with tensors exposed by hand, numpy), and
bad input (exit codes, one-line messages, no partial output)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import Result
from onnx import numpy_helper
from PIL import Image, ImageDraw, ImageFont

from onnx_featviz import api
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.graph import construction as construction
from onnx_featviz.graph import rewrite as rewrite
from onnx_featviz.render import compose
from onnx_featviz.render import pictures as render
from tests import reference
from tests.conftest import run

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "models" / "mnist_cnn.onnx"
SAMPLES = REPO / "models" / "samples"
DIGIT9 = SAMPLES / "digit_9.png"
VIRIDIS_TOP = tuple(int(v) for v in render.colormap_lut("viridis")[-1])
VIRIDIS_BOTTOM = tuple(int(v) for v in render.colormap_lut("viridis")[0])
COMMANDS = ("info", "predict", "filters", "maps", "build-conv")


def ok(*args: object) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` but the run's ``manifest.json``."""
    found = folder.rglob("*") if folder.exists() else []
    return sorted(p for p in found if p.is_file() and p.name != "manifest.json")


def weight_initializer(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    """The conv node's weight (input 1) read straight from the initializers."""
    node = next(n for n in model.graph.node if n.name == node_name)
    inits = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])


def ort_tensors(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Reference: add ``names`` as graph outputs with onnx.helper and run plain onnxruntime."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {model.graph.input[0].name: x})
    return dict(zip(names, values, strict=True))


def digit_input(path: Path) -> np.ndarray:
    """The digit as the MNIST model expects it: grayscale / 255, (1, 1, 28, 28)."""
    gray = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    assert gray.shape == (28, 28)
    return gray[None, None]


def square_image(path: Path) -> np.ndarray:
    """Write a 16x16 grayscale PNG, a bright 8x8 square on black; return its pixels."""
    pixels = np.zeros((16, 16), np.uint8)
    pixels[4:12, 4:12] = 255
    Image.fromarray(pixels).save(path)
    return pixels


# ----------------------------------------------------------------------------- walkthrough 1


@pytest.mark.slow
def test_filters_npz_equals_initializers(tmp_path: Path) -> None:
    before = sha(MNIST)
    result = ok("filters", MNIST, "--layer", "conv1", "--layer", "conv2",
                "--save-npz", tmp_path / "f.npz", "--out", tmp_path / "out")
    model = onnx.load(MNIST)
    with np.load(tmp_path / "f.npz") as saved:
        assert sorted(saved.files) == ["conv1", "conv2"]
        for layer in ("conv1", "conv2"):
            expected = weight_initializer(model, layer)
            assert saved[layer].dtype == np.float32
            np.testing.assert_array_equal(saved[layer], expected)
    assert saved_shape(tmp_path / "f.npz", "conv1") == (16, 1, 5, 5)
    pngs = [p.name for p in files_under(tmp_path / "out")]
    assert pngs == ["filters_conv1.png", "filters_conv2.png"]
    assert str(tmp_path / "out" / "filters_conv1.png") in result.output
    assert sha(MNIST) == before


def saved_shape(path: Path, key: str) -> tuple[int, ...]:
    with np.load(path) as saved:
        return tuple(saved[key].shape)


@pytest.mark.slow
def test_maps_npz_equals_onnxruntime_reference(tmp_path: Path) -> None:
    before = sha(MNIST), sha(DIGIT9)
    ok("maps", MNIST, DIGIT9, "--layer", "conv1", "--layer", "conv2", "--stage", "act",
       "--save-npz", tmp_path / "m.npz", "--out", tmp_path / "out", "--provider", "cpu")
    expected = ort_tensors(onnx.load(MNIST), digit_input(DIGIT9), ["relu1", "relu2"])
    with np.load(tmp_path / "m.npz") as saved:
        assert sorted(saved.files) == ["relu1", "relu2"]
        for name, value in expected.items():
            assert saved[name].shape == value.shape
            np.testing.assert_allclose(saved[name], value, rtol=0, atol=1e-5)
    assert saved_shape(tmp_path / "m.npz", "relu1") == (1, 16, 28, 28)
    names = [p.relative_to(tmp_path / "out").as_posix() for p in files_under(tmp_path / "out")]
    assert names == ["digit_9/relu1.png", "digit_9/relu2.png"]
    assert (sha(MNIST), sha(DIGIT9)) == before


@pytest.mark.slow
def test_predict_json_top_class_and_probabilities(tmp_path: Path) -> None:
    result = ok("predict", MNIST, DIGIT9, "--json", "--top-k", "10", "--provider", "cpu")
    entries = json.loads(result.stdout)
    assert isinstance(entries, list) and len(entries) == 1
    entry = entries[0]
    assert set(entry) == {"image", "output", "top"}
    assert entry["image"] == str(DIGIT9) and entry["output"] == "logits"
    top = entry["top"]
    assert [set(t) for t in top] == [{"index", "label", "score"}] * 10
    assert top[0]["index"] == 9 and top[0]["label"] == "9"
    assert sorted(t["index"] for t in top) == list(range(10))
    assert sum(t["score"] for t in top) == pytest.approx(1.0, abs=1e-6)
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True)
    logits = ort_tensors(onnx.load(MNIST), digit_input(DIGIT9), ["logits"])["logits"][0]
    soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([soft[t["index"]] for t in top], scores, rtol=1e-5)


@pytest.mark.slow
def test_predict_every_sample_digit() -> None:
    result = ok("predict", MNIST, SAMPLES, "--json", "--top-k", "1", "--provider", "cpu")
    entries = json.loads(result.stdout)
    assert len(entries) == 10
    for entry in entries:
        digit = int(Path(entry["image"]).stem.split("_")[1])
        assert entry["top"][0]["index"] == digit, entry


# ----------------------------------------------------------------------------- grids


def check_tiles(image: Image.Image, layout: render.GridLayout, maps: np.ndarray) -> None:
    """The brightest (top viridis) pixels of each tile are exactly at its channel's maximum."""
    pixels = np.asarray(image)
    s = layout.scale
    for i, channel in enumerate(maps):
        left, top, right, bottom = layout.box(i)
        tile = pixels[top:bottom, left:right]
        assert tile.shape[:2] == (channel.shape[0] * s, channel.shape[1] * s)
        if channel.max() == channel.min():
            assert (tile == VIRIDIS_BOTTOM).all()
            continue
        y, x = np.unravel_index(np.argmax(channel), channel.shape)
        block = tile[y * s:(y + 1) * s, x * s:(x + 1) * s]
        assert (block == VIRIDIS_TOP).all(), f"tile {i}: max at {(y, x)} is not the top colour"
        hot = (tile == VIRIDIS_TOP).all(axis=-1)[::s, ::s]
        near_max = channel >= channel.max() - (channel.max() - channel.min()) / 256 * 1.001
        assert not (hot & ~near_max).any(), f"tile {i}: top colour away from the maximum"


@pytest.mark.slow
def test_cli_grid_geometry_and_brightest_tiles(tmp_path: Path) -> None:
    ok("maps", MNIST, DIGIT9, "--layer", "conv1", "--out", tmp_path / "out",
       "--save-npz", tmp_path / "m.npz", "--provider", "cpu")
    with np.load(tmp_path / "m.npz") as saved:
        maps = saved["relu1"][0]
    assert maps.shape == (16, 28, 28)
    image = Image.open(tmp_path / "out" / "digit_9" / "relu1.png")
    assert image.mode == "RGB"
    layout = render.grid_layout(16, 28, 28, render.GridOptions(
        title="relu1", colorbar=True, shape=(16, 28, 28)))
    assert layout.count == 16 and layout.rows * layout.columns >= 16
    assert (layout.rows, layout.columns) == (4, 4)
    assert image.size == (layout.width, layout.height)
    check_tiles(image, layout, maps)


@pytest.mark.slow
def test_api_grid_channel_range_and_layer_normalization() -> None:
    with api.Inspector(MNIST, "cpu") as inspector:
        opts = api.MapRenderOptions(stage="act", channels=slice(4, 12))
        rendered = api.render_feature_maps(inspector, [DIGIT9], ["conv1"], opts)
    (picture,) = rendered.pictures
    assert picture.name == "digit_9/relu1_ch4-12.png"  # the channel range is in the name
    assert picture.title == "relu1  channels 4..11 of 16"
    maps = np.asarray(rendered.arrays["relu1"][0, 4:12])
    layout = render.grid_layout(8, 28, 28, render.GridOptions(
        title=picture.title, colorbar=True, shape=(16, 28, 28), label_start=4))
    assert layout.count == 8
    assert picture.image.size == (layout.width, layout.height)
    check_tiles(picture.image, layout, maps)


# ----------------------------------------------------------------------------- walkthrough 2


@pytest.mark.slow
def test_maps_all_writes_one_grid_per_layer_output(tmp_path: Path) -> None:
    result = ok("maps", MNIST, DIGIT9, "--all", "--out", tmp_path / "out",
                "--save-npz", tmp_path / "all.npz", "--provider", "cpu")
    expected = rewrite.all_tensors(catalog.read_catalog(onnx.load(MNIST)))
    assert expected[:6] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    written = [p.stem for p in files_under(tmp_path / "out" / "digit_9")]
    assert sorted(written) == sorted(expected)
    printed = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert [Path(p).stem for p in printed] == expected
    reference_values = ort_tensors(onnx.load(MNIST), digit_input(DIGIT9), expected)
    with np.load(tmp_path / "all.npz") as saved:
        assert sorted(saved.files) == sorted(expected)
        for name in expected:
            np.testing.assert_allclose(saved[name], reference_values[name], atol=1e-5)
    pool = Image.open(tmp_path / "out" / "digit_9" / "pool1.png")
    layout = render.grid_layout(16, 14, 14, render.GridOptions(
        title="pool1", colorbar=True, shape=(16, 14, 14)))
    assert pool.size == (layout.width, layout.height)
    check_tiles(pool, layout, reference_values["pool1"][0])


# ----------------------------------------------------------------------------- walkthrough 3


def test_build_conv_edges_preset(tmp_path: Path) -> None:
    out = tmp_path / "edges.onnx"
    result = ok("build-conv", "--preset", "edges", "--out", out)
    assert str(out) in result.output
    model = onnx.load(out)
    onnx.checker.check_model(model)
    weight = weight_initializer(model, "conv")
    row = np.array([-1, -1, 1, 1], np.float32)
    vertical = np.tile(row, (4, 1))
    expected = np.stack([vertical, -vertical, vertical.T, -vertical.T])[:, None]
    np.testing.assert_array_equal(weight, expected)
    np.testing.assert_array_equal(weight, construction.edge_filters())
    ok("filters", out, "--annotate", "--save-npz", tmp_path / "f.npz", "--out", tmp_path / "f.png")
    with np.load(tmp_path / "f.npz") as saved:
        np.testing.assert_array_equal(saved["conv"], expected)
    image = Image.open(tmp_path / "f.png")
    layouts = [render.grid_layout(4, 4, 4, filter_grid(s, "conv  weight 4x1x4x4", (4, 1, 4, 4)))
               for s in range(36, 120)]
    (layout,) = [lay for lay in layouts if lay.height == image.height]
    check_annotated(image, expected, layout)  # +-1 cells are all dark: white text everywhere


def test_build_conv_from_npy_and_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    np.save(tmp_path / "bank.npy", bank)
    ok("build-conv", tmp_path / "bank.npy", "--out", tmp_path / "a.onnx")
    np.testing.assert_array_equal(weight_initializer(onnx.load(tmp_path / "a.onnx"), "conv"), bank)
    text = "1 0 -1\n2 0 -2\n1 0 -1\n\n0.5 0.25 0\n0 0 0\n-1 -2 -3\n"
    (tmp_path / "bank.txt").write_text(text)
    ok("build-conv", tmp_path / "bank.txt", "--out", tmp_path / "b.onnx", "--activation", "none")
    model = onnx.load(tmp_path / "b.onnx")
    expected = np.array([[[1, 0, -1], [2, 0, -2], [1, 0, -1]],
                         [[0.5, 0.25, 0], [0, 0, 0], [-1, -2, -3]]], np.float32)[:, None]
    np.testing.assert_array_equal(weight_initializer(model, "conv"), expected)
    assert [n.op_type for n in model.graph.node] == ["Conv"]


@pytest.mark.parametrize("args", [[], ["FILE", "--preset", "edges"]])
def test_build_conv_needs_exactly_one_source(tmp_path: Path, args: list[str]) -> None:
    np.save(tmp_path / "f.npy", np.ones((1, 3, 3), np.float32))
    args = [str(tmp_path / "f.npy") if a == "FILE" else a for a in args]
    result = run("build-conv", *args, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert "FILTERS or --preset" in result.output
    assert not (tmp_path / "m.onnx").exists()


def filter_grid(scale: int, title: str | None, shape: tuple[int, ...]) -> render.GridOptions:
    """The grid of a one-input filter bank: ceil(sqrt(O)) columns, row headers give the first
    filter of each row, column headers the offset ``+c``; no per-tile captions."""
    columns = int(np.ceil(np.sqrt(shape[0])))
    rows = int(np.ceil(shape[0] / columns))
    return render.GridOptions(
        columns=columns, scale=scale, min_tile=48, title=title, colorbar=True, shape=shape,
        labels=False, row_labels=tuple(str(r * columns) for r in range(rows)),
        column_labels=tuple(f"+{c}" for c in range(columns)))


def cell_boxes(layout: render.GridLayout, k_h: int, k_w: int
               ) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every kernel cell, in C order over (tile, row, col)."""
    s = layout.scale
    boxes = []
    for tile in range(layout.count):
        left, top, _, _ = layout.box(tile)
        boxes += [(left + c * s, top + r * s, left + (c + 1) * s, top + (r + 1) * s)
                  for r in range(k_h) for c in range(k_w)]
    return boxes


def expected_cell_colour(value: float, bound: float) -> tuple[int, int, int]:
    """Matplotlib's RdBu_r colour for ``value`` on a symmetric [-bound, bound] scale."""
    rgba = matplotlib.colormaps["RdBu_r"]((value / bound + 1) / 2, bytes=True)
    return (int(rgba[0]), int(rgba[1]), int(rgba[2]))


def check_annotated(image: Image.Image, weight: np.ndarray, layout: render.GridLayout) -> None:
    """Every cell has its value's colour as background, and text in the contrasting ink."""
    pixels = np.asarray(image).astype(int)
    bound = float(np.abs(weight).max())
    for (x0, y0, x1, y1), value in zip(cell_boxes(layout, *weight.shape[2:]),
                                       weight.ravel(), strict=True):
        cell = pixels[y0:y1, x0:x1]
        background = np.array(expected_cell_colour(float(value), bound))
        assert (np.abs(cell[0, 0] - background) <= 1).all(), (value, cell[0, 0], background)
        distance = np.abs(cell - background).sum(axis=-1)
        text = cell[distance > 150]
        assert len(text) > 10, f"no text on the cell of {value}"
        weights = np.array([0.299, 0.587, 0.114])
        luma, ink_luma = float(background @ weights), text @ weights
        extreme = cell.reshape(-1, 3)[np.argmax(distance)]
        if luma < 128:  # dark cell: white ink (anti-aliased edges lie between)
            assert (extreme >= 230).all() and ink_luma.mean() > luma + 60, (value, extreme)
        else:  # light cell: black ink
            assert (extreme <= 40).all() and ink_luma.mean() < luma - 60, (value, extreme)


def test_filters_annotate_cli_values_and_ink(tmp_path: Path) -> None:
    text = ("1 0 -1 0.5\n2 0 -2 0.25\n1 0 -1 0\n0 0 0 0\n\n"
            + "-1 -1 1 1\n" * 4)
    (tmp_path / "bank.txt").write_text(text)
    ok("build-conv", tmp_path / "bank.txt", "--out", tmp_path / "m.onnx")
    ok("filters", tmp_path / "m.onnx", "--annotate", "--save-npz", tmp_path / "f.npz",
       "--out", tmp_path / "f.png")
    with np.load(tmp_path / "f.npz") as saved:
        weight = saved["conv"]
    assert weight.shape == (2, 1, 4, 4)
    strings = compose.format_cell_values(weight)
    assert strings == [f"{v:.2f}" for v in weight.ravel()]
    assert strings[:4] == ["1.00", "0.00", "-1.00", "0.50"]
    image = Image.open(tmp_path / "f.png")
    # the scale of the annotated cells is chosen from the text width: find the one whose
    # grid_layout gives this picture's height
    layouts = [render.grid_layout(2, 4, 4, filter_grid(s, "conv  weight 2x1x4x4", (2, 1, 4, 4)))
               for s in range(36, 120)]
    matching = [lay for lay in layouts if lay.height == image.height]
    assert len(matching) == 1
    check_annotated(image, weight, matching[0])


def test_render_filters_annotated_text_matches_values() -> None:
    weight = np.array([[[[-2.0, 0.0], [1.25, 2.0]]], [[[0.5, -0.75], [0.0, -2.0]]]], np.float32)
    options = render.FilterOptions(annotate=True, cell=48, title=None)
    image = compose.render_filters(weight, options)
    layout = render.grid_layout(2, 2, 2, filter_grid(48, None, weight.shape))
    assert image.size == (layout.width, layout.height)
    check_annotated(image, weight, layout)
    # each cell's ink is the value's text: compare with the text drawn alone on that cell
    pixels = np.asarray(image).astype(int)
    font = ImageFont.load_default(size=max(9, min(14, 48 // 3)))
    bound = float(np.abs(weight).max())
    for box, value in zip(cell_boxes(layout, 2, 2), weight.ravel(), strict=True):
        cell = pixels[box[1]:box[3], box[0]:box[2]]
        background = np.array(expected_cell_colour(float(value), bound))
        colour = np.full(3, 255 if background @ [0.299, 0.587, 0.114] < 128 else 0)
        coverage = np.abs(cell - background).sum(axis=-1) / np.abs(colour - background).sum()
        ink = coverage > 0.5
        masks = {}
        for candidate in (f"{value:.2f}", f"{-value - 1:.2f}"):
            probe = Image.new("L", (48, 48), 0)
            ImageDraw.Draw(probe).text((24, 24), candidate, fill=255, font=font, anchor="mm")
            masks[candidate] = np.asarray(probe) > 127
        own, other = masks.values()
        iou = (ink & own).sum() / max(1, (ink | own).sum())
        iou_other = (ink & other).sum() / max(1, (ink | other).sum())
        assert iou > 0.95 and iou > iou_other + 0.1, (value, iou, iou_other)


def test_maps_before_after_relu_on_edges(tmp_path: Path) -> None:
    ok("build-conv", "--preset", "edges", "--out", tmp_path / "edges.onnx")
    pixels = square_image(tmp_path / "square.png")
    result = ok("maps", tmp_path / "edges.onnx", tmp_path / "square.png", "--stage", "both",
                "--save-npz", tmp_path / "e.npz", "--out", tmp_path / "out",
                "--preset", "unit", "--provider", "cpu", "--json")
    manifest = json.loads(result.stdout)
    folder = tmp_path / "out" / "square"
    assert sorted(manifest["written"]) == sorted(
        str(p) for p in [folder / "conv.png", folder / "relu.png",
                         folder / "conv_before_after.png", tmp_path / "e.npz",
                         tmp_path / "out" / "manifest.json"])
    x = (pixels.astype(np.float32) / 255.0)[None, None]
    with np.load(tmp_path / "e.npz") as saved:
        conv, relu = saved["conv"], saved["relu"]
    np.testing.assert_allclose(conv, reference.conv2d(x, construction.edge_filters()), atol=1e-5)
    assert conv.shape == (1, 4, 13, 13)
    np.testing.assert_array_equal(relu, np.maximum(conv, 0))
    assert (conv < 0).any() and (conv > 0).any()
    np.testing.assert_array_equal(relu != conv, conv < 0)
    pair = Image.open(folder / "conv_before_after.png")
    before, after = Image.open(folder / "conv.png"), Image.open(folder / "relu.png")
    assert pair.width >= before.width + after.width
    assert pair.height >= max(before.height, after.height)


# ----------------------------------------------------------------------------- walkthrough 4


@pytest.mark.slow
@pytest.mark.parametrize("how", ["mean", "max"])
def test_maps_reduce_one_image_per_tensor(tmp_path: Path, how: str) -> None:
    ok("maps", MNIST, DIGIT9, "--reduce", how, "--out", tmp_path / "out", "--provider", "cpu")
    names = [p.name for p in files_under(tmp_path / "out" / "digit_9")]
    assert names == [f"relu1_{how}.png", f"relu2_{how}.png"]  # the reduction is in the name
    image = Image.open(tmp_path / "out" / "digit_9" / f"relu1_{how}.png")
    with api.Inspector(MNIST, "cpu") as inspector:
        rendered = api.render_feature_maps(inspector, [DIGIT9], ["conv1"],
                                           api.MapRenderOptions(reduce=how))
    (picture,) = rendered.pictures
    assert picture.image.size == image.size
    np.testing.assert_array_equal(np.asarray(picture.image), np.asarray(image))
    reduced = render.reduce_maps(rendered.arrays["relu1"][0], how)[0]
    expected = (rendered.arrays["relu1"][0].mean(axis=0) if how == "mean"
                else rendered.arrays["relu1"][0].max(axis=0))
    np.testing.assert_allclose(reduced, expected, rtol=1e-6)
    layout = render.grid_layout(1, 28, 28, render.GridOptions(
        labels=False, colorbar=True, mode="layer", min_tile=224, title="t"))
    assert image.height == layout.height and image.width >= layout.grid_width
    check_tiles(picture.image, layout, reduced[None])


# ----------------------------------------------------------------------------- info


@pytest.mark.slow
def test_info_text_and_json() -> None:
    before = sha(MNIST)
    text = ok("info", MNIST).stdout
    for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1",
                 "relu3", "fc2"):
        assert name in text
    assert "conv1: conv1 -> relu1" in text and "conv2: conv2 -> relu2" in text
    assert "#  name" in text and "params" in text
    summary = json.loads(ok("info", MNIST, "--json").stdout)
    layers = summary["layers"]
    assert [lay["name"] for lay in layers] == ["conv1", "relu1", "pool1", "conv2", "relu2",
                                               "pool2", "flatten", "fc1", "relu3", "fc2"]
    for index, lay in enumerate(layers):
        assert {"index", "name", "op", "output", "shape", "params"} <= set(lay)
        assert lay["index"] == index
    conv1 = layers[0]
    assert conv1["op"] == "Conv" and conv1["output"] == "conv1"
    assert conv1["shape"][1:] == [16, 28, 28]
    assert conv1["params"] == 16 * 1 * 5 * 5 + 16
    assert layers[-1]["output"] == "logits"
    assert [(c["name"], c["activation"]) for c in summary["conv_layers"]] == [
        ("conv1", "relu1"), ("conv2", "relu2")]
    assert sha(MNIST) == before


# ----------------------------------------------------------------------------- bad input


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def text_model(tmp_path: Path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    return path


@pytest.fixture
def edges_model(tmp_path: Path) -> Path:
    path = tmp_path / "edges.onnx"
    ok("build-conv", "--preset", "edges", "--out", path)
    return path


def test_missing_and_text_model_files(tmp_path: Path, text_model: Path) -> None:
    out = tmp_path / "out"
    for command in (["maps", "{m}", str(DIGIT9)], ["filters", "{m}"], ["info", "{m}"],
                    ["predict", "{m}", str(DIGIT9)]):
        for model, needle in ((tmp_path / "missing.onnx", "missing.onnx"),
                              (text_model, "not an ONNX model")):
            args = [str(model) if a == "{m}" else a for a in command]
            if command[0] in ("maps", "filters"):
                args += ["--out", str(out)]
            assert_one_line_error(run(*args), needle)
    assert not out.exists()


def test_wrong_layer_shows_close_matches(tmp_path: Path, edges_model: Path) -> None:
    image = tmp_path / "square.png"
    square_image(image)
    result = run("maps", edges_model, image, "--layer", "convv", "--out", tmp_path / "out",
                 "--provider", "cpu")
    assert_one_line_error(result, "'convv'", "close matches: conv",
                          "`featviz info MODEL` lists every layer")
    result = run("filters", edges_model, "--layer", "cnv", "--out", tmp_path / "out")
    assert_one_line_error(result, "'cnv'", "conv")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_wrong_layer_on_mnist_lists_conv1_once(tmp_path: Path) -> None:
    result = run("maps", MNIST, DIGIT9, "--layer", "conv11", "--out", tmp_path / "out",
                 "--provider", "cpu")
    assert_one_line_error(result, "'conv11'", "close matches: conv1")
    assert result.output.count("conv1,") <= 1
    assert not (tmp_path / "out").exists()


def test_channels_out_of_range(tmp_path: Path, edges_model: Path) -> None:
    image = tmp_path / "square.png"
    square_image(image)
    result = run("maps", edges_model, image, "--channels", "0:999", "--out", tmp_path / "out",
                 "--save-npz", tmp_path / "m.npz", "--provider", "cpu")
    assert_one_line_error(result, "0:999", "4 channels")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.npz").exists()


def test_corrupt_and_missing_images(tmp_path: Path, edges_model: Path) -> None:
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for image, needle in ((corrupt, "broken.png"), (tmp_path / "absent.png", "absent.png")):
        result = run("maps", edges_model, image, "--out", tmp_path / "out", "--provider", "cpu")
        assert_one_line_error(result, needle)
        result = run("predict", edges_model, image, "--provider", "cpu")
        assert_one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_unwritable_out(tmp_path: Path, edges_model: Path) -> None:
    image = tmp_path / "square.png"
    square_image(image)
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    before = set(files_under(tmp_path))
    cases = [
        ["maps", edges_model, image, "--out", blocker / "sub", "--provider", "cpu"],
        ["maps", edges_model, image, "--out", tmp_path / "ok", "--save-npz",
         blocker / "m.npz", "--provider", "cpu"],
        ["filters", edges_model, "--out", blocker / "f"],
        ["filters", edges_model, "--out", tmp_path / "ok2", "--save-npz", blocker / "f.npz"],
        ["build-conv", "--preset", "edges", "--out", blocker / "m.onnx"],
    ]
    for args in cases:
        assert_one_line_error(run(*args), "plain_file")
    assert set(files_under(tmp_path)) == before
    assert not (tmp_path / "ok").exists() and not (tmp_path / "ok2").exists()
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("option", [["--channels", "abc"], ["--size", "0"], ["--mean", "a,b"],
                                    ["--provider", "tpu"], ["--stage", "pre"],
                                    ["--reduce", "sum"]])
def test_bad_option_values_exit_2(tmp_path: Path, edges_model: Path, option: list[str]) -> None:
    image = tmp_path / "square.png"
    square_image(image)
    result = run("maps", edges_model, image, *option, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert option[0] in result.output
    assert not (tmp_path / "out").exists()


def test_provider_cuda_without_cuda(tmp_path: Path, edges_model: Path) -> None:
    from tests.gpu import cuda_available

    if cuda_available():
        pytest.skip("CUDA runs here, so --provider cuda is valid")
    image = tmp_path / "square.png"
    square_image(image)
    result = run("maps", edges_model, image, "--provider", "cuda", "--out", tmp_path / "out")
    assert_one_line_error(result, "CUDA")
    assert "provider" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- help, inputs kept


def test_python_dash_m_help() -> None:
    done = subprocess.run([sys.executable, "-m", "onnx_featviz", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples(command: str) -> None:
    result = ok(command, "--help")
    assert "Examples:" in result.output
    assert f"featviz {command}" in result.output


def test_maps_and_filters_leave_inputs_unchanged(tmp_path: Path, edges_model: Path) -> None:
    image = tmp_path / "square.png"
    square_image(image)
    before = (sha(edges_model), sha(image))
    ok("maps", edges_model, image, "--stage", "both", "--out", tmp_path / "o",
       "--provider", "cpu")
    ok("filters", edges_model, "--out", tmp_path / "o")
    ok("info", edges_model, "--json")
    ok("predict", edges_model, image, "--provider", "cpu", "--top-k", "1")
    assert (sha(edges_model), sha(image)) == before


def test_npy_batch_gives_one_result_per_row(tmp_path: Path, edges_model: Path) -> None:
    batch = np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "two.npy", batch)
    ok("maps", edges_model, tmp_path / "two.npy", "--out", tmp_path / "out",
       "--save-npz", tmp_path / "m.npz", "--provider", "cpu")
    with np.load(tmp_path / "m.npz") as saved:
        relu = saved["relu"]
    np.testing.assert_allclose(
        relu, np.maximum(reference.conv2d(batch, construction.edge_filters()), 0), atol=1e-5)
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert len(folders) == 2
    layout = render.grid_layout(4, 13, 13, render.GridOptions(
        title="relu", colorbar=True, shape=(4, 13, 13)))
    for row, folder in enumerate(folders):
        image = Image.open(tmp_path / "out" / folder / "relu.png")
        assert image.size == (layout.width, layout.height)
        check_tiles(image, layout, relu[row])
    entries = json.loads(ok("predict", edges_model, tmp_path / "two.npy", "--json",
                            "--provider", "cpu").stdout)
    assert [e["image"] for e in entries] == [f"{tmp_path / 'two.npy'}:two[{i}]" for i in (0, 1)]


def test_assumed_preprocessing_is_said_once_after_a_successful_run(tmp_path: Path,
                                                                    edges_model: Path) -> None:
    """A model without preprocessing metadata, run without options: one notice, after the
    paths written; none with --preset, none when the command fails (its error stays one line)."""
    image = tmp_path / "square.png"
    square_image(image)
    result = run("maps", edges_model, image, image, "--out", tmp_path / "out",
                 "--provider", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    notices = [line for line in lines if "no preprocessing metadata" in line]
    assert len(notices) == 1 and lines[-1] == notices[0]
    assert "assuming preset 'mnist'" in notices[0] and "choose a preset (imagenet" in notices[0]
    given = run("maps", edges_model, image, "--out", tmp_path / "out2", "--provider", "cpu",
                "--preset", "mnist")
    assert given.exit_code == 0 and "no preprocessing metadata" not in given.output
    cropped = run("maps", edges_model, image, "--out", tmp_path / "out3", "--provider", "cpu",
                  "--crop-fraction", "0.5")
    assert cropped.exit_code == 0 and "no preprocessing metadata" not in cropped.output


def test_an_op_without_a_gradient_rule_names_its_module_and_the_cli_way_out(
        tmp_path: Path) -> None:
    """cam on a model whose path has an op without a rule (Asinh, exported from module
    'block.act'): one line naming op, node and module path, and --layer / --method advice."""
    from tests.test_maximize import two_conv_model

    model = two_conv_model(fixed_batch=True, reshape=True, middle="Asinh")
    for node in model.graph.node:  # as torch's dynamo exporter records module scopes
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes",
                                value=repr(["", "block", "act" if node.name == "middle"
                                            else node.name, f"fx_{node.name}"]))
    path = tmp_path / "asinh.onnx"
    onnx.save(model, path)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    result = run("cam", path, image, "--layer", "c1", "--out", tmp_path / "out", "--provider",
                 "cpu", "--preset", "unit")
    assert_one_line_error(result, "no gradient rule for Asinh (node 'middle', module "
                          "'block.act')", "--layer a layer after that op",
                          "--method eigen_cam, score_cam, ablation_cam or occlusion")
    assert not (tmp_path / "out").exists()
