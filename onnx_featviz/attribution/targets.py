"""Target scores beyond classification: segmentation regions and any tensor element.

A CAM explains a scalar score ``S`` per image. For a classifier ``S`` is one logit; here it is

- **segmentation**: the class-``k`` channel of an (N, K, H, W) or (N, H, W, K) output summed over
  a region (default: the pixels whose arg-max is ``k``; or a mask image; or a box in input
  pixels), as pytorch-grad-cam's ``SemanticSegmentationTarget``;
- **any element**: one element of any tensor (flat or multi-index within a row), or the sum of
  the whole row (``"all"``).

Each kind has a *score* function (the perturbation methods - Score-CAM, Ablation-CAM, occlusion -
score modified forward passes with it) and a *seed* builder: the gradient ``dS/d(output)`` the
reverse pass (``autodiff.differentiate``, graph input ``seed``) is fed. Both scores are linear in
the output once the region is fixed, so the seed is the region's indicator on channel ``k`` (a
one-hot for an element, all ones for ``"all"``). The region is fixed from the unperturbed output,
as pytorch-grad-cam does: the arg-max region is piecewise constant, so this is the exact gradient.

Pure numpy: no onnxruntime, no disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError

LAYOUTS = ("NCHW", "NHWC")
"""Layouts of a segmentation output: class axis 1 (NCHW) or last (NHWC)."""
Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in input pixels, x to the right, y down, x1/y1 exclusive."""
ElementTarget = int | tuple[int, ...] | Literal["all"]


# ----------------------------------------------------------------------------- segmentation


