"""Token and channels-last layers as (N, C, h, w) maps, so every CAM method can read them.

A vision transformer's block output is (N, T, C) with ``T = prefix + h * w`` tokens (``prefix``
is 1 for a class token, 2 with a distillation token); pytorch-grad-cam's ``reshape_transform``
drops the prefix and reshapes the rest row-major to (N, h, w, C), then moves channels first.
A channels-last conv layer (N, h, w, C) (Keras, TFLite) only moves channels first.

``token_transform`` decides which applies from the shape (and the layout the graph reports);
``to_nchw`` applies it to activations and gradients alike; ``from_nchw`` is its inverse for a
gradient (prefix tokens get 0), e.g. to seed a reverse pass at the token tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError

KINDS = ("none", "tokens", "channels_last")


@dataclass(frozen=True, slots=True)
class TokenTransform:
    """How a layer's tensor became (N, C, h, w); ``asdict`` gives its JSON record.

    Attributes:
        kind: ``"none"`` (already NCHW), ``"tokens"`` ((N, T, C) token grid) or
            ``"channels_last"`` ((N, h, w, C)).
        grid: (h, w) of the map.
        prefix_tokens: leading tokens dropped (class/distillation); 0 unless ``"tokens"``.
        channels: C.
    """

    kind: str
    grid: tuple[int, int]
    prefix_tokens: int
    channels: int

    def as_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists for tuples)."""
        out = asdict(self)
        out["grid"] = list(self.grid)
        return out


def _token_grid(tokens: int, grid: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    """Return ((h, w), prefix) for ``tokens`` tokens."""
    if grid is not None:
        h, w = (int(g) for g in grid)
        if h < 1 or w < 1 or h * w > tokens:
            raise InputError(f"grid {grid} needs 1 <= h*w <= {tokens} tokens, got h*w = {h * w}")
        return (h, w), tokens - h * w
    for prefix in (0, 1):
        side = math.isqrt(max(tokens - prefix, 0))
        if side > 1 and side * side == tokens - prefix:
            return (side, side), prefix
    raise InputError(f"{tokens} tokens are neither h*h nor 1 + h*h (class token); pass the "
                     "patch grid (h, w) explicitly")


def token_transform(shape: Sequence[int | str | None], *, layout: str | None = None,
                    grid: tuple[int, int] | None = None) -> TokenTransform:
    """Decide how to view a layer tensor as (N, C, h, w).

    Args:
        shape: the tensor's shape, batch first (symbolic batch allowed).
        layout: the graph's layout for a 4-D tensor (``"NCHW"`` or ``"NHWC"``); ignored for 3-D.
        grid: (h, w) of a token layer when it is not square (prefix = T - h*w).

    Returns:
        The transform.

    Raises:
        InputError: not 3-D/4-D, unknown dims, unknown layout, or tokens that form no grid.
    """
    dims = tuple(shape)[1:]
    if len(dims) not in (2, 3) or not all(isinstance(d, int) for d in dims):
        raise InputError(f"a CAM layer is (N, C, h, w), (N, h, w, C) or tokens (N, T, C) with "
                         f"known sizes, got shape {tuple(shape)}")
    sizes = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    if len(sizes) == 2:
        (h, w), prefix = _token_grid(sizes[0], grid)
        return TokenTransform("tokens", (h, w), prefix, sizes[1])
    if layout == "NHWC":
        return TokenTransform("channels_last", (sizes[0], sizes[1]), 0, sizes[2])
    if layout in (None, "NCHW"):
        return TokenTransform("none", (sizes[1], sizes[2]), 0, sizes[0])
    raise InputError(f"unknown layout {layout!r}; use 'NCHW' or 'NHWC'")


def to_nchw(arr: NDArray[np.generic], transform: TokenTransform) -> NDArray[np.generic]:
    """Return ``arr`` as (N, C, h, w) (a new contiguous array).

    Raises:
        InputError: ``arr`` does not have the shape the transform was made for.
    """
    data = np.asarray(arr)
    h, w = transform.grid
    c, p = transform.channels, transform.prefix_tokens
    if transform.kind == "tokens":
        _check(data, (p + h * w, c), transform)
        out = data[:, p:, :].reshape(len(data), h, w, c).transpose(0, 3, 1, 2)
    elif transform.kind == "channels_last":
        _check(data, (h, w, c), transform)
        out = data.transpose(0, 3, 1, 2)
    else:
        _check(data, (c, h, w), transform)
        out = data
    return np.ascontiguousarray(out)


def from_nchw(arr: NDArray[np.generic], transform: TokenTransform) -> NDArray[np.generic]:
    """Invert ``to_nchw``: (N, C, h, w) back to the layer's shape; prefix tokens are 0.

    Raises:
        InputError: ``arr`` is not (N, C, h, w) for this transform.
    """
    data = np.asarray(arr)
    h, w = transform.grid
    c, p = transform.channels, transform.prefix_tokens
    _check(data, (c, h, w), transform)
    if transform.kind == "none":
        return data.copy()
    last = data.transpose(0, 2, 3, 1)
    if transform.kind == "channels_last":
        return np.ascontiguousarray(last)
    out = np.zeros((len(data), p + h * w, c), data.dtype)
    out[:, p:, :] = last.reshape(len(data), h * w, c)
    return out


def _check(data: NDArray[np.generic], row: tuple[int, ...], transform: TokenTransform) -> None:
    if data.shape[1:] != row:
        raise InputError(f"array of shape {data.shape} does not fit {transform} (expected "
                         f"(N, {', '.join(map(str, row))})); rebuild it with token_transform")
