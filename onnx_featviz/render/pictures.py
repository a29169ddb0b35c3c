"""Arrays to pictures: normalization, colormaps, text, grid layout and tiling of channel maps."""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from onnx_featviz.errors import InputError
from onnx_featviz.render.fonts import Color, _font, _ink, _text_height, _text_masks, _text_width

logger = logging.getLogger(__name__)




NORMALIZE_MODES = ("channel", "layer")


REDUCTIONS = ("mean", "max")


_MARGIN = 4


_BAR_HEIGHT = 10


_BAR_MIN_WIDTH = 160


@dataclass(frozen=True, slots=True)
class GridOptions:
    """How :func:`tile_grid` draws a stack of maps.

    ``scale=None`` picks the smallest integer factor that makes a tile's longer side at least
    ``min_tile`` pixels, lowered while the picture would exceed ``max_pixels``.
    ``mode`` is ``"channel"`` (each map scaled to its own min..max) or ``"layer"`` (one scale
    for all);
    ``symmetric`` maps ``[-m, m]`` to the colormap so that 0 is its centre (use a diverging
    colormap such as ``"RdBu_r"``); with ``mode="channel"`` the colour bar's ends give the
    range of the channels' minima and maxima. ``labels`` writes each tile's channel index
    (``label_start + i``) or ``label_texts[i]`` above it; ``row_labels`` / ``column_labels``
    instead write one header per grid row (left) / column (above the grid), e.g. output and
    input channels of a filter bank; ``title`` is followed by ``shape``
    (default: the stack's ``(C, H, W)``); ``colorbar`` adds a strip with the value at its ends
    and middle.
    """

    columns: int | None = None
    scale: int | None = None
    min_tile: int = 64
    max_pixels: int = 1 << 23
    padding: int = 2
    pad_color: Color = (255, 255, 255)
    cmap: str = "viridis"
    mode: str = "channel"
    symmetric: bool = False
    labels: bool = True
    label_start: int = 0
    label_texts: tuple[str, ...] | None = None
    title: str | None = None
    colorbar: bool = False
    font_size: int = 10
    shape: tuple[int, ...] | None = None
    row_labels: tuple[str, ...] | None = None
    column_labels: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """How :func:`render_filters` draws a conv weight ``(O, I, kH, kW)``.

    ``rgb=None`` draws each filter as one colour patch when ``I == 3`` (and ``annotate`` is
    off), its inputs taken in ``channel_order`` (``"BGR"``: input 0 is blue); otherwise one
    tile per (output, input) pair, rows = output channels, columns = input channels (a
    square-ish grid of outputs when ``I == 1``), capped at ``max_filters`` outputs and
    ``max_inputs`` inputs; a capped picture says so in its title. ``annotate`` writes each
    value (2 decimals) on its cell of ``cell`` pixels (``None``: wide enough for the text, at
    least 36). Values share one symmetric scale (``mode="layer"``) unless ``mode="channel"``.
    """

    rgb: bool | None = None
    annotate: bool = False
    cmap: str = "RdBu_r"
    title: str | None = None
    max_filters: int = 64
    max_inputs: int = 16
    mode: str = "layer"
    colorbar: bool = True
    cell: int | None = None
    padding: int = 2
    channel_order: str = "RGB"


@dataclass(frozen=True, slots=True)
class GridLayout:
    """Pixel geometry of a tile grid; ``box(i)`` is tile ``i``'s (left, top, right, bottom)."""

    count: int
    rows: int
    columns: int
    scale: int
    tile_height: int
    tile_width: int
    padding: int
    caption: int
    top: int
    grid_width: int
    grid_height: int
    width: int
    height: int
    left: int = 0
    header: int = 0

    @property
    def pitch(self) -> tuple[int, int]:
        """Distance in pixels between the top-left corners of neighbouring tiles (y, x)."""
        return (self.tile_height + self.padding + self.caption, self.tile_width + self.padding)

    def box(self, index: int) -> tuple[int, int, int, int]:
        """Return (left, top, right, bottom) of tile ``index``; right/bottom exclusive."""
        if not 0 <= index < self.count:
            raise InputError(f"tile index {index} out of range 0..{self.count - 1}")
        row, col = divmod(index, self.columns)
        top = self.top + self.padding + self.caption + row * self.pitch[0]
        left = self.left + self.padding + col * self.pitch[1]
        return (left, top, left + self.tile_width, top + self.tile_height)


