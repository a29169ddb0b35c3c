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
