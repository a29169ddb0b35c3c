"""Draw detections (box, label, score) on a picture: a pure PIL function."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from onnx_featviz.attribution.detection import Detection

Color = tuple[int, int, int]

PALETTE: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)
"""Box color of class ``c`` is ``PALETTE[c % len(PALETTE)]``."""


def _caption(det: Detection, labels: Sequence[str] | None) -> str:
    name = (labels[det.cls] if labels is not None and 0 <= det.cls < len(labels)
            else f"class {det.cls}")
    return f"{name}: {det.score:.2f}"  # "1 0.49" read as "10.49" in the small font


def draw_detections(image: Image.Image, detections: Sequence[Detection], *,
                    labels: Sequence[str] | None = None,
                    input_size: tuple[int, int] | None = None, width: int = 2,
                    font_size: int = 11) -> Image.Image:
    """Return a copy of ``image`` with each detection's box and ``"label score"`` caption.

    Args:
        image: the picture (any mode; the result is RGB). Not modified.
        detections: boxes in input pixels (``Detection.box``, x0, y0, x1, y1).
        labels: class names, index = class id; the class number is shown otherwise.
        input_size: (H, W) of the model input when ``image`` has another size: boxes are
            scaled by (image W / W, image H / H). None: the image is the model input.
        width: outline width in pixels (>= 1).
        font_size: caption font size in pixels.

    Returns:
        A new RGB image of the same size. Box edges cover pixels ``x0 .. x1 - 1``
        (rounded), the caption sits on a filled band above the box (inside it at the top
        edge), shifted left where the box ends too near the right edge for the caption.
    """
    out = image.convert("RGB")  # convert always copies
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=font_size)
    sx = sy = 1.0
    if input_size is not None:
        sy, sx = out.height / input_size[0], out.width / input_size[1]
    for det in detections:
        color = PALETTE[det.cls % len(PALETTE)]
        x0, y0, x1, y1 = (round(det.box[0] * sx), round(det.box[1] * sy),
                          round(det.box[2] * sx) - 1, round(det.box[3] * sy) - 1)
        if x1 < x0 or y1 < y0:
            continue
        draw.rectangle((x0, y0, x1, y1), outline=color, width=max(1, width))
        text = _caption(det, labels)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        th, tw = bottom - top + 2, right - left + 2
        ty = y0 - th if y0 - th >= 0 else y0
        tx = max(0, min(x0, out.width - 1 - tw))  # a box at the right edge: caption shifted in
        draw.rectangle((tx, ty, tx + tw, ty + th - 1), fill=color)
        ink = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=ink, font=font)
    return out
