"""Pictures a person can read (issue 15, item 3) and notebook representations (item 5).

Known pixels are checked against independent references: colours from matplotlib's colormaps,
text drawn by PIL alone, probabilities and activations from plain onnxruntime, crop geometry
worked out by hand.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont

from onnx_featviz import api
from onnx_featviz.inspector import PrepOptions
from onnx_featviz.io import geometry as io_geometry
from onnx_featviz.io import preprocess
from onnx_featviz.render import compose, figures, progress
from onnx_featviz.render import pictures as render
from onnx_featviz.structs import Progress, auto_progress
from tests.conftest import run

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "models" / "mnist_cnn.onnx"
DIGIT9 = REPO / "models" / "samples" / "digit_9.png"
WHITE = (255, 255, 255)


def lut(cmap: str) -> np.ndarray:
    """The colormap's 256 RGB entries straight from matplotlib."""
    colours = matplotlib.colormaps[cmap](np.arange(matplotlib.colormaps[cmap].N), bytes=True)
    return np.asarray(colours)[:, :3].astype(int)


def digit_logits() -> np.ndarray:
    """MNIST logits of the sample nine from plain onnxruntime (gray / 255)."""
    gray = np.asarray(Image.open(DIGIT9).convert("L"), np.float32)[None, None] / 255.0
    session = ort.InferenceSession(str(MNIST), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: gray})[0][0], np.float64)


def conv_model(out_channels: int, in_channels: int, weight: np.ndarray | None = None, *,
               size: int = 8) -> onnx.ModelProto:
    """x (1, I, S, S) -> Conv(W: O x I x 3 x 3, pads 1) -> y; W = arange unless given."""
    w = weight if weight is not None else np.arange(
        out_channels * in_channels * 9, dtype=np.float32).reshape(out_channels, in_channels, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, size, size])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)


