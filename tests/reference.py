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
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return out.astype(np.float32)


def relu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Elementwise max(x, 0)."""
    return np.maximum(x, 0)
