"""Turn PIL images and user arrays into model input: input spec, presets, resize, normalize.

Pure functions: nothing here reads files or keeps state. A recipe (``Preprocessing``) maps pixels
``p`` in 0..255, in the model's channel order, to ``x = (p * scale - mean) / std`` per channel;
``mean`` and ``std`` are given in that channel order (BGR for ``caffe``). Integer model inputs
skip the recipe: ``uint8`` (and other integer) inputs get the raw pixels 0..255, ``int8``
inputs get ``pixels - 128``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from PIL import Image

from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.io.geometry import _fitted_image, _fmt, _require_image_input
from onnx_featviz.structs import META_PREPROCESS, InputSpec, Preprocessing, Shape

log = logging.getLogger(__name__)


#: Named recipes; ``mean``/``std`` are in the recipe's channel order.
PRESETS: dict[str, Preprocessing] = {
    "imagenet": Preprocessing(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225), crop_fraction=0.875, preset="imagenet"),
    "caffe": Preprocessing(scale=1.0, mean=(104.0, 117.0, 123.0), std=(1.0,),
                           channel_order="BGR", crop_fraction=0.875, preset="caffe"),
    "unit": Preprocessing(preset="unit"),
    "raw": Preprocessing(scale=1.0, preset="raw"),
    "tf": Preprocessing(scale=1.0 / 127.5, mean=(1.0,), std=(1.0,), crop_fraction=0.875,
                        preset="tf"),
    "mnist": Preprocessing(channel_order="GRAY", resize="stretch", preset="mnist"),
}


CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")


RESIZE_MODES = ("crop", "stretch", "letterbox")


LAYOUTS = ("NCHW", "NHWC")




# -- input spec -----------------------------------------------------------------------------
def infer_input_spec(model: onnx.ModelProto) -> InputSpec:
    """Describe the model's first non-initializer input as an image input.

    Layout: a 4-D input is NCHW when axis 1 is 1, 3 or 4, else NHWC when the last axis is, else
    NCHW (the ONNX convention, also for symbolic dims); a ``"layout"`` in the
    ``featviz.preprocess`` metadata wins. A 3-D input is ``(N, H, W)`` gray (layout ``"NHW"``);
    any other rank gives layout ``"other"`` with 0 channels (arrays only). An unknown rank is
    taken as NCHW. A symbolic channel dim is taken as 3 channels.

    Raises:
        ModelError: no graph input, a non-tensor input, or an undefined element type.
    """
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ModelError("the model has no graph input (every input is an initializer), so it "
                         "cannot be fed images or arrays; export it with a real input")
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"model input {value.name!r} is a {kind}, not a tensor; only tensor "
                         "inputs can be fed; export the model with a tensor input")
    tensor_type = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"model input {value.name!r} has element type {tensor_type.elem_type}, "
                         "which has no numpy dtype; export it as float32") from err
    if tensor_type.HasField("shape"):
        shape: Shape = tuple(_dim(d) for d in tensor_type.shape.dim)
    else:
        shape = (None, None, None, None)
    layout = _meta_layout(model, shape) or _guess_layout(shape)
    return _make_spec(value.name, dtype, shape, layout)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return str(dim.dim_param)
    return None


def _guess_layout(shape: Shape) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        return "other"
    if shape[1] in (1, 3, 4):
        return "NCHW"
    if shape[3] in (1, 3, 4):
        return "NHWC"
    return "NCHW"


def _meta_layout(model: onnx.ModelProto, shape: Shape) -> str | None:
    meta = _read_meta(model)
    layout = meta.get("layout") if meta else None
    if layout is None:
        return None
    if str(layout).upper() not in LAYOUTS or len(shape) != 4:
        log.warning("ignoring metadata layout %r for a %d-D input; expected one of %s",
                    layout, len(shape), LAYOUTS)
        return None
    return str(layout).upper()


def _make_spec(name: str, dtype: str, shape: Shape, layout: str) -> InputSpec:
    batch = shape[0] if shape and isinstance(shape[0], int) else None
    if layout == "NCHW":
        channel, height, width = shape[1], shape[2], shape[3]
    elif layout == "NHWC":
        height, width, channel = shape[1], shape[2], shape[3]
    elif layout == "NHW":
        channel, height, width = 1, shape[1], shape[2]
    else:
        return InputSpec(name, dtype, "other", 0, None, None, batch, shape)
    return InputSpec(
        name=name, dtype=dtype, layout=layout,
        channels=channel if isinstance(channel, int) else 3,
        height=height if isinstance(height, int) else None,
        width=width if isinstance(width, int) else None,
        batch=batch, shape=shape,
    )


# -- recipes --------------------------------------------------------------------------------
def _read_meta(model: onnx.ModelProto) -> dict[str, Any] | None:
    """Return the ``featviz.preprocess`` metadata object, or None when absent."""
    for prop in model.metadata_props:
        if prop.key != META_PREPROCESS:
            continue
        try:
            value = json.loads(prop.value)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"model metadata {META_PREPROCESS!r} is not valid JSON "
                             f"({str(err)[:100]}); "
                             "fix or remove that metadata entry") from err
        if not isinstance(value, dict):
            raise ModelError(f"model metadata {META_PREPROCESS!r} must be a JSON object, got "
                             f"{type(value).__name__}; fix or remove that metadata entry")
        return value
    return None


def read_preprocessing(model: onnx.ModelProto) -> Preprocessing | None:
    """Return the recipe stored in the model's ``featviz.preprocess`` metadata, or None.

    Keys (all optional): ``preset`` (the starting recipe), ``channel_order``, ``scale``,
    ``mean``, ``std``, ``resize``, ``size`` (``[H, W]`` or one int), ``crop_fraction``;
    ``layout`` is used by ``infer_input_spec``. Unknown keys are logged and ignored.

    Raises:
        ModelError: malformed JSON, unknown preset or an invalid value (naming the key).
    """
    meta = _read_meta(model)
    if meta is None:
        return None
    preset = meta.get("preset")
    if preset is not None and str(preset).lower() not in PRESETS:
        raise ModelError(f"model metadata {META_PREPROCESS!r} names preset {preset!r}; valid "
                         f"presets: {', '.join(PRESETS)}; fix or remove that metadata entry")
    start = PRESETS[str(preset).lower()] if preset is not None else Preprocessing(
        preset="metadata")
    changes: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("preset", "layout"):
            continue
        if key not in _PARSERS:
            log.warning("ignoring unknown key %r in model metadata %r", key, META_PREPROCESS)
            continue
        try:
            changes[key] = _PARSERS[key](value)
        except (ValueError, TypeError) as err:
            raise ModelError(f"model metadata {META_PREPROCESS!r}: {err}; fix or remove that "
                             "metadata entry") from err
    return dataclasses.replace(start, **changes)


def _parse_order(value: Any) -> str:
    order = str(value).upper()
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got "
                         f"{value!r}")
    return order


def _parse_resize(value: Any) -> str:
    mode = str(value).lower()
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {value!r}")
    return mode


def _parse_number(name: str, value: Any, *, low: float, high: float = np.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (np.isfinite(number) and low < number <= high):
        raise ValueError(f"{name} must be in ({low}, {high}], got {value!r}")
    return number


def _parse_values(name: str, value: Any, *, nonzero: bool) -> tuple[float, ...]:
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    if not items:
        raise ValueError(f"{name} must hold 1 value or one per channel, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float | np.number) or not (
                np.isfinite(float(item))):
            raise ValueError(f"{name} must be finite numbers, got {value!r}")
        if nonzero and float(item) == 0.0:
            raise ValueError(f"{name} must not contain 0, got {value!r}")
    return tuple(float(item) for item in items)


def _parse_size(value: Any) -> tuple[int, int]:
    items = list(value) if isinstance(value, list | tuple) else [value, value]
    if len(items) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items):
        raise ValueError(f"size must be [height, width] (or one int) of positive ints, got "
                         f"{value!r}")
    return int(items[0]), int(items[1])


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "channel_order": _parse_order,
    "resize": _parse_resize,
    "scale": lambda v: _parse_number("scale", v, low=0.0),
    "crop_fraction": lambda v: _parse_number("crop_fraction", v, low=0.0, high=1.0),
    "mean": lambda v: _parse_values("mean", v, nonzero=False),
    "std": lambda v: _parse_values("std", v, nonzero=True),
    "size": _parse_size,
}


def resolve_preprocessing(
    spec: InputSpec,
    *,
    preset: str | None = None,
    base: Preprocessing | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    scale: float | None = None,
    channel_order: str | None = None,
    size: tuple[int, int] | int | None = None,
    resize: str | None = None,
    crop_fraction: float | None = None,
) -> Preprocessing:
    """Combine the recipe sources: explicit args > preset > model metadata (``base``) > default.

    A preset replaces ``base`` entirely except for ``base.size`` (a preset has no size). The
    default is ``mnist`` (gray, [0, 1], stretch) for 1-channel inputs, else ``unit`` (RGB,
    [0, 1], crop). When the model fixes its height and width, ``size`` is set to them.

    Raises:
        InputError: unknown preset (close matches listed), an invalid value, ``mean``/``std``
            lengths that fit neither 1 nor the input's channels, or an explicit ``size`` that
            differs from the model's fixed size.
    """
    start = _start_recipe(spec, preset, base)
    explicit = {"mean": mean, "std": std, "scale": scale, "channel_order": channel_order,
                "size": size, "resize": resize, "crop_fraction": crop_fraction}
    changes: dict[str, Any] = {}
    for key, value in explicit.items():
        if value is None:
            continue
        try:
            changes[key] = _PARSERS[key](value)
        except (ValueError, TypeError) as err:
            raise InputError(f"{err}; give a valid {key}") from err
    prep = dataclasses.replace(start, **changes)
    if spec.height is not None and spec.width is not None:
        fixed = (spec.height, spec.width)
        if "size" in changes and changes["size"] != fixed:
            raise InputError(f"size {changes['size']} does not fit model input {spec.name!r}, "
                             f"fixed at {fixed}; omit size or use {fixed}")
        prep = dataclasses.replace(prep, size=fixed)
    _check_recipe(prep, spec)
    return prep


def _start_recipe(spec: InputSpec, preset: str | None, base: Preprocessing | None
                  ) -> Preprocessing:
    if preset is not None:
        key = preset.lower()
        if key not in PRESETS:
            near = difflib.get_close_matches(key, list(PRESETS), n=3, cutoff=0.4)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise InputError(f"unknown preprocessing preset {preset!r}; {hint}valid presets: "
                             f"{', '.join(PRESETS)}")
        chosen = PRESETS[key]
        if base is not None and base.size is not None and chosen.size is None:
            chosen = dataclasses.replace(chosen, size=base.size)
        return chosen
    if base is not None:
        return base
    return PRESETS["mnist"] if spec.channels == 1 else PRESETS["unit"]


def _check_recipe(prep: Preprocessing, spec: InputSpec) -> None:
    """Raise InputError when mean/std lengths fit neither 1 nor the input's channel count."""
    channels = spec.channels
    for name, values in (("mean", prep.mean), ("std", prep.std)):
        if len(values) not in (1, channels):
            raise InputError(f"{name} has {len(values)} values {values} but model input "
                             f"{spec.name!r} has {channels} channels; give 1 or {channels} "
                             f"values, or another preset")