def normalize(arr: NDArray[np.generic], *, mode: str = "channel",
              symmetric: bool = False) -> NDArray[np.float32]:
    """Scale values to [0, 1] per channel or per layer.

    Args:
        arr: ``(..., H, W)`` real array (ndim >= 2); channels are the leading axes.
        mode: ``"channel"`` scales each ``(H, W)`` map to its own min..max; ``"layer"`` uses
            the min..max of the whole array.
        symmetric: map ``[-m, m]`` (``m`` = max absolute value) to [0, 1] so 0 -> 0.5.

    Returns:
        float32 array of ``arr``'s shape in [0, 1]. A constant map gives 0 (all zeros give 0.5
        when symmetric; a constant non-zero value gives 0 or 1 by its sign). NaN is treated as
        0, +Inf shows as 1 and -Inf as 0; they do not affect the scale.

    Raises:
        InputError: fewer than 2 dims or an unknown mode.
    """
    data, bad = _finite(arr)
    lo, hi = _limits(data, mode=mode, symmetric=symmetric)
    span = hi - lo
    out = np.subtract(data, lo, dtype=np.float32)
    np.divide(out, np.where(span > 0, span, np.float32(1)), out=out)
    if symmetric:
        out[np.broadcast_to(span <= 0, out.shape)] = 0.5
    np.clip(out, 0.0, 1.0, out=out)
    if bad is not None:
        raw = np.asarray(arr).astype(np.float32, copy=False)
        out[np.isposinf(raw)] = 1.0
        out[np.isneginf(raw)] = 0.0
    return out


