"""Naive numpy reference ops used as the independent truth in tests."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def conv2d(
    x: NDArray[np.float32],
    w: NDArray[np.float32],
    b: NDArray[np.float32] | None = None,
    *,
    stride: int = 1,
    pad: int = 0,
    groups: int = 1,
) -> NDArray[np.float32]:
    """Direct (loop) NCHW convolution: x (N, C, H, W), w (O, C/groups, kH, kW) -> (N, O, H', W')."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), np.float64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                rows = slice(i * stride, i * stride + kh)
                cols = slice(j * stride, j * stride + kw)
                patch = xp[:, g * cg:(g + 1) * cg, rows, cols]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return out.astype(np.float32)


def relu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Elementwise max(x, 0)."""
    return np.maximum(x, 0)


def channel_stats(x: NDArray[np.generic]) -> dict[str, NDArray[np.float64]]:
    """Per-channel (axis 1) mean, meansq, var, min, max, zeros fraction, NaN/Inf count (float64)."""
    moved = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(x.shape[1], -1)
    mean = moved.mean(axis=1)
    return {
        "mean": mean,
        "meansq": (moved * moved).mean(axis=1),
        "var": ((moved - mean[:, None]) ** 2).mean(axis=1),
        "min": moved.min(axis=1),
        "max": moved.max(axis=1),
        "zeros": (moved == 0).mean(axis=1),
        "nonfinite": (~np.isfinite(moved)).sum(axis=1).astype(np.float64),
    }


def dequantize(q: NDArray[np.generic], scale: NDArray[np.float32], zero_point: NDArray[np.generic],
               *, axis: int | None = None) -> NDArray[np.float32]:
    """(q - zero_point) * scale, per tensor or per ``axis`` (1-D scale / zero point)."""
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = -1
    s = np.asarray(scale, np.float32).reshape(shape if axis is not None else ())
    z = np.asarray(zero_point, np.int32).reshape(shape if axis is not None else ())
    return ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)


def batchnorm(x: NDArray[np.float32], scale: NDArray[np.float32], bias: NDArray[np.float32],
              mean: NDArray[np.float32], var: NDArray[np.float32],
              eps: float = 0.0) -> NDArray[np.float32]:
    """Inference BatchNormalization over axis 1 of an NCHW array."""
    def col(a: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(a, np.float32)[None, :, None, None]

    return ((x - col(mean)) / np.sqrt(col(var) + eps) * col(scale) + col(bias)).astype(np.float32)


def conv2d_input_grad(
    g: NDArray[np.float32], w: NDArray[np.float32], x_shape: tuple[int, ...], *, stride: int = 1,
    pad: int = 0,
) -> NDArray[np.float64]:
    """Loop adjoint of ``conv2d`` (groups 1): dL/dx for dL/dy = g (N, O, H', W')."""
    n, c, h, wd = x_shape
    _, _, kh, kw = w.shape
    dx = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            patch = np.einsum("no,ockl->nckl", g[:, :, i, j].astype(np.float64), w)
            dx[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += patch
    return dx[:, :, pad:pad + h, pad:pad + wd]
