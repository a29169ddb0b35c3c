"""Pictures a person can read: title bands, colour bars with numbers, whole-image overlays,
sheets of titled pictures and labelled bar charts of 1-D tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from onnx_featviz.errors import InputError
from onnx_featviz.render.fonts import Font, _font, _text_height, _text_width
from onnx_featviz.render.pictures import apply_colormap, colormap_lut

#: Pixels around text and between the parts of a figure.
MARGIN = 6
#: Height of a colour bar strip.
BAR_HEIGHT = 12
#: Colour of the bars of :func:`bar_chart` (matplotlib's C0 blue); negative values are C3 red.
BAR_COLOR = (31, 119, 180)
NEGATIVE_COLOR = (214, 39, 40)
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


def wrap_text(text: str, font: Font, width: int) -> list[str]:
    """Split ``text`` at spaces into lines no wider than ``width`` pixels (long words stay)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and _text_width(font, trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def upscale(image: Image.Image, min_side: int) -> Image.Image:
    """Enlarge by the smallest integer factor that makes the longer side >= ``min_side``."""
    factor = max(1, math.ceil(min_side / max(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def titled(image: Image.Image, title: str, *, cmap: str | None = None,
           ticks: Sequence[str] = ("0", "0.5", "1"), bar_label: str = "",
           min_width: int = 224, font_size: int = 12) -> Image.Image:
    """Put a title band above a picture and, with ``cmap``, a colour bar with numbers below.

    Args:
        image: the picture (any mode; drawn as RGB, enlarged by an integer factor to at least
            ``min_width`` pixels wide on its longer side).
        title: text of the band, wrapped at spaces to the picture's width.
        cmap: colormap of the bar (None: no bar); its left end is ``ticks[0]``, its right end
            ``ticks[-1]``, other ticks evenly spaced between.
        bar_label: text written after the bar's ticks, e.g. what the values are.

    Returns:
        RGB image: white band with black text, the picture at ``(MARGIN, band)``, the bar
        under it; width ``max(picture, title) + 2 * MARGIN``.

    Raises:
        InputError: unknown colormap, fewer than two ticks.
    """
    if cmap is not None and len(ticks) < 2:
        raise InputError(f"a colour bar needs at least two ticks, got {list(ticks)}")
    body = upscale(image.convert("RGB"), min_width)
    font = _font(font_size)
    lines = wrap_text(title, font, max(body.width, 160))
    line_h = _text_height(font)
    band = MARGIN + len(lines) * line_h + MARGIN
    bar = BAR_HEIGHT + (2 if bar_label else 1) * line_h + 3 * MARGIN if cmap is not None else 0
    width = max(body.width, *(_text_width(font, line) for line in lines)) + 2 * MARGIN
    out = Image.new("RGB", (width, band + body.height + MARGIN + bar), _WHITE)
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * line_h), line, fill=_BLACK, font=font)
    out.paste(body, (MARGIN, band))
    if cmap is not None:
        top = band + body.height + MARGIN
        draw_colorbar(out, (MARGIN, top, body.width), cmap, ticks, bar_label, font)
    return out


def draw_colorbar(image: Image.Image, where: tuple[int, int, int], cmap: str,
                  ticks: Sequence[str], label: str, font: Font) -> None:
    """Draw a horizontal colour strip at ``where = (left, top, width)`` with numbered ticks.

    The strip runs through the colormap left to right; tick ``i`` of ``n`` sits at
    ``left + i * (width - 1) / (n - 1)``; ``label`` follows the last tick's text.
    """
    left, top, width = where
    lut = colormap_lut(cmap)
    pos = np.rint(np.linspace(0, len(lut) - 1, width)).astype(np.intp)
    strip = np.ascontiguousarray(np.broadcast_to(lut[pos][None], (BAR_HEIGHT, width, 3)))
    image.paste(Image.fromarray(strip), (left, top))
    draw = ImageDraw.Draw(image)
    y = top + BAR_HEIGHT
    count = len(ticks)
    for i, text in enumerate(ticks):
        x = left + round(i * (width - 1) / (count - 1))
        anchor = "la" if i == 0 else "ra" if i == count - 1 else "ma"
        draw.line((x, y, x, y + 2), fill=_BLACK)
        draw.text((x, y + 3), text, fill=_BLACK, font=font, anchor=anchor)
    if label:
        draw.text((left + width // 2, y + 3 + _text_height(font)), label, fill=_BLACK,
                  font=font, anchor="ma")


def number_ticks(low: float, high: float, count: int = 3) -> tuple[str, ...]:
    """Return ``count`` evenly spaced values from ``low`` to ``high`` as short numbers."""
    return tuple(f"{v:.3g}" for v in np.linspace(low, high, count))


def overlay_whole(image: Image.Image, heatmap: NDArray[np.floating],
                  geometry: tuple[float, float, float, float], *, alpha: float = 0.5,
                  cmap: str = "jet", max_side: int = 1024) -> Image.Image:
    """Blend a heatmap computed on the model's input over the whole original picture.

    Args:
        image: the picture before resizing and cropping (any mode).
        heatmap: ``(h, w)`` values in [0, 1] on the model input's pixel grid.
        geometry: ``(sx, sy, ox, oy)``: an original pixel position ``(x, y)`` (continuous,
            0.5 = centre of the first pixel) lies at ``(x * sx + ox, y * sy + oy)`` on the
            model input.
        alpha: heatmap weight in [0, 1]; max_side: the picture is first shrunk so that its
            longer side is at most this many pixels.

    Returns:
        RGB image of the (shrunk) picture's size: the blended heatmap where the model looked,
        the picture at half brightness where it did not (outside the centre crop).

    Raises:
        InputError: heatmap not 2-D, alpha outside [0, 1], unknown colormap.
    """
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise InputError(f"expected one (H, W) heatmap, got shape {heat.shape}; pick a row")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    shrink = min(1.0, max_side / max(base.size))
    if shrink < 1.0:
        size = (max(1, round(base.width * shrink)), max(1, round(base.height * shrink)))
        base = base.resize(size, Image.Resampling.BILINEAR)
    sx, sy, ox, oy = geometry
    fx, fy = image.width / base.width, image.height / base.height
    mapped = Image.fromarray(heat, mode="F").transform(
        base.size, Image.Transform.AFFINE, (sx * fx, 0.0, ox, 0.0, sy * fy, oy),
        resample=Image.Resampling.BILINEAR, fillcolor=float("nan"))
    values = np.asarray(mapped, np.float32)
    inside = np.isfinite(values)
    pixels = np.asarray(base, np.float32)
    colours = apply_colormap(np.where(inside, values, 0.0), cmap).astype(np.float32)
    blended = np.where(inside[..., None], (1 - alpha) * pixels + alpha * colours, pixels * 0.5)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def sheet(rows: Sequence[Sequence[Image.Image]], *, title: str = "",
          gap: int = MARGIN, font_size: int = 14) -> Image.Image:
    """Lay pictures out in rows (e.g. one row per explained class) under an optional title.

    Returns:
        RGB image on white: row ``r``, column ``c`` is at ``x = gap + sum of the widths of the
        row's earlier pictures + c * gap``, rows top-aligned, ``gap`` pixels apart.

    Raises:
        InputError: no rows or an empty row.
    """
    if not rows or any(not row for row in rows):
        raise InputError(f"a sheet needs at least one picture per row, got rows of "
                         f"{[len(r) for r in rows]}")
    font = _font(font_size)
    head = _text_height(font) + 2 * gap if title else 0
    width = max(sum(im.width for im in row) + gap * (len(row) + 1) for row in rows)
    heights = [max(im.height for im in row) for row in rows]
    width = max(width, _text_width(font, title) + 2 * gap)
    out = Image.new("RGB", (width, head + sum(heights) + gap * (len(rows) + 1)), _WHITE)
    if title:
        ImageDraw.Draw(out).text((gap, gap), title, fill=_BLACK, font=font)
    y = head + gap
    for row, height in zip(rows, heights, strict=True):
        x = gap
        for im in row:
            out.paste(im.convert("RGB"), (x, y))
            x += im.width + gap
        y += height + gap
    return out


def bar_chart(values: NDArray[np.generic], *, names: Sequence[str] | None = None,
              top_k: int | None = None, title: str = "", bar_width: int = 280,
              row_height: int = 18, font_size: int = 11) -> Image.Image:
    """Draw a 1-D tensor as labelled horizontal bars (e.g. class scores, fc features).

    Args:
        values: ``(K,)`` real values (any shape is flattened).
        names: one text per value (e.g. class labels); default: the index.
        top_k: draw only the ``top_k`` largest values, largest first; None draws every value in
            index order.
        title: text above the bars; the chart says how many of how many values it shows.

    Returns:
        RGB image with one bar per drawn value, ``row_height`` pixels apart: from the zero line
        to the value, in ``BAR_COLOR`` (``NEGATIVE_COLOR`` below zero), name on the left, value
        on the right.

    Raises:
        InputError: empty values, ``top_k`` < 1, or not one name per value.
    """
    flat = np.asarray(values, np.float64).ravel()
    if flat.size == 0:
        raise InputError("cannot draw an empty tensor as a bar chart; pass at least one value")
    if names is not None and len(names) != flat.size:
        raise InputError(f"got {len(names)} names for {flat.size} values; give one per value")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    order = (np.argsort(-np.nan_to_num(flat, nan=-np.inf), kind="stable")[:top_k]
             if top_k is not None else np.arange(flat.size))
    texts = [names[i] if names is not None else str(i) for i in order]
    shown = flat[order]
    font = _font(font_size)
    head = f"{title}  ({len(order)} of {flat.size}{', largest first' if top_k else ''})"
    label_w = max(_text_width(font, t) for t in texts) + MARGIN
    value_texts = [f"{v:.4g}" for v in shown]
    value_w = max(_text_width(font, t) for t in value_texts) + MARGIN
    top = _text_height(font) + 2 * MARGIN
    width = max(label_w + bar_width + value_w + 3 * MARGIN, _text_width(font, head) + 2 * MARGIN)
    out = Image.new("RGB", (width, top + row_height * len(order) + MARGIN), _WHITE)
    draw = ImageDraw.Draw(out)
    draw.text((MARGIN, MARGIN), head, fill=_BLACK, font=font)
    finite = np.nan_to_num(shown, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = min(0.0, float(finite.min())), max(0.0, float(finite.max()))
    span = high - low or 1.0
    left = MARGIN + label_w
    zero = left + round(-low / span * (bar_width - 1))
    draw.line((zero, top, zero, top + row_height * len(order) - 1), fill=_BLACK)
    for row, (text, value, shown_text) in enumerate(zip(texts, finite, value_texts, strict=True)):
        y = top + row * row_height
        end = left + round((value - low) / span * (bar_width - 1))
        color = BAR_COLOR if value >= 0 else NEGATIVE_COLOR
        draw.rectangle((min(zero, end), y + 2, max(zero, end), y + row_height - 3), fill=color)
        draw.text((left - MARGIN, y + row_height // 2), text, fill=_BLACK, font=font, anchor="rm")
        draw.text((left + bar_width + MARGIN, y + row_height // 2), shown_text, fill=_BLACK,
                  font=font, anchor="lm")
    return out
