"""Tests for attribution.boxes: detection overlays drawn with PIL."""

from __future__ import annotations

import numpy as np
from PIL import Image

from onnx_featviz.attribution.boxes import PALETTE, draw_detections
from onnx_featviz.attribution.detection import Detection


def _gray(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def test_box_outline_color_and_untouched_pixels() -> None:
    image = _gray()
    before = image.tobytes()
    d = Detection(0, (10.0, 20.0, 40.0, 44.0), 3, 0.87, 0)
    out = draw_detections(image, [d], width=1)
    assert image.tobytes() == before  # never mutates
    assert out is not image and out.size == image.size and out.mode == "RGB"
    px = np.asarray(out)
    color = PALETTE[3]
    # edges cover x 10..39, y 20..43 (x1, y1 exclusive)
    assert tuple(px[30, 10]) == color and tuple(px[30, 39]) == color
    assert tuple(px[43, 25]) == color and tuple(px[30, 40]) == (128, 128, 128)
    assert tuple(px[44, 25]) == (128, 128, 128)
    assert tuple(px[35, 25]) == (128, 128, 128)  # inside the box, below the caption
    assert (px[:20, 10:40] != 128).any()  # the caption band sits above the box


def test_labels_and_scaling_from_input_size() -> None:
    d = Detection(0, (8.0, 8.0, 16.0, 16.0), 0, 0.5, 0)
    out = np.asarray(draw_detections(_gray((64, 64)), [d], labels=["cat"],
                                     input_size=(32, 32), width=1))
    # the 32x32 input box (8, 8, 16, 16) is (16, 16, 32, 32) on the 64x64 picture
    assert tuple(out[24, 16]) == PALETTE[0] and tuple(out[24, 31]) == PALETTE[0]
    assert tuple(out[24, 15]) == (128, 128, 128) and tuple(out[24, 32]) == (128, 128, 128)


def test_gray_input_and_no_detections() -> None:
    image = Image.new("L", (20, 10), 7)
    out = draw_detections(image, [])
    assert out.mode == "RGB" and np.all(np.asarray(out) == 7)


def test_caption_of_a_box_at_the_right_edge_stays_whole() -> None:
    """The caption band is shifted left so that no part of the text falls off the picture."""
    d = Detection(0, (50.0, 30.0, 64.0, 60.0), 2, 0.49, 0)
    px = np.asarray(draw_detections(_gray((64, 64)), [d], width=1))
    band = np.all(px[:30] == PALETTE[2], axis=2)  # the filled band above the box
    cols = np.flatnonzero(band.any(axis=0))
    # "class 2: 0.49" is wider than the 14 px the box leaves: the band ends inside the picture
    # and starts left of the box
    assert cols.max() <= 63 and cols.min() < 50 and cols.max() - cols.min() > 14
    rows = np.flatnonzero(band.any(axis=1))
    box = px[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ink = np.flatnonzero((~np.all(box == PALETTE[2], axis=2)).any(axis=0))
    # the text is drawn inside the band, its last glyph before the band's right end
    assert ink.size and 0 < ink.min() and ink.max() < box.shape[1] - 1