def _check_layout(shape: Sequence[int], layout: str) -> tuple[int, int, int, int]:
    """Return (N, K, H, W) of a segmentation output shape, or raise."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown segmentation layout {layout!r}; use one of {LAYOUTS}")
    if len(shape) != 4:
        raise InputError(f"a segmentation output is 4-D (N, K, H, W) or (N, H, W, K), got "
                         f"shape {tuple(shape)}; pick the per-pixel class-score output")
    n, a, b, c = (int(d) for d in shape)
    return (n, a, b, c) if layout == "NCHW" else (n, c, a, b)


def _check_class(k: int, classes: int) -> int:
    if not -classes <= k < classes:
        raise InputError(f"class {k} out of range for a segmentation output with {classes} "
                         f"classes; use 0..{classes - 1}")
    return k % classes


def _class_plane(output: NDArray[np.floating], layout: str, k: int) -> NDArray[np.float64]:
    """Return (N, H, W) float64 channel ``k`` of the output."""
    arr = np.asarray(output, np.float64)
    _, classes, _, _ = _check_layout(arr.shape, layout)
    k = _check_class(k, classes)
    return arr[:, k] if layout == "NCHW" else arr[..., k]


def argmax_region(output: NDArray[np.floating], layout: str, k: int) -> NDArray[np.bool_]:
    """Return the pixels whose arg-max class is ``k`` (ties: the first class, as numpy).

    Args:
        output: (N, K, H, W) or (N, H, W, K) per-pixel class scores.
        layout: ``"NCHW"`` or ``"NHWC"`` (the graph's layout of the output).
        k: class index (negative counts from the end).

    Returns:
        (N, H, W) bool mask.

    Raises:
        InputError: bad layout, shape or class.
    """
    arr = np.asarray(output)
    _, classes, _, _ = _check_layout(arr.shape, layout)
    k = _check_class(k, classes)
    return np.asarray(np.argmax(arr, axis=1 if layout == "NCHW" else -1) == k)


def mask_region(mask: NDArray[np.generic], size: tuple[int, int]) -> NDArray[np.bool_]:
    """Resize a mask image to the output size by nearest neighbour; nonzero means inside.

    Source pixel of output pixel ``i`` is ``floor((i + 0.5) * H_mask / H)`` (PIL's NEAREST).

    Args:
        mask: (Hm, Wm) one mask for all images or (N, Hm, Wm) one per image; any dtype.
        size: (H, W) output pixels.

    Returns:
        (Hm->H, Wm->W) bool: (H, W) or (N, H, W).

    Raises:
        InputError: the mask is not 2-D/3-D or is empty.
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise InputError(f"a region mask is (H, W) or (N, H, W) and not empty, got shape "
                         f"{arr.shape}; convert a PIL image with np.asarray(image.convert('L'))")
    rows = np.minimum(((np.arange(size[0]) + 0.5) * arr.shape[-2] / size[0]).astype(np.intp),
                      arr.shape[-2] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * arr.shape[-1] / size[1]).astype(np.intp),
                      arr.shape[-1] - 1)
    return np.asarray(arr[..., rows[:, None], cols[None, :]] != 0)


def box_region(box: Box, input_size: tuple[int, int], size: tuple[int, int]
               ) -> NDArray[np.bool_]:
    """Return the output pixels a box in input pixels overlaps.

    The box is scaled by ``(H / H_in, W / W_in)``; output pixel ``(i, j)`` covers
    ``[j, j + 1) x [i, i + 1)`` and is inside when that square overlaps the scaled box with
    positive area, i.e. columns ``floor(x0') .. ceil(x1') - 1``, clipped to the output.

    Args:
        box: ``(x0, y0, x1, y1)`` input pixels, x0 < x1, y0 < y1.
        input_size: (H_in, W_in) model input size.
        size: (H, W) output size.

    Returns:
        (H, W) bool mask.

    Raises:
        InputError: a degenerate box, or one that misses the image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"box {box} needs x0 < x1 and y0 < y1 (x0, y0, x1, y1 in input "
                         "pixels)")
    sy, sx = size[0] / input_size[0], size[1] / input_size[1]
    r0, r1 = max(math.floor(y0 * sy), 0), min(math.ceil(y1 * sy), size[0])
    c0, c1 = max(math.floor(x0 * sx), 0), min(math.ceil(x1 * sx), size[1])
    if r0 >= r1 or c0 >= c1:
        raise InputError(f"box {box} lies outside the {input_size[1]}x{input_size[0]} (WxH) "
                         "input; give x0, y0, x1, y1 in input pixels")
    out = np.zeros(size, bool)
    out[r0:r1, c0:c1] = True
    return out


def segmentation_region(output: NDArray[np.floating], layout: str, k: int, *,
                        mask: NDArray[np.generic] | None = None, box: Box | None = None,
                        input_size: tuple[int, int] | None = None) -> NDArray[np.bool_]:
    """Resolve a segmentation target's region: arg-max (default), a mask image or a box.

    Args:
        output: (N, K, H, W) or (N, H, W, K) per-pixel class scores of the unperturbed batch.
        layout: ``"NCHW"`` or ``"NHWC"``.
        k: the class explained.
        mask: a mask image (see ``mask_region``), or None.
        box: ``(x0, y0, x1, y1)`` input pixels (needs ``input_size``), or None.
        input_size: (H_in, W_in) of the model input, for ``box``.

    Returns:
        (N, H, W) bool region per image.

    Raises:
        InputError: both mask and box, box without input size, bad shapes, or an empty
            arg-max region (class ``k`` wins no pixel: the score would be 0 with no gradient).
    """
    n, classes, h, w = _check_layout(np.shape(output), layout)
    _check_class(k, classes)
    if mask is not None and box is not None:
        raise InputError("a segmentation region is a mask or a box, got both; pass one")
    if box is not None:
        if input_size is None:
            raise InputError(f"box {box} is in input pixels; pass input_size=(H, W) too")
        region = box_region(box, input_size, (h, w))
    elif mask is not None:
        region = mask_region(mask, (h, w))
    else:
        region = _nonempty(argmax_region(output, layout, k), k)
    if region.ndim == 3 and region.shape[0] != n:
        raise InputError(f"{region.shape[0]} masks for a batch of {n}; give one (H, W) mask "
                         "or one per image")
    return np.array(np.broadcast_to(region, (n, h, w)))


def _nonempty(region: NDArray[np.bool_], k: int) -> NDArray[np.bool_]:
    empty = np.flatnonzero(~region.reshape(len(region), -1).any(axis=1))
    if empty.size:
        raise InputError(f"class {k} is the arg-max of no pixel in image(s) {empty.tolist()}; "
                         "pick a class the model predicts or give a mask or box region")
    return region


def segmentation_seed(output_shape: Sequence[int], layout: str, k: int,
                      region: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Return ``dS/d(output)`` for ``S = sum over region of output[class k]``.

    Args:
        output_shape: (N, K, H, W) or (N, H, W, K) shape of the output.
        layout: ``"NCHW"`` or ``"NHWC"``.
        k: the class explained.
        region: (N, H, W) or (H, W) bool (``segmentation_region``).

    Returns:
        float32 array of ``output_shape``: the region's indicator on channel ``k``, 0 elsewhere.

    Raises:
        InputError: bad layout, shape, class, or a region of another size.
    """
    n, classes, h, w = _check_layout(output_shape, layout)
    k = _check_class(k, classes)
    plane = _region_plane(region, (n, h, w))
    seed = np.zeros((n, classes, h, w), np.float32)
    seed[:, k] = plane
    return seed if layout == "NCHW" else np.ascontiguousarray(seed.transpose(0, 2, 3, 1))


def segmentation_score(output: NDArray[np.floating], layout: str, k: int,
                       region: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Return ``S = sum over region of output[class k]`` per image.

    Args:
        output: (N, K, H, W) or (N, H, W, K), e.g. a perturbed batch's output.
        layout: ``"NCHW"`` or ``"NHWC"``.
        k: the class explained.
        region: (N, H, W) or (H, W) bool, fixed from the unperturbed output.

    Returns:
        (N,) float64 scores.
    """
    plane = _class_plane(output, layout, k)
    region_n = _region_plane(region, plane.shape)
    return np.asarray((plane * region_n).sum(axis=(1, 2)), np.float64)


def _region_plane(region: NDArray[np.bool_], shape: tuple[int, int, int]) -> NDArray[np.float32]:
    arr = np.asarray(region)
    if arr.shape not in (shape, shape[1:]):
        raise InputError(f"region of shape {arr.shape} does not fit an output with (N, H, W) = "
                         f"{shape}; build it with segmentation_region")
    return np.broadcast_to(arr.astype(np.float32), shape)


# ----------------------------------------------------------------------------- any element


def parse_element_target(text: str) -> ElementTarget:
    """Parse ``"all"``, a flat index ``"17"`` or a multi-index ``"3,4,5"`` (within a row).

    Raises:
        InputError: anything else.
    """
    text = text.strip()
    if text.lower() == "all":
        return "all"
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"element target {text!r} is not 'all', an index like '17' or a "
                         "multi-index like '3,4,5'") from None
    return parts[0] if len(parts) == 1 and "," not in text else parts


def _element_flat(shape: Sequence[int], target: ElementTarget) -> int | None:
    """Return the flat index within a row, or None for ``"all"``."""
    row = tuple(int(d) for d in shape[1:])
    size = math.prod(row)
    if isinstance(target, str):
        if target != "all":
            raise InputError(f"element target {target!r} unknown; use 'all', an int or a tuple")
        return None
    if isinstance(target, (int, np.integer)):
        if not -size <= target < size:
            raise InputError(f"flat index {target} out of range for a row of shape {row} "
                             f"({size} elements)")
        return int(target) % size
    index = tuple(int(i) for i in target)
    if len(index) != len(row) or any(not -d <= i < d for i, d in zip(index, row, strict=True)):
        raise InputError(f"multi-index {index} does not fit a row of shape {row} (the batch "
                         "axis is not part of the index)")
    return int(np.ravel_multi_index(tuple(i % d for i, d in zip(index, row, strict=True)), row))


def element_seed(output_shape: Sequence[int], target: ElementTarget) -> NDArray[np.float32]:
    """Return ``dS/d(output)`` for ``S`` = one element of each row, or the row's sum (``"all"``).

    Args:
        output_shape: (N, ...) shape of the tensor scored.
        target: flat index within a row, multi-index without the batch axis, or ``"all"``.

    Returns:
        float32 array of ``output_shape``: a one-hot per row, or all ones.

    Raises:
        InputError: index out of range or of the wrong length.
    """
    shape = tuple(int(d) for d in output_shape)
    flat = _element_flat(shape, target)
    if flat is None:
        return np.ones(shape, np.float32)
    seed = np.zeros((shape[0], math.prod(shape[1:])), np.float32)
    seed[:, flat] = 1.0
    return seed.reshape(shape)


def element_score(output: NDArray[np.floating], target: ElementTarget) -> NDArray[np.float64]:
    """Return the score per row: the chosen element or the row's sum.

    Args:
        output: (N, ...) tensor values.
        target: as for ``element_seed``.

    Returns:
        (N,) float64 scores.
    """
    arr = np.asarray(output, np.float64)
    flat = _element_flat(arr.shape, target)
    rows = arr.reshape(len(arr), -1)
    return rows.sum(axis=1) if flat is None else rows[:, flat].copy()
