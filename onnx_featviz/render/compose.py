"""Pictures made of pictures: filter banks (annotated or RGB), side-by-side panels, heatmap
overlays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from onnx_featviz.errors import InputError
from onnx_featviz.render.fonts import _font, _ink, _text_height, _text_width
from onnx_featviz.render.pictures import (
    FilterOptions,
    GridOptions,
    _decorate,
    _rgb_image,
    apply_colormap,
    grid_layout,
    logger,
    normalize,
    tile_grid,
)


def format_cell_values(weight: NDArray[np.generic]) -> list[str]:
    """Return the text written on each annotated filter cell, in C order: ``f"{v:.2f}"``."""
    return [f"{float(v):.2f}" for v in np.asarray(weight).ravel()]


def _check_weight(weight: NDArray[np.generic]) -> NDArray[np.float32]:
    data = np.asarray(weight)
    if data.ndim == 3:
        data = data[:, :, None, :]  # 1-D conv (O, I, kW)
    if data.ndim != 4 or data.size == 0:
        raise InputError(f"expected a conv weight (O, I, kH, kW), got shape {data.shape}")
    return data.astype(np.float32, copy=False)


def render_filters(weight: NDArray[np.generic],
                   options: FilterOptions | None = None) -> Image.Image:
    """Draw a conv layer's filters.

    Args:
        weight: ``(O, I, kH, kW)`` float weights (``(O, I, kW)`` is read as ``kH = 1``).
        options: see :class:`FilterOptions`.

    Returns:
        RGB image. RGB mode: a grid of ``O'`` colour patches (input channels as R, G, B in
        ``channel_order``), each filter min..max scaled on its own. Otherwise a grid of
        ``O' * I'`` tiles, rows = outputs and columns = inputs (row headers ``out o``, column
        headers ``in i``); with ``I == 1`` a square-ish grid whose row header is the first
        filter of the row and column header the offset ``+c``. One symmetric diverging scale
        with a colour bar; annotated cells carry :func:`format_cell_values`. When ``O' < O`` or
        ``I' < I`` the title ends in ``showing O' of O filters, I' of I inputs``.

    Raises:
        InputError: bad shape, caps < 1, unknown colormap or channel order.
    """
    opts = options or FilterOptions()
    data = _check_weight(weight)
    if opts.max_filters < 1 or opts.max_inputs < 1:
        raise InputError(f"max_filters and max_inputs must be >= 1, got {opts.max_filters}, "
                         f"{opts.max_inputs}")
    if opts.channel_order not in ("RGB", "BGR"):
        raise InputError(f"unknown channel order {opts.channel_order!r}; use RGB or BGR")
    rgb = opts.rgb if opts.rgb is not None else (data.shape[1] == 3 and not opts.annotate)
    title = filter_title(data.shape, opts)
    if rgb:
        return _rgb_filters(data[: opts.max_filters], opts, data.shape, title)
    part = data[: opts.max_filters, : opts.max_inputs]
    grid = _filter_grid_options(part, opts, data.shape, title)
    if not opts.annotate:
        return tile_grid(part.reshape(-1, *part.shape[2:]), grid)
    return _annotated(part, grid)


def filter_title(shape: tuple[int, ...], opts: FilterOptions) -> str | None:
    """Return the title :func:`render_filters` draws for a ``(O, I, kH, kW)`` weight: ``title``
    followed by ``showing O' of O filters, I' of I inputs`` for what the caps leave out."""
    out_c, in_c = shape[:2]
    rgb = opts.rgb if opts.rgb is not None else (in_c == 3 and not opts.annotate)
    parts = []
    if out_c > opts.max_filters:
        parts.append(f"{opts.max_filters} of {out_c} filters")
    if in_c > opts.max_inputs and not rgb:
        parts.append(f"{opts.max_inputs} of {in_c} inputs")
    if not parts:
        return opts.title
    logger.info("drawing %s", ", ".join(parts))
    note = "showing " + ", ".join(parts)
    return f"{opts.title}  {note}" if opts.title else note


def _headers(out_c: int, in_c: int) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """Return (columns, row headers, column headers) of a filter grid."""
    if in_c > 1:
        return (in_c, ("out 0", *(str(o) for o in range(1, out_c))),
                ("in 0", *(str(i) for i in range(1, in_c))))
    columns = max(1, min(out_c, math.ceil(math.sqrt(out_c))))
    rows = math.ceil(out_c / columns)
    return (columns, tuple(str(r * columns) for r in range(rows)),
            tuple(f"+{c}" for c in range(columns)))


def _filter_grid_options(part: NDArray[np.float32], opts: FilterOptions,
                         shape: tuple[int, ...], title: str | None) -> GridOptions:
    out_c, in_c, k_h, k_w = part.shape
    columns, rows, cols = _headers(out_c, in_c)
    scale = None
    if opts.annotate:
        widest = max(_text_width(_font(11), t) for t in format_cell_values(part))
        scale = opts.cell or max(36, widest + 8)
    elif opts.cell is not None:
        scale = opts.cell
    return GridOptions(columns=columns, scale=scale, min_tile=48, padding=opts.padding,
                       cmap=opts.cmap, mode=opts.mode, symmetric=True, labels=False,
                       row_labels=rows, column_labels=cols, title=title,
                       colorbar=opts.colorbar, shape=shape)


def _annotated(part: NDArray[np.float32], grid: GridOptions) -> Image.Image:
    """Tile the kernels with one ``scale``-pixel cell per value and write each value on it."""
    image = tile_grid(part.reshape(-1, *part.shape[2:]), grid)
    out_c, in_c, k_h, k_w = part.shape
    layout = grid_layout(out_c * in_c, k_h, k_w, grid)
    pixels = np.asarray(image)
    draw = ImageDraw.Draw(image)
    font = _font(max(9, min(14, layout.scale // 3)))
    texts = iter(format_cell_values(part))
    half = layout.scale // 2
    for tile in range(layout.count):
        left, top, _, _ = layout.box(tile)
        for row in range(part.shape[2]):
            for col in range(part.shape[3]):
                x, y = left + col * layout.scale + half, top + row * layout.scale + half
                cell = pixels[y, x]
                ink = _ink((int(cell[0]), int(cell[1]), int(cell[2])))
                draw.text((x, y), next(texts), fill=ink, font=font, anchor="mm")
    return image


def _rgb_filters(part: NDArray[np.float32], opts: FilterOptions,
                 shape: tuple[int, ...], title: str | None) -> Image.Image:
    """One colour patch per filter; each filter scaled to its own min..max over R, G, B."""
    if part.shape[1] != 3:
        raise InputError(f"RGB filter patches need 3 input channels, got {part.shape[1]}; "
                         "draw them per input channel instead (rgb=False)")
    if opts.channel_order == "BGR":  # input 0 feeds blue: reorder to R, G, B for display
        part = part[:, ::-1]
    # (O, 3, kH * kW) in "channel" mode reduces over (3, kH * kW): one scale per filter
    norm = normalize(part.reshape(part.shape[0], 3, -1), mode="channel")
    patches = (np.moveaxis(norm.reshape(part.shape), 1, -1) * 255 + 0.5).astype(np.uint8)
    columns, rows, cols = _headers(part.shape[0], 1)
    grid = GridOptions(columns=columns, scale=opts.cell, min_tile=48, padding=opts.padding,
                       title=title, colorbar=False, shape=shape, labels=False,
                       row_labels=rows, column_labels=cols)
    layout = grid_layout(patches.shape[0], patches.shape[1], patches.shape[2], grid)
    image = _rgb_image(patches, layout, grid.pad_color)
    _decorate(image, layout, grid, None, ("", "", ""))
    return image


def render_side_by_side(images: Sequence[Image.Image], labels: Sequence[str], *,
                        gap: int = 8, font_size: int = 12) -> Image.Image:
    """Put pictures left to right on white with a caption above each (e.g. before/after ReLU).

    Returns:
        RGB image of width ``sum(widths) + gap * (n + 1)``, height ``max(heights) + caption +
        2 * gap``; images are top-aligned under their captions.

    Raises:
        InputError: no images, or not one label per image.
    """
    if not images or len(images) != len(labels):
        raise InputError(f"got {len(images)} images and {len(labels)} labels; give one label "
                         "per image (at least one)")
    font = _font(font_size)
    caption = _text_height(font) + 4
    width = sum(im.width for im in images) + gap * (len(images) + 1)
    widest = max(_text_width(font, text) for text in labels) + 2 * gap
    height = max(im.height for im in images) + caption + 2 * gap
    out = Image.new("RGB", (max(width, widest), height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = gap
    for im, text in zip(images, labels, strict=True):
        draw.text((x, gap), text, fill=(0, 0, 0), font=font)
        out.paste(im.convert("RGB"), (x, gap + caption))
        x += im.width + gap
    return out


def overlay_heatmap(image: Image.Image, heatmap: NDArray[np.floating], *, alpha: float = 0.5,
                    cmap: str = "jet") -> Image.Image:
    """Blend a colour-mapped heatmap over a picture: ``(1 - alpha) * image + alpha * colours``.

    Args:
        image: any-mode PIL image (converted to RGB).
        heatmap: ``(H, W)`` values in [0, 1]; resized bilinearly to the image when sizes differ.
        alpha: heatmap weight in [0, 1] (0 gives the image, 1 the colour-mapped heatmap).
        cmap: matplotlib colormap name.

    Returns:
        RGB image of ``image.size``.

    Raises:
        InputError: heatmap not 2-D, alpha outside [0, 1], unknown colormap.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.ndim != 2 or heat.size == 0:
        raise InputError(f"expected one (H, W) heatmap, got shape {heat.shape}; pick a sample")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    if heat.shape != (base.height, base.width):
        resized = Image.fromarray(heat).resize(base.size, Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colours = Image.fromarray(apply_colormap(heat, cmap))
    return Image.blend(base, colours, alpha)