def value_limits(arr: NDArray[np.generic], *, mode: str = "channel", symmetric: bool = False
                 ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return the (low, high) values that :func:`normalize` maps to 0 and 1.

    Returns:
        Two float32 arrays broadcastable against ``arr``: shape ``(..., 1, 1)`` for
        ``mode="channel"``, all-ones dims for ``mode="layer"``.
    """
    data, _ = _finite(arr)
    return _limits(data, mode=mode, symmetric=symmetric)


def _finite(arr: NDArray[np.generic]) -> tuple[NDArray[np.float32], NDArray[np.bool_] | None]:
    data = np.asarray(arr)
    if data.ndim < 2:
        raise InputError(f"expected an array of maps (..., H, W), got shape {data.shape}; "
                         "pass at least a 2-D map")
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if finite.all():
        return data, None
    bad = ~finite
    logger.warning("%d non-finite values (NaN/Inf) in the maps; scaled as 0", int(bad.sum()))
    return np.where(finite, data, np.float32(0)), bad


def _limits(data: NDArray[np.float32], *, mode: str, symmetric: bool
            ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    if mode not in NORMALIZE_MODES:
        raise InputError(f"unknown normalization mode {mode!r}; use one of {NORMALIZE_MODES}")
    axes = (-2, -1) if mode == "channel" else tuple(range(data.ndim))
    if symmetric:
        high = np.abs(data).max(axis=axes, keepdims=True)
        return -high, high
    return data.min(axis=axes, keepdims=True), data.max(axis=axes, keepdims=True)


def reduce_maps(maps: NDArray[np.generic], how: str = "mean") -> NDArray[np.float32]:
    """Aggregate all channels of a layer into one map per sample.

    Args:
        maps: ``(N, C, H, W)`` or ``(C, H, W)`` activations.
        how: ``"mean"`` or ``"max"`` over the channel axis (NaN propagates).

    Returns:
        float32 ``(N, H, W)`` (``N = 1`` for a 3-D input).

    Raises:
        InputError: wrong number of dims or unknown ``how``.
    """
    data = np.asarray(maps)
    if data.ndim not in (3, 4):
        raise InputError(f"expected (N, C, H, W) or (C, H, W) maps, got shape {data.shape}")
    if how not in REDUCTIONS:
        raise InputError(f"unknown reduction {how!r}; use one of {REDUCTIONS}")
    batch = data[None] if data.ndim == 3 else data
    reduced = batch.mean(axis=1) if how == "mean" else batch.max(axis=1)
    return np.asarray(reduced, dtype=np.float32)


def colormap_lut(cmap: str) -> NDArray[np.uint8]:
    """Return the colormap's lookup table as ``(L, 3)`` uint8 RGB, ``L <= 256``.

    Colormaps with up to 256 entries are returned entry by entry (exactly matplotlib's colours);
    longer ones are sampled at 256 evenly spaced points.

    Raises:
        InputError: unknown colormap name (the message lists close matches).
    """
    if cmap not in matplotlib.colormaps:
        names = sorted(matplotlib.colormaps)
        near = difflib.get_close_matches(cmap, names, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(near)}" if near else "no close matches"
        raise InputError(f"unknown colormap {cmap!r}; {hint}; all names are in "
                         "matplotlib.colormaps (e.g. viridis, gray, RdBu_r, jet)")
    colormap = matplotlib.colormaps[cmap]
    if colormap.N <= 256:
        rgba = colormap(np.arange(colormap.N), bytes=True)
    else:
        rgba = colormap((np.arange(256) + 0.5) / 256, bytes=True)
    return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8)[:, :3])


def _quantize(norm: NDArray[np.float32], levels: int) -> NDArray[np.uint8]:
    """Map [0, 1] to colormap indices the way matplotlib does (floor(x * L), top -> L - 1)."""
    scaled = np.multiply(norm, levels, dtype=np.float32)
    np.minimum(scaled, levels - 1, out=scaled)
    return scaled.astype(np.uint8)


def apply_colormap(norm: NDArray[np.floating], cmap: str = "viridis") -> NDArray[np.uint8]:
    """Colour values in [0, 1] with a matplotlib colormap.

    Args:
        norm: ``(H, W)`` or ``(N, H, W)`` (any shape) values in [0, 1]; NaN shows as 0.
        cmap: matplotlib colormap name; ``"gray"`` takes a fast path (R = G = B = index).

    Returns:
        uint8 RGB array of shape ``norm.shape + (3,)``.

    Raises:
        InputError: unknown colormap.
    """
    lut = colormap_lut(cmap)
    values = np.nan_to_num(np.clip(np.asarray(norm, dtype=np.float32), 0.0, 1.0))
    index = _quantize(values, len(lut))
    if cmap == "gray":
        return np.repeat(index[..., None], 3, axis=-1)
    return lut[index]


def grid_layout(count: int, height: int, width: int,
                options: GridOptions | None = None) -> GridLayout:
    """Compute where :func:`tile_grid` puts ``count`` maps of ``(height, width)``.

    Returns:
        The layout: ``rows * columns >= count`` cells, tile size ``(height * scale,
        width * scale)``; grid size ``columns * (tile_width + padding) + padding`` by
        ``rows * (tile_height + caption + padding) + padding``; picture ``width`` is at least
        the grid's (wider when the title or colour bar need it).

    Raises:
        InputError: ``count < 1``, non-positive sizes, columns or scale.
    """
    opts = options or GridOptions()
    if count < 1 or height < 1 or width < 1:
        raise InputError(f"cannot lay out {count} maps of {height}x{width}; need at least one "
                         "non-empty map")
    if opts.columns is not None and opts.columns < 1 or opts.scale is not None and opts.scale < 1:
        raise InputError(f"columns and scale must be >= 1, got columns={opts.columns}, "
                         f"scale={opts.scale}")
    auto = max(1, min(count, math.ceil(math.sqrt(count * height / width))))
    columns = min(opts.columns or auto, count)
    rows = math.ceil(count / columns)
    caption = _text_height(_font(opts.font_size)) + 1 if opts.labels else 0
    top = _text_height(_font(opts.font_size + 2)) + 2 * _MARGIN if opts.title else 0
    font = _font(opts.font_size)
    header = _text_height(font) + _MARGIN if opts.column_labels else 0
    left = (max(_text_width(font, t) for t in opts.row_labels) + 2 * _MARGIN
            if opts.row_labels else 0)
    bottom = _BAR_HEIGHT + _text_height(_font(opts.font_size)) + 4 * _MARGIN if opts.colorbar else 0
    scale = opts.scale or _auto_scale(rows, columns, height, width, caption, opts)
    pad = opts.padding
    grid_w = columns * (width * scale + pad) + pad
    grid_h = rows * (height * scale + caption + pad) + pad
    title_w = _text_width(_font(opts.font_size + 2), _title(opts, count, height, width))
    full_w = max(left + grid_w, _BAR_MIN_WIDTH if opts.colorbar else 0, title_w + 2 * _MARGIN)
    return GridLayout(count, rows, columns, scale, height * scale, width * scale, pad, caption,
                      top + header, grid_w, grid_h, full_w, top + header + grid_h + bottom,
                      left, header)


def _auto_scale(rows: int, columns: int, height: int, width: int, caption: int,
                opts: GridOptions) -> int:
    scale = max(1, math.ceil(opts.min_tile / max(height, width)))
    pad = opts.padding
    while scale > 1 and ((rows * (height * scale + caption + pad) + pad)
                         * (columns * (width * scale + pad) + pad)) > opts.max_pixels:
        scale -= 1
    return scale


def _title(opts: GridOptions, count: int, height: int, width: int) -> str:
    if not opts.title:
        return ""
    shape = opts.shape or (count, height, width)
    return f"{opts.title}   ({', '.join(str(d) for d in shape)})"


def _cells(canvas: NDArray[np.uint8], layout: GridLayout, shape: tuple[int, ...],
           y0: int) -> NDArray[np.uint8]:
    """Writable strided view ``(rows, a, [s,] columns, b, [s,] ...)`` of every grid cell.

    ``shape`` is ``(a, b)`` for caption bands or ``(h, s, w, s)`` for upscaled tiles; extra
    trailing canvas axes (RGB) are kept.
    """
    ry, rx = canvas.strides[0], canvas.strides[1]
    py, px = layout.pitch
    trail = canvas.shape[2:]
    dims: tuple[int, ...]
    steps: tuple[int, ...]
    if len(shape) == 2:
        dims = (layout.rows, shape[0], layout.columns, shape[1])
        steps = (py * ry, ry, px * rx, rx)
    else:
        h, s, w, _ = shape
        dims = (layout.rows, h, s, layout.columns, w, s)
        steps = (py * ry, s * ry, ry, px * rx, s * rx, rx)
    base = canvas[y0:, layout.left + layout.padding:]
    return np.lib.stride_tricks.as_strided(
        base, dims + trail, steps + canvas.strides[2:], writeable=True)


def _place_tiles(canvas: NDArray[np.uint8], tiles: NDArray[np.uint8], layout: GridLayout) -> None:
    """Write ``tiles`` ``(N, h, w[, 3])`` upscaled by ``layout.scale`` into ``canvas``."""
    n, h, w = tiles.shape[:3]
    cells = layout.rows * layout.columns
    if n < cells:
        filler = np.zeros((cells - n,) + tiles.shape[1:], np.uint8)
        tiles = np.concatenate([tiles, filler])
    s = layout.scale
    view = _cells(canvas, layout, (h, s, w, s), layout.top + layout.padding + layout.caption)
    grid = tiles.reshape((layout.rows, layout.columns, h, w) + tiles.shape[3:])
    grid = np.moveaxis(grid, 1, 2)  # (rows, h, columns, w, ...)
    view[...] = grid[:, :, None, :, :, None]


def _paint_gaps(image: Image.Image, layout: GridLayout, color: Color) -> None:
    """Fill everything that is not a tile (gaps, captions, empty cells, margins) with color."""
    py, px = layout.pitch
    y_first = layout.top + layout.padding + layout.caption
    boxes = [(0, 0, layout.width, y_first), (0, layout.top + layout.grid_height,
                                              layout.width, layout.height),
             (layout.left + layout.grid_width, 0, layout.width, layout.height),
             (0, 0, layout.left, layout.height)]
    for row in range(layout.rows):
        y = y_first + row * py + layout.tile_height
        boxes.append((0, y, layout.width, y + layout.padding + layout.caption))
    boxes += [(layout.left + c * px, 0, layout.left + c * px + layout.padding, layout.height)
              for c in range(layout.columns + 1)]
    if layout.rows * layout.columns > layout.count:
        left, top, _, _ = layout.box(layout.count - 1)
        boxes.append((left + px, top, layout.width, layout.height))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:  # exclusive right/bottom; skip empty boxes
        if x1 > x0 and y1 > y0:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)


def _index_image(index: NDArray[np.uint8], layout: GridLayout, lut: NDArray[np.uint8],
                 pad_color: Color) -> Image.Image:
    """Tile colormap indices ``(N, h, w)`` and colour them through a palette -> RGB."""
    canvas = np.zeros((layout.height, layout.width), np.uint8)
    _place_tiles(canvas, index, layout)
    image = Image.fromarray(canvas)
    image.putpalette(lut.tobytes(), "RGB")
    rgb = image.convert("RGB")
    _paint_gaps(rgb, layout, pad_color)
    return rgb


def _rgb_image(tiles: NDArray[np.uint8], layout: GridLayout, pad_color: Color) -> Image.Image:
    """Tile RGB patches ``(N, h, w, 3)`` on a ``pad_color`` canvas."""
    canvas = np.empty((layout.height, layout.width, 3), np.uint8)
    canvas[...] = pad_color
    _place_tiles(canvas, tiles, layout)
    rgb = Image.fromarray(canvas)
    _paint_gaps(rgb, layout, pad_color)
    return rgb


def _label_texts(opts: GridOptions, count: int) -> list[str]:
    if opts.label_texts is not None:
        if len(opts.label_texts) != count:
            raise InputError(f"got {len(opts.label_texts)} label texts for {count} tiles; "
                             "give one per tile")
        return list(opts.label_texts)
    return [str(opts.label_start + i) for i in range(count)]


def _draw_labels(image: Image.Image, layout: GridLayout, texts: list[str],
                 opts: GridOptions) -> None:
    """Write ``texts[i]`` in the caption band above tile i (one masked paste per grid row)."""
    masks = _text_masks(texts, _font(opts.font_size))
    height = min(masks.shape[1], layout.caption)
    width = min(masks.shape[2], layout.tile_width + layout.padding)
    cells = layout.rows * layout.columns
    grid = np.zeros((cells, height, width), np.uint8)
    grid[: len(texts)] = masks[:, :height, :width]
    bands = np.zeros((layout.rows, height, layout.grid_width), np.uint8)
    base = bands[:, :, layout.padding:]
    view = np.lib.stride_tricks.as_strided(
        base, (layout.rows, height, layout.columns, width),
        (base.strides[0], base.strides[1], layout.pitch[1] * base.strides[2], base.strides[2]),
        writeable=True)
    view[...] = grid.reshape(layout.rows, layout.columns, height, width).transpose(0, 2, 1, 3)
    ink = _ink(opts.pad_color)
    for row in range(layout.rows):
        y = layout.top + layout.padding + row * layout.pitch[0]
        image.paste(ink, (layout.left, y, layout.left + layout.grid_width, y + height),
                    Image.fromarray(bands[row]))


def _draw_title(image: Image.Image, text: str, opts: GridOptions) -> None:
    draw = ImageDraw.Draw(image)
    draw.text((_MARGIN, _MARGIN), text, fill=_ink(opts.pad_color), font=_font(opts.font_size + 2))


def _draw_headers(image: Image.Image, layout: GridLayout, opts: GridOptions) -> None:
    """Write ``row_labels`` left of each grid row and ``column_labels`` above each column."""
    draw = ImageDraw.Draw(image)
    font, ink = _font(opts.font_size), _ink(opts.pad_color)
    for row, text in enumerate((opts.row_labels or ())[: layout.rows]):
        _, top, _, bottom = layout.box(row * layout.columns)
        draw.text((layout.left - _MARGIN, (top + bottom) // 2), text, fill=ink, font=font,
                  anchor="rm")
    for col, text in enumerate((opts.column_labels or ())[: layout.columns]):
        left, _, right, _ = layout.box(col)
        draw.text(((left + right) // 2, layout.top - layout.header), text, fill=ink,
                  font=font, anchor="ma")


def _tick_texts(lo: NDArray[np.float32], hi: NDArray[np.float32],
                opts: GridOptions) -> tuple[str, str, str]:
    if opts.mode == "layer":
        low, high = float(lo.min()), float(hi.max())
        return (f"{low:.3g}", f"{(low + high) / 2:.3g}", f"{high:.3g}")
    top = _span_text(hi)
    if opts.symmetric:
        return (f"-max {top}", "0, each channel scaled", f"+max {top}")
    return (f"min {_span_text(lo)}", "each channel scaled", f"max {top}")


def _span_text(values: NDArray[np.float32]) -> str:
    """``"3.2"`` when every channel has this end value, else ``"1.5..3.2"`` (their range)."""
    low, high = float(values.min()), float(values.max())
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}..{high:.3g}"


def _draw_colorbar(image: Image.Image, layout: GridLayout, lut: NDArray[np.uint8],
                   ticks: tuple[str, str, str], opts: GridOptions) -> None:
    """Draw a horizontal colour strip under the grid with three value ticks."""
    width = max(_BAR_MIN_WIDTH - 2 * _MARGIN, min(layout.width - 2 * _MARGIN, 320))
    x0, y0 = _MARGIN, layout.top + layout.grid_height + _MARGIN
    pos = np.rint(np.linspace(0, len(lut) - 1, width)).astype(np.intp)
    strip = np.broadcast_to(lut[pos][None], (_BAR_HEIGHT, width, 3))
    image.paste(Image.fromarray(np.ascontiguousarray(strip)), (x0, y0))
    draw = ImageDraw.Draw(image)
    ink = _ink(opts.pad_color)
    font = _font(opts.font_size)
    y1 = y0 + _BAR_HEIGHT
    for x, text, anchor in zip((x0, x0 + width // 2, x0 + width - 1), ticks, ("la", "ma", "ra"),
                               strict=True):
        draw.line((x, y1, x, y1 + 2), fill=ink)
        draw.text((x, y1 + 3), text, fill=ink, font=font, anchor=anchor)


def _as_stack(maps: NDArray[np.generic]) -> NDArray[np.generic]:
    data = np.asarray(maps)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] == 0:
        raise InputError(f"expected maps of shape (C, H, W) or (1, C, H, W), got {data.shape}; "
                         "pass one sample, e.g. maps[i]")
    return data


def tile_grid(maps: NDArray[np.generic], options: GridOptions | None = None) -> Image.Image:
    """Draw every map of a layer as one colour-mapped tile of a grid.

    Args:
        maps: ``(C, H, W)`` (also ``(H, W)`` or ``(1, C, H, W)``) real values.
        options: see :class:`GridOptions`; the layout is :func:`grid_layout`'s.

    Returns:
        RGB image of ``grid_layout(C, H, W, options)``'s (width, height); tile i shows
        ``maps[i]`` upscaled by an integer factor with nearest neighbour.

    Raises:
        InputError: bad shape, unknown colormap or normalization mode, wrong label count.
    """
    opts = options or GridOptions()
    stack = _as_stack(maps)
    lut = colormap_lut(opts.cmap)
    data, _ = _finite(stack)
    lo, hi = _limits(data, mode=opts.mode, symmetric=opts.symmetric)
    index = _quantize(normalize(stack, mode=opts.mode, symmetric=opts.symmetric), len(lut))
    layout = grid_layout(stack.shape[0], stack.shape[1], stack.shape[2], opts)
    image = _index_image(index, layout, lut, opts.pad_color)
    _decorate(image, layout, opts, lut, _tick_texts(lo, hi, opts))
    return image


def _decorate(image: Image.Image, layout: GridLayout, opts: GridOptions,
              lut: NDArray[np.uint8] | None, ticks: tuple[str, str, str]) -> None:
    count = layout.count
    height, width = layout.tile_height // layout.scale, layout.tile_width // layout.scale
    if opts.labels:
        _draw_labels(image, layout, _label_texts(opts, count), opts)
    if opts.title:
        _draw_title(image, _title(opts, count, height, width), opts)
    if opts.row_labels or opts.column_labels:
        _draw_headers(image, layout, opts)
    if opts.colorbar and lut is not None:
        _draw_colorbar(image, layout, lut, ticks, opts)


def render_channel(map2d: NDArray[np.generic], *, cmap: str = "viridis",
                   scale: int | None = None, symmetric: bool = False) -> Image.Image:
    """Draw one ``(H, W)`` map alone, min..max scaled (``scale=None``: longer side >= 256 px).

    Returns:
        RGB image of size ``(W * scale, H * scale)``; each value is a ``scale x scale`` block.

    Raises:
        InputError: not 2-D, scale < 1, unknown colormap.
    """
    data = np.asarray(map2d)
    if data.ndim != 2 or data.size == 0:
        raise InputError(f"expected one (H, W) map, got shape {data.shape}; pick a channel")
    if scale is not None and scale < 1:
        raise InputError(f"scale must be >= 1, got {scale}")
    factor = scale or max(1, math.ceil(256 / max(data.shape)))
    lut = colormap_lut(cmap)
    index = _quantize(normalize(data, mode="layer", symmetric=symmetric), len(lut))
    big = np.repeat(np.repeat(index, factor, axis=0), factor, axis=1)
    image = Image.fromarray(big)
    image.putpalette(lut.tobytes(), "RGB")
    return image.convert("RGB")