def runs_of(mask: np.ndarray) -> int:
    """Number of runs of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]])
    return int((padded[1:] & ~padded[:-1]).sum())


def find(picture: np.ndarray, patch: np.ndarray) -> tuple[int, int]:
    """Top-left (x, y) of the one place ``patch`` occurs exactly in ``picture``."""
    h, w = patch.shape[:2]
    hits = [(x, y) for y in range(picture.shape[0] - h + 1)
            for x in range(picture.shape[1] - w + 1)
            if (picture[y, x] == patch[0, 0]).all()
            and np.array_equal(picture[y: y + h, x: x + w], patch)]
    assert len(hits) == 1, hits
    return hits[0]


# ----------------------------------------------------------------------------- CAM overlays


@pytest.mark.slow
def test_cam_overlay_has_title_band_colour_bar_and_manifest(tmp_path: Path) -> None:
    result = run("cam", MNIST, DIGIT9, "--out", tmp_path / "out", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entries = {e["file"]: e for e in manifest["files"]}
    entry = entries["digit_9/cam_grad_cam.png"]
    logits = digit_logits()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    target = int(np.argmax(logits))
    assert target == 9
    assert entry["title"] == f"class 9 (p={probs[9]:.3f}) | grad_cam at pool2"
    assert "digit_9/cam_grad_cam_heatmap.png" in entries
    picture = np.asarray(Image.open(tmp_path / "out" / "digit_9" / "cam_grad_cam.png"), int)
    with api.Inspector(MNIST, "cpu") as inspector:
        report = inspector.cam(DIGIT9, api.CamOptions(), progress=None)
    overlay = np.asarray(report.overlays[0].resize((224, 224), Image.Resampling.NEAREST), int)
    x, y = find(picture, overlay)  # the overlay, enlarged 8x, under the title band
    band = picture[:y]
    assert y >= 2 * 14 and (band == 255).all(axis=-1).mean() > 0.8  # two lines of text on white
    assert (band.max(axis=-1) < 80).sum() > 50  # black text in the band
    bar_rows = picture[y + 224:]
    jet = lut("jet")
    strip = [r for r in bar_rows if (r[x] == jet[0]).all() and (r[x + 223] == jet[-1]).all()]
    assert strip, "no colour bar running from jet's first to its last colour under the overlay"
    # ticks 0 .. 1 under the bar: the text drawn alone by PIL at the bar's left end
    assert picture.shape[0] > y + 224 + len(strip) + 10


def test_titled_places_picture_under_wrapped_title() -> None:
    body = Image.new("RGB", (300, 40), (10, 200, 30))
    out = np.asarray(figures.titled(body, "one two\nthree", cmap="viridis",
                                    ticks=("0", "1")), int)
    font = ImageFont.load_default(size=12)
    assert isinstance(font, ImageFont.FreeTypeFont)
    ascent, descent = font.getmetrics()
    top = 6 + 2 * (ascent + descent) + 6  # margin, two lines, margin
    assert (out[top: top + 40, 6: 306] == (10, 200, 30)).all()
    alone = Image.new("L", (200, ascent + descent), 0)
    ImageDraw.Draw(alone).text((0, 0), "one two", fill=255, font=font)
    ink = np.asarray(alone) > 128
    drawn = out[6: 6 + ascent + descent, 6: 206].max(axis=-1) < 128
    assert ink.sum() > 20 and (ink == drawn).mean() > 0.97
    bar = out[top + 40 + 6]
    viridis = lut("viridis")
    assert (bar[6] == viridis[0]).all() and (bar[305] == viridis[-1]).all()


def test_whole_image_overlay_matches_hand_worked_crop() -> None:
    # 64 x 32 picture, 16 x 16 model input, crop fraction 1: the short side (32) goes to 16,
    # the picture to 32 x 16, and the crop keeps resized x 8..24 = original x 16..48
    input_spec = preprocess.infer_input_spec(conv_model(1, 3, size=16))
    prep = preprocess.resolve_preprocessing(input_spec, preset="unit")
    assert (prep.resize, prep.crop_fraction) == ("crop", 1.0)
    geometry = io_geometry.input_geometry((64, 32), input_spec, prep)
    assert geometry == (0.5, 0.5, -8.0, 0.0)
    picture = Image.new("RGB", (64, 32), (100, 100, 100))
    out = np.asarray(figures.overlay_whole(picture, np.ones((16, 16), np.float32), geometry,
                                           alpha=0.5, cmap="jet"), int)
    top = lut("jet")[-1]
    inside = np.rint((np.array([100, 100, 100]) + top) / 2)
    assert (np.abs(out[:, 17:47] - inside) <= 1).all()
    assert (out[:, :15] == 50).all() and (out[:, 49:] == 50).all()  # outside: half brightness


@pytest.mark.slow
def test_cli_whole_image_and_explain_top_sheet(tmp_path: Path) -> None:
    wide = Image.open(DIGIT9).convert("L").resize((56, 28))
    wide.save(tmp_path / "wide.png")
    result = run("cam", MNIST, tmp_path / "wide.png", "--whole-image", "--explain-top", "2",
                 "--out", tmp_path / "out", "--provider", "cpu", "--resize", "crop")
    assert result.exit_code == 0, result.output
    files = {e["file"]: e for e in json.loads(
        (tmp_path / "out" / "manifest.json").read_text())["files"]}
    sheet = files["cam_grad_cam_top2_whole.png"]
    assert sheet["shows"].startswith("sheet of grad_cam CAMs, a row per class rank")
    rows = [n for n in files if n.startswith("wide/cam_grad_cam_top") and n.endswith("_whole.png")
            and "class" in n]
    assert len(rows) == 2
    picture = Image.open(tmp_path / "out" / "cam_grad_cam_top2_whole.png")
    row = Image.open(tmp_path / "out" / rows[0])
    assert picture.height > 2 * row.height  # one row per class, under a title
    assert row.width > row.height  # the whole 2:1 picture, not the square crop


# ----------------------------------------------------------------------------- bar charts


def test_bar_chart_one_bar_per_class_in_order() -> None:
    values = np.array([0.5, -1.0, 2.0, 0.25, 1.0, -0.5, 0.0, 3.0, 1.5, -2.0])
    names = [f"class {i}" for i in range(10)]
    image = np.asarray(figures.bar_chart(values, names=names, top_k=10, title="logits"), int)
    positive = (image == figures.BAR_COLOR).all(axis=-1).any(axis=1)
    negative = (image == figures.NEGATIVE_COLOR).all(axis=-1).any(axis=1)
    assert runs_of(positive | negative) == 10
    assert runs_of(positive) == 7 and runs_of(negative) == 3  # 0.0 draws a 1-px bar
    lengths = [int((r == figures.BAR_COLOR).all(axis=-1).sum()) for r in image
               if (r == figures.BAR_COLOR).all(axis=-1).any()]
    assert lengths == sorted(lengths, reverse=True)  # largest first
    top3 = np.asarray(figures.bar_chart(values, names=names, top_k=3), int)
    rows = (top3 == figures.BAR_COLOR).all(axis=-1).any(axis=1)
    assert runs_of(rows) == 3


@pytest.mark.slow
def test_maps_draw_logits_as_labelled_bars(tmp_path: Path) -> None:
    result = run("maps", MNIST, DIGIT9, "--all", "--out", tmp_path / "out", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(tmp_path / "out" / "digit_9" / "logits.png"), int)
    positive = (image == figures.BAR_COLOR).all(axis=-1)
    negative = (image == figures.NEGATIVE_COLOR).all(axis=-1)
    bars = positive.any(axis=1) | negative.any(axis=1)
    assert runs_of(bars) == 10  # one bar per class
    logits = digit_logits()
    first = np.flatnonzero(bars)[0]  # the top bar is the largest logit: the longest one
    assert positive[first].sum() == max(positive[r].sum() for r in range(len(image)))
    assert logits.argmax() == 9
    files = {e["file"]: e for e in json.loads(
        (tmp_path / "out" / "manifest.json").read_text())["files"]}
    assert files["digit_9/logits.png"]["shows"].startswith("bar chart of 10 of 10 values")
    assert files["digit_9/fc1.png"]["shows"].startswith("bar chart of 20 of 64 values")


# ----------------------------------------------------------------------------- filters


def test_capped_filter_layer_says_so_in_its_title(tmp_path: Path) -> None:
    onnx.save(conv_model(80, 1), tmp_path / "wide.onnx")
    result = run("filters", tmp_path / "wide.onnx", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"][0]
    assert entry["file"] == "filters_conv.png"
    assert entry["title"] == "conv  weight 80x1x3x3  showing 64 of 80 filters"
    assert entry["shows"] == "filters of conv: showing 64 of 80 filters"
    image = np.asarray(Image.open(tmp_path / "out" / "filters_conv.png"), int)
    font = ImageFont.load_default(size=12)  # the title as PIL alone draws it, at (4, 4)
    text = entry["title"] + "   (80, 1, 3, 3)"
    alone = Image.new("L", (image.shape[1], 20), 0)
    ImageDraw.Draw(alone).text((4, 4), text, fill=255, font=font)
    ink = np.asarray(alone)[:16] > 128
    assert ink.sum() > 100 and ((image[:16].max(axis=-1) < 128) == ink).mean() > 0.98
    raised = run("filters", tmp_path / "wide.onnx", "--out", tmp_path / "out", "--max-filters",
                 "80")
    assert raised.exit_code == 0, raised.output
    files = {e["file"]: e for e in json.loads(
        (tmp_path / "out" / "manifest.json").read_text())["files"]}
    assert files["filters_conv_max80.png"]["title"] == "conv  weight 80x1x3x3"
    assert "filters_conv.png" in files  # the earlier run's picture is still listed
    big = Image.open(tmp_path / "out" / "filters_conv_max80.png")
    assert big.height > image.shape[0]  # 9 rows of 9 instead of 8 rows of 8


def test_filter_headers_replace_tile_captions() -> None:
    weight = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    image = np.asarray(compose.render_filters(weight, render.FilterOptions(
        rgb=False, cell=20, colorbar=False)), int)
    grid = render.GridOptions(columns=3, scale=20, labels=False,
                              row_labels=("out 0", "1", "2", "3"),
                              column_labels=("in 0", "1", "2"))
    layout = render.grid_layout(12, 2, 2, grid)
    assert image.shape[:2] == (layout.height, layout.width)
    assert layout.caption == 0 and layout.left > 0 and layout.header > 0
    for tile in range(12):  # tiles touch their neighbours' gaps only: no caption bands
        left, top, right, bottom = layout.box(tile)
        above = image[top - 2: top, left: right]
        assert (above == 255).all()
    font = ImageFont.load_default(size=10)
    alone = Image.new("L", (layout.left, 30), 0)
    _, top, _, bottom = layout.box(0)
    ImageDraw.Draw(alone).text((layout.left - 4, (top + bottom) // 2 - top + 5), "out 0",
                               fill=255, font=font, anchor="rm")
    ink = np.asarray(alone) > 128
    drawn = image[top - 5: top + 25, : layout.left].max(axis=-1) < 128
    assert ink.sum() > 10 and (ink == drawn).mean() > 0.97


@pytest.mark.parametrize(("order", "colour"), [("RGB", 0), ("BGR", 2)])
def test_first_layer_filters_follow_the_model_channel_order(tmp_path: Path, order: str,
                                                            colour: int) -> None:
    weight = np.zeros((1, 3, 3, 3), np.float32)
    weight[0, 0] = 1.0  # only input 0: red for an RGB model, blue for a BGR one
    weight[0, 0, 0, 0] = 0.0
    onnx.save(conv_model(1, 3, weight), tmp_path / "m.onnx")
    rendered = api.render_model_filters(tmp_path / "m.onnx", None, api.FilterRenderOptions(
        prep=PrepOptions(channel_order=order)))
    pixels = np.asarray(rendered.pictures[0].image, int).reshape(-1, 3)
    strongest = pixels[np.argmax(pixels.max(axis=1) - pixels.min(axis=1))]
    assert strongest[colour] == 255 and strongest.sum() == 255


# ----------------------------------------------------------------------------- feature maps


@pytest.mark.slow
def test_two_channel_choices_write_two_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for args in (["--channels", "5"], ["--channels", "0:4"], ["--reduce", "max"], []):
        result = run("maps", MNIST, DIGIT9, "--layer", "conv1", "--out", out,
                     "--provider", "cpu", *args)
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "digit_9").iterdir())
    assert names == ["relu1.png", "relu1_ch0-4.png", "relu1_ch5.png", "relu1_max.png"]
    files = {e["file"]: e for e in json.loads((out / "manifest.json").read_text())["files"]}
    assert sorted(files) == [f"digit_9/{n}" for n in names]
    assert files["digit_9/relu1_ch5.png"]["title"] == "relu1  channels 5 of 16"
    assert files["digit_9/relu1_max.png"]["title"] == "relu1 max of 16 channels"


@pytest.mark.slow
def test_maps_top_channels_by_mean_activation(tmp_path: Path) -> None:
    model = onnx.load(MNIST)
    model.graph.output.append(helper.make_empty_tensor_value_info("relu1"))
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    gray = np.asarray(Image.open(DIGIT9).convert("L"), np.float32)[None, None] / 255.0
    relu1 = session.run(["relu1"], {"input": gray})[0][0]
    order = np.argsort(-relu1.mean(axis=(1, 2)), kind="stable")[:4]
    with api.Inspector(MNIST, "cpu") as inspector:
        rendered = api.render_feature_maps(inspector, DIGIT9, ["conv1"],
                                           api.MapRenderOptions(top=4), progress=None)
    (picture,) = rendered.pictures
    assert picture.name == "digit_9/relu1_top4.png"
    assert picture.title == "relu1  top 4 of 16 channels by mean"
    layout = render.grid_layout(4, 28, 28, render.GridOptions(
        title=picture.title, colorbar=True, shape=(16, 28, 28),
        label_texts=tuple(str(c) for c in order)))
    assert layout.tile_width >= 64  # small maps get tiles of at least 64 px
    assert picture.image.size == (layout.width, layout.height)
    pixels = np.asarray(picture.image, int)
    viridis = lut("viridis")
    for tile, channel in enumerate(order):  # each tile's brightest cell is its channel's max
        y, x = np.unravel_index(np.argmax(relu1[channel]), (28, 28))
        left, top, _, _ = layout.box(tile)
        s = layout.scale
        assert (pixels[top + y * s + s // 2, left + x * s + s // 2] == viridis[-1]).all()


def test_colour_bar_numbers_in_channel_mode() -> None:
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4),
                     np.arange(16, dtype=np.float32).reshape(4, 4) * 2 + 1])
    opts = render.GridOptions(colorbar=True, scale=60)
    image = np.asarray(render.tile_grid(maps, opts), int)
    layout = render.grid_layout(2, 4, 4, opts)
    font = ImageFont.load_default(size=10)
    alone = Image.new("L", (image.shape[1], 20), 0)
    ImageDraw.Draw(alone).text((4, 3), "min 0..1", fill=255, font=font, anchor="la")
    ImageDraw.Draw(alone).line((4, 0, 4, 2), fill=255)  # the tick
    y = layout.top + layout.grid_height + 4 + 10  # under the 10-px strip
    ink = np.asarray(alone)[:, :60] > 128
    drawn = image[y: y + 20, :60].max(axis=-1) < 128
    assert ink.sum() > 10 and (ink == drawn).mean() > 0.97


# ----------------------------------------------------------------------------- notebooks


@pytest.mark.slow
def test_notebook_representations() -> None:
    with api.Inspector(MNIST, "cpu") as inspector:
        text = repr(inspector)
        assert text.startswith("Inspector(") and "mnist" in text and len(text) < 300
        card = inspector._repr_html_()
        assert "<table" in card and "opset / IR" in card and "13 / 7" in card
        assert "from the model&#x27;s metadata" in card
        table = inspector.info._repr_html_()
        assert all(f">{lay.name}<" in table for lay in inspector.info.layers)
        assert repr(inspector.info).startswith("ModelInfo(1 inputs")
        filters = inspector.filters("conv1")
        assert repr(filters) == ("Filters('conv1', weight 16x1x5x5 (stored float32), bias yes, "
                                 "groups 1)")
        assert "16x1x5x5" in filters._repr_html_()
        report = inspector.cam(DIGIT9, api.CamOptions(), progress=None)
    assert "array(" not in repr(report) and len(repr(report)) < 200
    page = report._repr_html_()
    uri = page.split('src="')[1].split('"')[0]
    assert uri.startswith("data:image/png;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    titled = api.render_cam(report).pictures[0]
    assert shown.size == titled.image.size
    np.testing.assert_array_equal(np.asarray(shown.convert("RGB")), np.asarray(titled.image))
    png = titled._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert repr(titled).startswith("Picture('digit_9/cam_grad_cam.png', ")


def test_inspector_reads_a_labels_file(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    onnx.save(conv_model(2, 1), tmp_path / "m.onnx")
    with api.Inspector(tmp_path / "m.onnx", "cpu", labels=str(tmp_path / "classes.txt")) as ins:
        assert ins.labels == tuple(f"digit {i}" for i in range(10))
    with api.Inspector(tmp_path / "m.onnx", "cpu", labels=["a", "b"]) as ins:
        assert ins.labels == ("a", "b")


# ----------------------------------------------------------------------------- progress


def test_progress_default_is_a_bar_only_when_someone_watches(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    seen: list[Progress] = []
    with progress.progress_for(seen.append, "x") as report:
        assert report == seen.append  # a callback is used as given
    with progress.progress_for(None, "x") as report:
        assert report is None
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with progress.progress_for(auto_progress, "x") as report:
        assert report is None  # tests, logs and pipes get no bar
    monkeypatch.setattr(progress, "interactive", lambda: True)
    stream = io.StringIO()
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kw: tqdm.std.tqdm(file=stream, **kw))
    with progress.progress_for(auto_progress, "maps") as report:
        assert report is not None
        report(Progress(1, 2, "input"))
        report(Progress(2, 2, "input", "done"))
    assert "maps" in stream.getvalue() and "2/2" in stream.getvalue()


def test_render_feature_maps_reports_each_input(tmp_path: Path) -> None:
    onnx.save(conv_model(2, 1), tmp_path / "m.onnx")
    batch = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    seen: list[Progress] = []
    with api.Inspector(tmp_path / "m.onnx", "cpu") as inspector:
        api.render_feature_maps(inspector, batch, None, progress=seen.append)
    assert [(p.done, p.total, p.unit) for p in seen] == [(1, 3, "input"), (2, 3, "input"),
                                                          (3, 3, "input")]
