"""Text on pictures: the bundled font, text sizes and masks, ink colours for readable labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _text_height(font: Font) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return int(ascent + descent)
    return int(font.getbbox("0Ag")[3]) + 1


def _text_width(font: Font, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def _text_masks(texts: Sequence[str], font: Font) -> NDArray[np.uint8]:
    """Render short strings as ``(n, h, w)`` alpha masks from one glyph per distinct char.

    Each character gets a fixed-width cell (the widest advance among the characters used), so
    every string is assembled with one numpy gather instead of one draw call per string.
    """
    chars = sorted(set("".join(texts)))
    height = _text_height(font)
    cell = max([_text_width(font, c) for c in chars] + [1])
    atlas = np.zeros((len(chars) + 1, height, cell), np.uint8)  # last entry: blank
    for i, char in enumerate(chars):
        glyph = Image.new("L", (cell, height), 0)
        ImageDraw.Draw(glyph).text((0, 0), char, fill=255, font=font)
        atlas[i] = np.asarray(glyph)
    lookup = {c: i for i, c in enumerate(chars)}
    length = max([len(t) for t in texts] + [1])
    codes = np.full((len(texts), length), len(chars), np.intp)
    for row, text in enumerate(texts):
        codes[row, : len(text)] = [lookup[c] for c in text]
    glyphs = atlas[codes]  # (n, k, h, cell)
    return np.ascontiguousarray(glyphs.transpose(0, 2, 1, 3).reshape(len(texts), height, -1))


def _ink(background: Color) -> Color:
    """Black text on light backgrounds, white on dark ones (ITU-R 601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma >= 128 else (255, 255, 255)



Color = tuple[int, int, int]
