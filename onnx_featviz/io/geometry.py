"""How an image becomes the model's view of it: resize (crop, stretch, letterbox), the pixel
limits checked first, and the geometry that maps the view back onto the whole image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.io import limits
from onnx_featviz.structs import InputSpec, Preprocessing, Shape


def _fitted_image(image: Image.Image, spec: InputSpec, prep: Preprocessing) -> Image.Image:
    """Convert to a working mode (L, F, RGB or RGBA) and resize to the model's size."""
    work = _working_image(image, spec.channels, prep.channel_order)
    target = _target_size(work.size, spec, prep)
    _check_pixels(work.size, target, spec, prep)
    return _fit(work, target, prep, _fill(work.mode, spec, prep))


def _check_pixels(size: tuple[int, int], target: tuple[int, int], spec: InputSpec,
                  prep: Preprocessing) -> None:
    """Refuse a resize bigger than ``FEATVIZ_MAX_PIXELS`` (a size such as 10**9)."""
    width, height = float(target[0]), float(target[1])
    if prep.resize == "crop":  # as _fit: cover size / crop_fraction, then crop
        ratio = max(height / prep.crop_fraction / size[1], width / prep.crop_fraction / size[0])
        width, height = max(width, size[0] * ratio), max(height, size[1] * ratio)
    what = (f"model input {spec.name!r} (resize {prep.resize}, crop fraction "
            f"{prep.crop_fraction}): the resized image")
    limits.check_pixels(width, height, what)
    limits.check_allocation((4, int(height), int(width)), 4, what)  # RGBA float32 at most


def _working_image(image: Image.Image, channels: int, order: str) -> Image.Image:
    """Return ``image`` as L or F (gray), RGB or RGBA; F holds 16-bit pixels divided by 257."""
    if channels not in (1, 3, 4):
        raise InputError(f"the model input wants {channels} channels but images give 1, 3 or "
                         "4; pass a .npy/.npz array instead")
    if channels == 4:
        if order == "GRAY" or not _has_alpha(image):
            raise InputError(f"the model input wants 4 channels but the image (mode "
                             f"{image.mode}, channel order {order}) has no alpha channel; give "
                             "an RGBA image with RGB/BGR order, or a .npy/.npz array")
        return image.convert("RGBA")
    if image.mode.startswith("I"):
        return image.convert("F").point(lambda v: v * (1.0 / _SIXTEEN_BIT))
    if image.mode == "F":
        return image.copy()
    if channels == 1 or order == "GRAY":
        return image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")  # avoids Pillow's palette-alpha warning
    return image.convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info)


def _target_size(size: tuple[int, int], spec: InputSpec, prep: Preprocessing
                 ) -> tuple[int, int]:
    """Return the ``(W, H)`` to produce: the model's fixed size, else ``prep.size``, else the
    image's own (a single known side keeps the image's aspect ratio)."""
    height, width = spec.height, spec.width
    if prep.size is not None:
        height = height or prep.size[0]
        width = width or prep.size[1]
    img_w, img_h = size
    if height is None and width is None:
        return img_w, img_h
    if height is None:
        assert width is not None
        height = max(1, round(img_h * width / img_w))
    if width is None:
        width = max(1, round(img_w * height / img_h))
    return width, height


def _fit(image: Image.Image, target: tuple[int, int], prep: Preprocessing,
         fill: float | tuple[int, ...]) -> Image.Image:
    """Resize ``image`` to ``target`` ``(W, H)`` with the recipe's resize mode (bilinear)."""
    width, height = target
    new_w, new_h, x, y = _fit_box(image.size, target, prep)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if prep.resize == "stretch":
        return resized
    if prep.resize == "letterbox":
        canvas = Image.new(image.mode, (width, height), fill)
        canvas.paste(resized, (x, y))
        return canvas
    return resized.crop((-x, -y, -x + width, -y + height))


def _fit_box(size: tuple[int, int], target: tuple[int, int], prep: Preprocessing
             ) -> tuple[int, int, int, int]:
    """Return ``(new_w, new_h, x, y)``: the resized image's size and its top-left corner on the
    ``target`` canvas (negative for a centre crop)."""
    (width, height), (img_w, img_h) = target, size
    if prep.resize == "stretch":
        return width, height, 0, 0
    if prep.resize == "letterbox":
        ratio = min(width / img_w, height / img_h)
        new_w = min(width, max(1, round(img_w * ratio)))
        new_h = min(height, max(1, round(img_h * ratio)))
        return new_w, new_h, (width - new_w) // 2, (height - new_h) // 2
    # crop: cover (H, W) / crop_fraction (the short side for a square target), center crop.
    ratio = max(round(height / prep.crop_fraction) / img_h,
                round(width / prep.crop_fraction) / img_w)
    new_w = max(width, round(img_w * ratio))
    new_h = max(height, round(img_h * ratio))
    return new_w, new_h, -((new_w - width) // 2), -((new_h - height) // 2)


def input_geometry(size: tuple[int, int], spec: InputSpec, prep: Preprocessing
                   ) -> tuple[float, float, float, float]:
    """Return where an image of ``size`` ``(W, H)`` lands on the model input (as ``_fit``).

    Returns:
        ``(sx, sy, ox, oy)``: the original pixel position ``(x, y)`` (continuous, 0.5 = centre
        of the first pixel) is at ``(x * sx + ox, y * sy + oy)`` on the model input.

    Raises:
        InputError: the model input does not take images.
    """
    _require_image_input(spec)
    new_w, new_h, x, y = _fit_box(size, _target_size(size, spec, prep), prep)
    return new_w / size[0], new_h / size[1], float(x), float(y)


def _fill(mode: str, spec: InputSpec, prep: Preprocessing) -> float | tuple[int, ...]:
    """Letterbox padding: the pixel colour that normalizes to 0 (the mean), 0 for int inputs."""
    bands = {"L": 1, "F": 1, "RGB": 3, "RGBA": 4}[mode]
    if np.dtype(spec.dtype).kind != "f":
        values = [0.0] * bands
    else:
        means = prep.mean if len(prep.mean) > 1 else prep.mean * bands
        values = [m / prep.scale for m in means[:bands]] + [0.0] * max(0, bands - len(means))
        if prep.channel_order == "BGR" and bands >= 3:
            values[:3] = values[2::-1]
    if mode == "F":
        return float(values[0])
    clipped = tuple(int(round(min(255.0, max(0.0, v)))) for v in values)
    return clipped



_SIXTEEN_BIT = 257.0  # 65535 / 255: maps 16-bit pixels onto 0..255 without losing precision


def _require_image_input(spec: InputSpec) -> None:
    if spec.layout not in ("NCHW", "NHWC", "NHW"):
        raise InputError(f"model input {spec.name!r} has shape {_fmt(spec.shape)}, which does "
                         "not take images; pass a .npy/.npz array of that shape instead")
    if np.dtype(spec.dtype).kind not in "fiu":
        raise InputError(f"model input {spec.name!r} has dtype {spec.dtype}, which images "
                         "cannot be converted to; pass a .npy/.npz array instead")


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
