"""Optimization pieces for feature visualization (pure numpy): Adam, total variation, objectives,
diversity, and the pyramid recipe's resizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError
from onnx_featviz.synthesis.maths import F32, _hw


# -- optimizer and regularizers ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AdamState:
    """Adam moments of one parameter array and the number of steps taken."""

    m: F32
    v: F32
    t: int = 0


def adam_init(params: F32) -> AdamState:
    """Return zero moments for ``params``."""
    return AdamState(np.zeros_like(params, np.float32), np.zeros_like(params, np.float32))


def adam_step(params: F32, grad: F32, state: AdamState, *, lr: float, beta1: float = 0.9,
              beta2: float = 0.999, eps: float = 1e-8, ascend: bool = True
              ) -> tuple[F32, AdamState]:
    """Take one Adam step (Kingma & Ba, with bias correction) up (``ascend``) or down ``grad``.

    Returns:
        The new parameters and state (the inputs are not modified).
    """
    t = state.t + 1
    f32 = np.float32
    g = np.asarray(grad, np.float32)
    # float32 throughout, in place on fresh arrays: 4x faster than the textbook expression
    m = state.m * f32(beta1)
    m += f32(1 - beta1) * g
    v = state.v * f32(beta2)
    work = g * g
    work *= f32(1 - beta2)
    v += work
    np.sqrt(v, out=work)
    work *= f32(1 / math.sqrt(1 - beta2 ** t))
    work += f32(eps)
    np.divide(m, work, out=work)
    work *= f32(lr / (1 - beta1 ** t))
    new = np.add(params, work, out=work) if ascend else np.subtract(params, work, out=work)
    return new, AdamState(m, v, t)


def total_variation(image: F32) -> NDArray[np.float64]:
    """Return the squared total variation per image: mean over pixels of ``dy^2 + dx^2``.

    Args:
        image: ``(N, C, H, W)``; differences are taken between vertical and horizontal
            neighbours of each channel and divided by ``C * H * W``.

    Returns:
        ``(N,)`` float64.
    """
    dy = np.diff(image, axis=2).astype(np.float64)
    dx = np.diff(image, axis=3).astype(np.float64)
    size = image.shape[1] * image.shape[2] * image.shape[3]
    out: NDArray[np.float64] = ((dy * dy).sum(axis=(1, 2, 3))
                                + (dx * dx).sum(axis=(1, 2, 3))) / size
    return out


def total_variation_grad(image: F32) -> F32:
    """Return the gradient of ``total_variation`` (summed over the batch) ``(N, C, H, W)``."""
    size = image.shape[1] * image.shape[2] * image.shape[3]
    dy, dx = np.diff(image, axis=2), np.diff(image, axis=3)
    grad = np.zeros_like(image, np.float32)
    grad[:, :, 1:] += dy
    grad[:, :, :-1] -= dy
    grad[:, :, :, 1:] += dx
    grad[:, :, :, :-1] -= dx
    return grad * np.float32(2.0 / size)


# -- objectives (host reference of the in-graph objective head) --------------------------------
OBJECTIVES = ("channel", "neuron", "layer")


def objective_values(kind: str, acts: NDArray[np.floating], channels: Sequence[int] = ()
                     ) -> tuple[NDArray[np.float64], F32]:
    """Return each row's objective and its gradient with respect to the activations.

    Args:
        kind: ``"channel"`` (mean of channel ``channels[r]`` of row ``r``), ``"neuron"`` (its
            centre value, spatial index ``size // 2`` per axis) or ``"layer"`` (mean square of
            the whole row).
        acts: ``(R, C, ...)`` layer activations; ``channels``: ``(R,)`` channel per row.

    Returns:
        ``(R,)`` float64 values and the ``(R, C, ...)`` float32 seed d(objective)/d(acts).

    Raises:
        InputError: unknown kind, a channel out of range, a neuron objective without spatial dims.
    """
    a = np.asarray(acts, np.float32)
    rows = np.arange(len(a))
    if kind == "layer":
        return (a.astype(np.float64) ** 2).mean(axis=tuple(range(1, a.ndim))), \
            (2.0 * a / np.float32(a[0].size)).astype(np.float32)
    chans = check_channels(channels, a.shape[1])
    if len(chans) != len(a):
        raise InputError(f"got {len(chans)} channels for {len(a)} rows; give one per row")
    seed = np.zeros_like(a)
    plane = seed.reshape(len(a), a.shape[1], -1)
    if kind == "channel":
        plane[rows, chans] = 1.0 / plane.shape[2]
    elif kind == "neuron":
        plane[rows, chans, centre_index(a.shape[2:])] = 1.0
    else:
        raise InputError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVES)}")
    values = (a.reshape(plane.shape).astype(np.float64) * plane).sum(axis=(1, 2))
    return values, seed


def centre_index(spatial: Sequence[int]) -> int:
    """Return the flat index of the centre (``size // 2`` per axis) of a spatial shape.

    Raises:
        InputError: no spatial dims (an ``(N, C)`` tensor has no neurons to pick).
    """
    if not spatial:
        raise InputError("the neuron objective needs a layer with spatial dims (N, C, H, W); "
                         "this layer is (N, C): use the channel objective")
    return int(np.ravel_multi_index(tuple(d // 2 for d in spatial), tuple(spatial)))


def check_channels(channels: Sequence[int], count: int) -> NDArray[np.intp]:
    """Return ``channels`` as an index array after checking each is in ``0..count-1``.

    Raises:
        InputError: a channel out of range (the valid range is given).
    """
    chans = np.asarray(list(channels), np.intp)
    bad = [int(c) for c in chans if not 0 <= c < count]
    if bad:
        raise InputError(f"channel(s) {bad} out of range: the layer has {count} channels "
                         f"(0..{count - 1}); pick channels inside that range")
    return chans


def inversion_loss(acts: NDArray[np.floating], target: NDArray[np.floating]
                   ) -> tuple[NDArray[np.float64], F32]:
    """Return ``||f - f0||^2 / ||f0||^2`` per row and its gradient ``2 (f - f0) / ||f0||^2``.

    Raises:
        InputError: shapes differ, or a target row is all zeros (nothing to match).
    """
    f, f0 = np.asarray(acts, np.float64), np.asarray(target, np.float64)
    if f.shape != f0.shape:
        raise InputError(f"activation shape {f.shape} differs from target shape {f0.shape}")
    axes = tuple(range(1, f.ndim))
    norm = (f0 * f0).sum(axis=axes, keepdims=True)
    if np.any(norm == 0):
        raise InputError("the target activations of some image are all zero at this layer, so "
                         "there is nothing to invert; pick an earlier layer")
    diff = f - f0
    return (diff * diff / norm).sum(axis=axes), (2.0 * diff / norm).astype(np.float32)


def diversity(acts: NDArray[np.floating], group: int, *, eps: float = 1e-12
              ) -> tuple[NDArray[np.float64], F32]:
    """Return Lucid's diversity term per row and the gradient of its sum.

    Rows come in groups of ``group`` consecutive images (one group per unit). Row ``r`` of group
    ``k`` scores ``d_r = sum_{j != r} <G_r, G_j> / group`` with ``G`` the Gram matrix
    ``F F^T`` of the row's ``(C, H*W)`` activations divided by its Frobenius norm, so the sum over
    a group is Lucid's ``diversity`` (to be *subtracted* from the objective).

    Returns:
        ``(R,)`` float64 values and the ``(R, C, ...)`` float32 gradient of ``sum_r d_r``.

    Raises:
        InputError: the row count is not a multiple of ``group``.
    """
    a = np.asarray(acts, np.float64)
    if group < 1 or len(a) % group:
        raise InputError(f"{len(a)} rows do not split into groups of {group}")
    feats = a.reshape(len(a), a.shape[1], -1)
    gram = feats @ feats.transpose(0, 2, 1)
    norm = np.sqrt((gram * gram).sum(axis=(1, 2), keepdims=True) + eps)
    unit = gram / norm
    total = unit.reshape(-1, group, *unit.shape[1:]).sum(axis=1)
    total = np.repeat(total, group, axis=0)
    values = ((unit * total).sum(axis=(1, 2)) - (unit * unit).sum(axis=(1, 2))) / group
    g_unit = 2.0 * (total - unit) / group
    g_gram = g_unit / norm - gram * (gram * g_unit).sum(axis=(1, 2), keepdims=True) / norm ** 3
    g_feats = (g_gram + g_gram.transpose(0, 2, 1)) @ feats
    return values, g_feats.reshape(a.shape).astype(np.float32)


# -- pyramid recipe helpers ----------------------------------------------------------------
def pyramid_sizes(start: int, scales: int, factor: float, cap: int | None = None
                  ) -> list[int]:
    """Return the side of each scale: ``start``, then ``int(factor * previous)``, capped.

    FilterVisualizer's schedule: 56, 67, 80, 96, 115, 138, 165, 198, 237, 284, 340, 408 for
    ``start=56, scales=12, factor=1.2``.
    """
    if start < 1 or scales < 1 or factor < 1.0:
        raise InputError(f"pyramid needs start >= 1, scales >= 1 and factor >= 1, got start "
                         f"{start}, scales {scales}, factor {factor}")
    sizes, size = [], start
    for _ in range(scales):
        sizes.append(min(size, cap) if cap else size)
        size = int(factor * size)
    return sizes


def cubic_matrix(size_in: int, size_out: int, *, a: float = -0.75) -> F32:
    """Return the ``(size_out, size_in)`` bicubic interpolation matrix (OpenCV's INTER_CUBIC:
    Keys kernel with ``a = -0.75``, pixel centres aligned, edge pixels repeated)."""
    src = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    base = np.floor(src)
    out = np.zeros((size_out, size_in), np.float64)
    for k in range(-1, 3):
        d = np.abs(src - (base + k))
        w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                     np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
        cols = np.clip(base + k, 0, size_in - 1).astype(np.intp)
        np.add.at(out, (np.arange(size_out), cols), w)
    return out.astype(np.float32)


def resize_bicubic(images: F32, size: Sequence[int]) -> F32:
    """Resize ``(N, C, H, W)`` images to ``size`` ``(H', W')`` bicubically, clipped to [0, 1]."""
    ry = cubic_matrix(images.shape[2], int(size[0]))
    rx = cubic_matrix(images.shape[3], int(size[1]))
    result: F32 = np.clip(ry @ (images @ rx.T), 0.0, 1.0).astype(np.float32)
    return result


def linear_matrix(size_in: int, size_out: int) -> F32:
    """Return the ``(size_out, size_in)`` linear interpolation matrix (pixel centres aligned,
    edge pixels repeated), the 1-D factor of a bilinear resize."""
    src = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(src).astype(np.intp)
    frac = src - low
    out = np.zeros((size_out, size_in), np.float64)
    np.add.at(out, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(out, (np.arange(size_out), np.minimum(low + 1, size_in - 1)), frac)
    return out.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Resize:
    """Separable bilinear resize of ``(..., H, W)`` planes: ``rows @ x @ cols^T``.

    Its adjoint is ``rows^T @ g @ cols``; equal in and out shapes give the identity.
    """

    rows: F32
    cols: F32

    def apply(self, x: F32) -> F32:
        """Resize ``x`` ``(..., H_in, W_in)`` to ``(..., H_out, W_out)``."""
        if self.rows.shape[0] == self.rows.shape[1] and self.cols.shape[0] == self.cols.shape[1]:
            return x
        out: F32 = self.rows @ (x @ self.cols.T)
        return out

    def adjoint(self, grad: F32) -> F32:
        """Apply the adjoint (transpose) to ``grad`` ``(..., H_out, W_out)``."""
        if self.rows.shape[0] == self.rows.shape[1] and self.cols.shape[0] == self.cols.shape[1]:
            return grad
        out: F32 = self.rows.T @ (grad @ self.cols)
        return out


def linear_resize(in_shape: Sequence[int], out_shape: Sequence[int]) -> Resize:
    """Return the bilinear ``Resize`` from ``in_shape`` ``(H, W)`` planes to ``out_shape``."""
    (hi, wi), (ho, wo) = _hw(in_shape), _hw(out_shape)
    return Resize(linear_matrix(hi, ho), linear_matrix(wi, wo))


def box_blur(images: F32, size: int) -> F32:
    """Blur ``(N, C, H, W)`` with a ``size x size`` box filter (OpenCV ``blur``: borders
    reflected without repeating the edge pixel)."""
    if size <= 1:
        return images.copy()
    before, after = (size - 1) // 2, size // 2
    pad = np.pad(images, ((0, 0), (0, 0), (before, after), (before, after)), mode="reflect")
    csum = np.cumsum(np.cumsum(pad, axis=2, dtype=np.float64), axis=3)
    csum = np.pad(csum, ((0, 0), (0, 0), (1, 0), (1, 0)))
    h, w = images.shape[2], images.shape[3]
    total = (csum[:, :, size:size + h, size:size + w] - csum[:, :, :h, size:size + w]
             - csum[:, :, size:size + h, :w] + csum[:, :, :h, :w])
    return (total / (size * size)).astype(np.float32)


def image_correlation(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Return the Pearson correlation of each row of ``a`` with the same row of ``b``."""
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.where(denom > 0, (x * y).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)

