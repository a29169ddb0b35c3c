"""Tests for onnx_featviz.render.pictures: geometry, colours at known pixels, annotations,
overlays."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.render import compose
from onnx_featviz.render import pictures as render

NO_DECOR = render.GridOptions(labels=False)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _tile(image: Image.Image, layout: render.GridLayout, index: int) -> np.ndarray:
    return np.asarray(image.crop(layout.box(index)))


# ----------------------------------------------------------------------------- normalize


def test_normalize_per_channel_and_layer() -> None:
    maps = np.stack([np.arange(12.0).reshape(3, 4), 10 * np.arange(12.0).reshape(3, 4)])
    before = maps.copy()
    per_channel = render.normalize(maps)
    assert per_channel.dtype == np.float32 and per_channel.shape == maps.shape
    np.testing.assert_allclose(per_channel[0], per_channel[1], atol=1e-6)
    np.testing.assert_allclose(per_channel.min(axis=(1, 2)), [0, 0])
    np.testing.assert_allclose(per_channel.max(axis=(1, 2)), [1, 1])
    per_layer = render.normalize(maps, mode="layer")
    np.testing.assert_allclose(per_layer[0].max(), 11 / 110, atol=1e-6)
    np.testing.assert_array_equal(maps, before)


def test_normalize_symmetric_maps_zero_to_half() -> None:
    maps = np.array([[[-2.0, 0.0], [1.0, 2.0]]])
    norm = render.normalize(maps, symmetric=True)
    np.testing.assert_allclose(norm, [[[0.0, 0.5], [0.75, 1.0]]], atol=1e-6)


def test_normalize_constant_and_nonfinite() -> None:
    constant = np.full((2, 3, 3), 7.0)
    np.testing.assert_array_equal(render.normalize(constant), 0.0)
    np.testing.assert_array_equal(render.normalize(np.zeros((1, 2, 2)), symmetric=True), 0.5)
    bad = np.array([[[np.nan, 1.0], [np.inf, -np.inf]], [[2.0, 4.0], [np.nan, 3.0]]])
    norm = render.normalize(bad)
    assert np.isfinite(norm).all()
    assert norm[0, 1, 0] == 1.0 and norm[0, 1, 1] == 0.0
    # NaN counts as 0, also for the channel's range: [2, 4, 0, 3] / 4
    np.testing.assert_allclose(norm[1], [[0.5, 1.0], [0.0, 0.75]], atol=1e-6)


def test_normalize_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="at least a 2-D"):
        render.normalize(np.zeros(5))
    with pytest.raises(InputError, match="channel"):
        render.normalize(np.zeros((2, 2)), mode="pixel")


def test_reduce_maps_mean_max() -> None:
    maps = _rng().standard_normal((2, 5, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(render.reduce_maps(maps, "mean"), maps.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(render.reduce_maps(maps, "max"), maps.max(axis=1))
    assert render.reduce_maps(maps[0], "max").shape == (1, 4, 3)
    with pytest.raises(InputError, match="mean"):
        render.reduce_maps(maps, "median")


# ----------------------------------------------------------------------------- colormaps


def test_apply_colormap_matches_matplotlib() -> None:
    norm = _rng().random((2, 5, 6)).astype(np.float32)
    rgb = render.apply_colormap(norm, "viridis")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 5, 6, 3)
    expected = matplotlib.colormaps["viridis"](norm, bytes=True)[..., :3]
    np.testing.assert_array_equal(rgb, expected)
    gray = render.apply_colormap(norm, "gray")
    reference = matplotlib.colormaps["gray"](norm, bytes=True)[..., :3].astype(int)
    assert np.abs(gray.astype(int) - reference).max() <= 1


def test_unknown_colormap_lists_close_matches() -> None:
    with pytest.raises(InputError, match="unknown colormap 'virdis'.*viridis"):
        render.apply_colormap(np.zeros((2, 2)), "virdis")
    with pytest.raises(InputError, match="matplotlib.colormaps"):
        render.tile_grid(np.zeros((1, 2, 2)), render.GridOptions(cmap="nope"))


def test_long_colormap_is_sampled_to_256() -> None:
    assert render.colormap_lut("twilight").shape == (256, 3)
    assert render.colormap_lut("tab10").shape == (10, 3)


# ----------------------------------------------------------------------------- tile_grid


@pytest.mark.parametrize(("count", "columns", "rows"), [(10, 4, 3), (12, 4, 3), (1, None, 1),
                                                       (5, None, 3), (16, None, 4)])
def test_grid_geometry(count: int, columns: int | None, rows: int) -> None:
    opts = render.GridOptions(columns=columns, scale=3, padding=2, labels=False)
    image = render.tile_grid(np.ones((count, 5, 7)), opts)
    layout = render.grid_layout(count, 5, 7, opts)
    cols = columns or layout.columns
    assert (layout.rows, layout.columns) == (rows, cols)
    assert image.mode == "RGB"
    assert image.size == (cols * (7 * 3 + 2) + 2, rows * (5 * 3 + 2) + 2)
    assert layout.box(count - 1) == (2 + ((count - 1) % cols) * 23,
                                     2 + ((count - 1) // cols) * 17,
                                     2 + ((count - 1) % cols) * 23 + 21,
                                     2 + ((count - 1) // cols) * 17 + 15)


def test_grid_geometry_with_labels_title_colorbar() -> None:
    opts = render.GridOptions(columns=3, scale=2, title="conv1", colorbar=True)
    image = render.tile_grid(np.ones((7, 8, 8)), opts)
    layout = render.grid_layout(7, 8, 8, opts)
    assert layout.caption > 0 and layout.top > 0
    assert image.size == (layout.width, layout.height)
    assert layout.grid_height == 3 * (16 + layout.caption + 2) + 2
    assert layout.height > layout.top + layout.grid_height  # colour bar band
    left, top, right, bottom = layout.box(4)
    assert (right - left, bottom - top) == (16, 16)


def test_auto_scale_reaches_min_tile() -> None:
    # the smallest integer factor giving tiles of at least 64 px: ceil(64 / 7) = 10
    assert render.grid_layout(4, 7, 7).tile_width == 70
    assert render.grid_layout(4, 14, 14).tile_width == 70
    assert render.grid_layout(4, 13, 13).tile_width == 65
    assert render.grid_layout(4, 40, 40).tile_width == 80
    assert render.grid_layout(4, 112, 112).scale == 1
    capped = render.grid_layout(2048, 7, 7, render.GridOptions(max_pixels=1 << 20))
    assert capped.width * capped.height <= 1 << 20 or capped.scale == 1


def test_top_colour_at_channel_argmax_and_bottom_at_argmin() -> None:
    maps = _rng().standard_normal((6, 8, 9)).astype(np.float32)
    opts = render.GridOptions(scale=4, labels=False, cmap="viridis")
    image = render.tile_grid(maps, opts)
    layout = render.grid_layout(6, 8, 9, opts)
    lut = render.colormap_lut("viridis")
    for i in range(6):
        tile = _tile(image, layout, i)
        ymax, xmax = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        ymin, xmin = np.unravel_index(np.argmin(maps[i]), maps[i].shape)
        assert (tile[4 * ymax: 4 * ymax + 4, 4 * xmax: 4 * xmax + 4] == lut[-1]).all()
        assert (tile[4 * ymin: 4 * ymin + 4, 4 * xmin: 4 * xmin + 4] == lut[0]).all()
        brightest = np.argmax(tile.astype(int).sum(axis=2))
        assert divmod(int(brightest), tile.shape[1]) == (4 * ymax, 4 * xmax)


def test_nearest_upscale_is_exact_and_gaps_are_padding() -> None:
    maps = _rng().standard_normal((5, 3, 4)).astype(np.float32)
    opts = render.GridOptions(columns=3, scale=5, padding=2, labels=False,
                              pad_color=(255, 0, 255))
    image = render.tile_grid(maps, opts)
    layout = render.grid_layout(5, 3, 4, opts)
    colours = render.apply_colormap(render.normalize(maps), "viridis")
    pixels = np.asarray(image)
    for i in range(5):
        expected = np.repeat(np.repeat(colours[i], 5, axis=0), 5, axis=1)
        np.testing.assert_array_equal(_tile(image, layout, i), expected)
    mask = np.ones(pixels.shape[:2], bool)
    for i in range(5):
        left, top, right, bottom = layout.box(i)
        mask[top:bottom, left:right] = False
    assert (pixels[mask] == (255, 0, 255)).all()  # gaps and the empty sixth cell


def test_layer_mode_symmetric_zero_is_colormap_centre() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0], maps[1, 3, 3] = -3.0, 1.5
    opts = render.GridOptions(scale=2, labels=False, cmap="RdBu_r", mode="layer", symmetric=True)
    image = render.tile_grid(maps, opts)
    layout = render.grid_layout(2, 4, 4, opts)
    lut = render.colormap_lut("RdBu_r")
    centre = matplotlib.colormaps["RdBu_r"](0.5, bytes=True)[:3]
    np.testing.assert_array_equal(lut[128], centre)
    tile0, tile1 = _tile(image, layout, 0), _tile(image, layout, 1)
    assert (tile0[2:, 2:] == centre).all() and (tile1[:6, :6] == centre).all()
    assert (tile0[:2, :2] == lut[0]).all()
    assert (tile1[6:, 6:] == lut[192]).all()  # 1.5 of [-3, 3] -> 0.75


def test_labels_are_drawn_above_tiles() -> None:
    opts = render.GridOptions(scale=8)
    image = render.tile_grid(np.zeros((3, 8, 8)), opts)
    layout = render.grid_layout(3, 8, 8, opts)
    pixels = np.asarray(image).astype(int)
    for i in range(3):
        left, top, right, _ = layout.box(i)
        band = pixels[top - layout.caption: top, left:right]
        assert band.sum(axis=2).min() < 200  # dark text on the white caption band
    unlabelled = render.tile_grid(np.zeros((3, 8, 8)), render.GridOptions(scale=8, labels=False))
    assert unlabelled.height < image.height


def test_colorbar_shows_the_colormap_and_label_count_checked() -> None:
    opts = render.GridOptions(scale=4, colorbar=True, mode="layer", labels=False)
    image = render.tile_grid(_rng().standard_normal((4, 6, 6)), opts)
    layout = render.grid_layout(4, 6, 6, opts)
    strip = np.asarray(image)[layout.top + layout.grid_height + 5]
    lut = render.colormap_lut("viridis")
    assert (strip == lut[0]).all(axis=1).any() and (strip == lut[-1]).all(axis=1).any()
    with pytest.raises(InputError, match="label texts"):
        render.tile_grid(np.ones((3, 2, 2)), render.GridOptions(label_texts=("a",)))


def test_tile_grid_nan_input_and_bad_shapes() -> None:
    maps = _rng().standard_normal((4, 5, 5))
    maps[0] = np.nan
    maps[1, 0, 0] = np.inf
    image = render.tile_grid(maps, render.GridOptions(title="nan", colorbar=True))
    assert image.mode == "RGB" and image.size[0] > 0
    assert render.tile_grid(np.ones((1, 3, 5, 5))).mode == "RGB"
    with pytest.raises(InputError, match="one sample"):
        render.tile_grid(np.ones((2, 3, 5, 5)))
    with pytest.raises(InputError, match=">= 1"):
        render.tile_grid(np.ones((2, 5, 5)), render.GridOptions(scale=0))


# ----------------------------------------------------------------------------- filters


def _edge_filters() -> np.ndarray:
    row = np.array([[-1, -1, 1, 1]] * 4, np.float32)
    return np.stack([row, -row, row.T, -row.T])[:, None]


def test_format_cell_values() -> None:
    weight = _rng().standard_normal((2, 1, 3, 3)).astype(np.float32)
    assert compose.format_cell_values(weight) == [f"{v:.2f}" for v in weight.ravel()]
    assert compose.format_cell_values(_edge_filters())[:4] == ["-1.00", "-1.00", "1.00", "1.00"]


def test_annotated_filter_text_colour_follows_cell_luminance() -> None:
    weight = np.array([[[[-1.0, 0.05], [0.1, 1.0]]]], np.float32)
    opts = render.FilterOptions(annotate=True, cell=40, colorbar=False)
    image = compose.render_filters(weight, opts)
    grid = render.GridOptions(columns=1, scale=40, min_tile=48, symmetric=True, cmap="RdBu_r",
                              mode="layer", labels=False, row_labels=("0",),
                              column_labels=("+0",), colorbar=False)
    layout = render.grid_layout(1, 2, 2, grid)
    pixels = np.asarray(image).astype(int)
    left, top, _, _ = layout.box(0)
    dark = pixels[top: top + 40, left: left + 40]  # -1.00: dark blue cell
    light = pixels[top: top + 40, left + 40: left + 80]  # 0.05: near-white cell
    assert dark[0, 0].sum() < 300 and light[0, 0].sum() > 600
    assert (dark.min(axis=2) > 225).sum() > 10  # white text
    assert (light.max(axis=2) < 60).sum() > 10  # black text


def test_annotated_edge_filters_geometry() -> None:
    image = compose.render_filters(_edge_filters(), render.FilterOptions(annotate=True, cell=36,
                                                                         title="edges"))
    assert image.mode == "RGB"
    assert image.width >= 2 * 4 * 36  # two columns of 4x4 cells of 36 px


def test_filter_grid_rows_are_outputs_columns_inputs() -> None:
    weight = _rng().standard_normal((5, 4, 3, 3)).astype(np.float32)
    opts = render.FilterOptions(max_filters=3, max_inputs=2, colorbar=False, cell=10)
    image = compose.render_filters(weight, opts)
    # rows are outputs, columns inputs: headers "out 0", "1", "2" and "in 0", "1"
    grid = render.GridOptions(columns=2, scale=10, min_tile=48, labels=False,
                              row_labels=("out 0", "1", "2"), column_labels=("in 0", "1"),
                              title="showing 3 of 5 filters, 2 of 4 inputs",
                              shape=(5, 4, 3, 3))
    layout = render.grid_layout(6, 3, 3, grid)
    assert (layout.rows, layout.columns) == (3, 2)
    assert image.size == (layout.width, layout.height)
    lut = render.colormap_lut("RdBu_r")
    part = weight[:3, :2]
    o, i, y, x = np.unravel_index(np.argmax(np.abs(part)), part.shape)
    left, top, _, _ = layout.box(int(o) * 2 + int(i))
    colour = np.asarray(image)[top + 10 * int(y) + 5, left + 10 * int(x) + 5]
    assert tuple(colour) in {tuple(lut[0]), tuple(lut[-1])}


def test_rgb_filter_with_red_input_renders_reddish() -> None:
    weight = np.zeros((2, 3, 5, 5), np.float32)
    weight[0, 0] = _rng().random((5, 5)) + 0.5
    weight[1, 2] = 1.0
    weight[1, 2, 0, 0] = 0.0
    image = compose.render_filters(weight, render.FilterOptions(cell=8))
    layout = render.grid_layout(2, 5, 5, render.GridOptions(
        columns=2, scale=8, colorbar=False, labels=False, row_labels=("0",),
        column_labels=("+0", "+1")))
    red = _tile(image, layout, 0).reshape(-1, 3).astype(int).mean(axis=0)
    blue = _tile(image, layout, 1).reshape(-1, 3).astype(int).mean(axis=0)
    assert red[0] > 150 and red[1] < 20 and red[2] < 20
    assert blue[2] > 150 and blue[0] < 20
    forced = compose.render_filters(weight, render.FilterOptions(rgb=False, colorbar=False))
    assert forced.size != image.size


def test_render_filters_rejects_bad_weight() -> None:
    with pytest.raises(InputError, match=r"\(O, I, kH, kW\)"):
        compose.render_filters(np.ones((3, 3)))
    with pytest.raises(InputError, match="3 input channels"):
        compose.render_filters(np.ones((2, 4, 3, 3)), render.FilterOptions(rgb=True))


# ----------------------------------------------------------------------------- composition


def test_render_channel_blocks() -> None:
    map2d = np.arange(6, dtype=np.float32).reshape(2, 3)
    image = render.render_channel(map2d, scale=4)
    assert image.size == (12, 8) and image.mode == "RGB"
    pixels = np.asarray(image)
    lut = render.colormap_lut("viridis")
    assert (pixels[4:, 8:] == lut[-1]).all() and (pixels[:4, :4] == lut[0]).all()
    assert render.render_channel(np.ones((7, 7))).size == (259, 259)


def test_side_by_side_size_and_content() -> None:
    a = Image.new("RGB", (30, 20), (255, 0, 0))
    b = Image.new("L", (40, 25), 0)
    out = compose.render_side_by_side([a, b], ["before", "after"], gap=5)
    assert out.mode == "RGB" and out.width == 30 + 40 + 3 * 5
    column = np.asarray(out)[:, 10]
    assert (column == (255, 0, 0)).all(axis=1).sum() == 20
    with pytest.raises(InputError, match="one label per image"):
        compose.render_side_by_side([a], [])


def test_overlay_alpha_extremes_and_resize() -> None:
    rng = _rng()
    image = Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    heat = rng.random((16, 20)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(compose.overlay_heatmap(image, heat, alpha=0.0)),
                                  np.asarray(image))
    np.testing.assert_array_equal(np.asarray(compose.overlay_heatmap(image, heat, alpha=1.0)),
                                  render.apply_colormap(heat, "jet"))
    half = compose.overlay_heatmap(image, heat, alpha=0.5)
    expected = (np.asarray(image).astype(float) + render.apply_colormap(heat, "jet")) / 2
    assert np.abs(np.asarray(half).astype(float) - expected).max() <= 1.0
    small = compose.overlay_heatmap(image.convert("L"), heat[::4, ::4], alpha=0.3)
    assert small.size == image.size and small.mode == "RGB"
    with pytest.raises(InputError, match="alpha"):
        compose.overlay_heatmap(image, heat, alpha=1.5)