# -- images -> arrays -----------------------------------------------------------------------
def image_to_array(image: Image.Image, spec: InputSpec, prep: Preprocessing) -> NDArray[Any]:
    """Convert one image into a model input item (no batch axis).

    Gray, RGB, RGBA (alpha dropped unless the model wants 4 channels), palette and 16-bit
    (``I;16``/``I``, divided by 257 onto 0..255) images are accepted. A gray image is
    replicated for a 3-channel input; a color image becomes gray (``L``) for a 1-channel one.

    Returns:
        ``(C, H, W)`` for NCHW, ``(H, W, C)`` for NHWC, ``(H, W)`` for NHW, in ``spec.dtype``:
        float inputs get ``(p * scale - mean) / std``; uint8 inputs raw pixels 0..255; int8
        inputs ``pixels - 128``.

    Raises:
        InputError: the input does not take images, or the image cannot give the channel count
            (4 channels without alpha, 2 or more than 4 channels), or bad mean/std lengths.
    """
    _require_image_input(spec)
    _check_recipe(prep, spec)
    fitted = _fitted_image(image, spec, prep)
    pixels = np.asarray(fitted, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1 and spec.channels > 1:
        pixels = np.repeat(pixels, spec.channels, axis=2)
    if prep.channel_order == "BGR" and pixels.shape[2] >= 3:
        pixels = np.concatenate([pixels[:, :, 2::-1], pixels[:, :, 3:]], axis=2)
    values = _to_dtype(pixels, spec, prep)
    if spec.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    elif spec.layout == "NHW":
        values = values[:, :, 0]
    return np.ascontiguousarray(values)


def images_to_batch(images: Sequence[Image.Image], spec: InputSpec, prep: Preprocessing
                    ) -> NDArray[Any]:
    """Convert images and stack them into a batch ``(N, ...)`` (see ``image_to_array``).

    Raises:
        InputError: no images, or images of different sizes for a model with a dynamic size
            and no ``size`` in the recipe.
    """
    if not images:
        raise InputError("no images were given; pass at least one image")
    arrays = [image_to_array(image, spec, prep) for image in images]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise InputError(f"the images give arrays of different shapes {shapes} because model "
                         f"input {spec.name!r} has a dynamic size; set size (height, width) "
                         "in the preprocessing to resize them all")
    return np.stack(arrays)


def display_image(image: Image.Image, spec: InputSpec, prep: Preprocessing) -> Image.Image:
    """Return the image resized/cropped/padded as the model sees it, un-normalized, in RGB.

    Raises:
        InputError: as ``image_to_array``.
    """
    _require_image_input(spec)
    fitted = _fitted_image(image, spec, prep)
    if fitted.mode == "F":
        gray = np.clip(np.rint(np.asarray(fitted, dtype=np.float32)), 0, 255).astype(np.uint8)
        fitted = Image.fromarray(gray)
    return fitted.convert("RGB")




def _to_dtype(pixels: NDArray[np.float32], spec: InputSpec, prep: Preprocessing
              ) -> NDArray[Any]:
    """Normalize float inputs; integer inputs get raw pixels (int8: pixels - 128)."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        raw = np.clip(np.rint(pixels), 0, 255)
        return (raw - 128 if dtype == np.int8 else raw).astype(dtype)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    values = (pixels * np.float32(prep.scale) - mean) / std
    return values.astype(dtype)


# -- user arrays ----------------------------------------------------------------------------
def check_batch(batch: NDArray[Any], spec: InputSpec) -> NDArray[Any]:
    """Validate a user array against the input spec and cast it to the input dtype.

    The batch axis is not checked against a fixed batch size (the runtime splits batches).

    Returns:
        A new array of ``spec.dtype`` with the input's rank.

    Raises:
        InputError: non-numeric or empty array, missing batch axis, wrong rank, channel count
            or fixed height/width, or values that do not fit the dtype (overflow, non-integers).
    """
    array = np.asarray(batch)
    shape = _spec_shape(spec)
    want = _fmt(shape)
    if array.dtype.kind not in "fiub":
        raise InputError(f"the array has dtype {array.dtype}; model input {spec.name!r} needs "
                         f"numbers ({spec.dtype}); convert it")
    if not shape:  # rank unknown: only the dtype can be checked
        return _cast(array, spec)
    if array.ndim == len(shape) - 1:
        raise InputError(f"expected a {len(shape)}-D batch {want} for model input "
                         f"{spec.name!r}, got shape {array.shape}; add a batch axis "
                         "(array[None])")
    if array.ndim != len(shape):
        raise InputError(f"expected a {len(shape)}-D batch {want} for model input "
                         f"{spec.name!r}, got shape {array.shape}; reshape it to {want}")
    if array.shape[0] == 0:
        raise InputError(f"the array of shape {array.shape} holds no items; give at least one")
    for axis, dim in enumerate(shape):
        if axis > 0 and isinstance(dim, int) and array.shape[axis] != dim:
            raise InputError(_dim_mismatch(array.shape, axis, dim, spec, shape))
    return _cast(array, spec)


def _spec_shape(spec: InputSpec) -> Shape:
    """The declared shape, or one rebuilt from the layout fields for a hand-made spec."""
    if spec.shape:
        return spec.shape
    dims = {"N": spec.batch, "C": spec.channels, "H": spec.height, "W": spec.width}
    return tuple(dims[axis] for axis in spec.layout) if spec.layout in (*LAYOUTS, "NHW") else ()


def _dim_mismatch(got: tuple[int, ...], axis: int, dim: int, spec: InputSpec, shape: Shape
                  ) -> str:
    want = _fmt(shape)
    letter = spec.layout[axis] if len(spec.layout) == len(got) else "?"
    head = (f"model input {spec.name!r} wants {want} ({spec.layout}) but the array has shape "
            f"{got}: axis {axis} ({letter}) is {got[axis]}, not {dim}")
    swap = _SWAPS.get(spec.layout)
    if swap is not None:
        other, perm, fix = swap
        swapped = [shape[i] for i in perm]
        if all(not isinstance(d, int) or d == g for d, g in zip(swapped[1:], got[1:], strict=True)):
            return f"{head}; the array looks {other}: transpose it with array.transpose{fix}"
    if letter == "C":
        return f"{head}; give {dim} channels"
    return f"{head}; resize the images to {spec.height}x{spec.width}"


# layout -> (the other layout, its axes in this layout's order, the transpose that fixes it)
_SWAPS = {"NCHW": ("NHWC", (0, 2, 3, 1), "(0, 3, 1, 2)"),
          "NHWC": ("NCHW", (0, 3, 1, 2), "(0, 2, 3, 1)")}


def _cast(array: NDArray[Any], spec: InputSpec) -> NDArray[Any]:
    dtype = np.dtype(spec.dtype)
    if array.dtype == dtype:
        return np.array(array, copy=True)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # overflow is reported below as an InputError
            out = array.astype(dtype)
        if array.dtype.kind == "f" and bool(np.any(np.isfinite(array) & ~np.isfinite(out))):
            raise InputError(f"values up to {np.nanmax(np.abs(array))} overflow {dtype} "
                             f"(model input {spec.name!r}); scale the array down")
        return out
    if dtype.kind in "iu":
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise InputError(f"model input {spec.name!r} is {dtype} but the array ({array.dtype}) "
                             "holds non-integer or NaN values; round it or give pixel integers")
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InputError(f"model input {spec.name!r} is {dtype} ({info.min}..{info.max}) "
                             f"but the array spans {low}..{high}; rescale it")
    return array.astype(dtype)



