"""Tests for attribution.tokens against pytorch-grad-cam's reshape_transform and torch autograd."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from onnx_featviz.attribution import tokens as tk
from onnx_featviz.errors import InputError


@pytest.mark.parametrize(("shape", "layout", "grid", "want"), [
    ((2, 197, 768), None, None, tk.TokenTransform("tokens", (14, 14), 1, 768)),
    (("batch", 196, 384), None, None, tk.TokenTransform("tokens", (14, 14), 0, 384)),
    ((1, 50, 8), None, None, tk.TokenTransform("tokens", (7, 7), 1, 8)),
    ((1, 198, 8), None, (14, 14), tk.TokenTransform("tokens", (14, 14), 2, 8)),
    ((1, 24, 8), None, (4, 6), tk.TokenTransform("tokens", (4, 6), 0, 8)),
    ((1, 7, 9, 32), "NHWC", None, tk.TokenTransform("channels_last", (7, 9), 0, 32)),
    ((1, 32, 7, 9), "NCHW", None, tk.TokenTransform("none", (7, 9), 0, 32)),
])
def test_token_transform_from_shape(shape: tuple[Any, ...], layout: str | None,
                                    grid: tuple[int, int] | None,
                                    want: tk.TokenTransform) -> None:
    assert tk.token_transform(shape, layout=layout, grid=grid) == want


@pytest.mark.parametrize(("shape", "kwargs", "match"), [
    ((1, 11, 8), {}, "pass the patch grid"),
    ((1, 10, 8), {"grid": (4, 4)}, "h\\*w = 16"),
    ((1, 8), {}, "known sizes"),
    ((1, 8, "h", "w"), {"layout": "NCHW"}, "known sizes"),
    ((1, 8, 4, 4), {"layout": "CHWN"}, "unknown layout"),
])
def test_token_transform_errors(shape: tuple[Any, ...], kwargs: dict[str, Any],
                                match: str) -> None:
    with pytest.raises(InputError, match=match):
        tk.token_transform(shape, **kwargs)


def _grad_cam_reshape(tensor: Any, height: int, width: int) -> Any:
    """pytorch-grad-cam's ViT ``reshape_transform`` (usage_examples/vit_example.py)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def test_to_nchw_matches_pytorch_grad_cam_and_from_nchw_is_its_adjoint() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1 + 3 * 5, 6)).astype(np.float32)
    transform = tk.token_transform(x.shape, grid=(3, 5))
    got = tk.to_nchw(x, transform)
    xt = torch.from_numpy(x).requires_grad_()
    want = _grad_cam_reshape(xt, 3, 5)
    np.testing.assert_array_equal(got, want.detach().numpy())
    # the gradient of <to_nchw(x), g> with respect to the tokens is from_nchw(g)
    g = rng.normal(size=got.shape).astype(np.float32)
    (want * torch.from_numpy(g)).sum().backward()
    np.testing.assert_array_equal(tk.from_nchw(g, transform), xt.grad.numpy())
    assert not tk.from_nchw(g, transform)[:, 0].any()  # the class token gets no gradient
    np.testing.assert_array_equal(tk.to_nchw(tk.from_nchw(g, transform), transform), g)


def test_channels_last_and_identity() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    last = tk.token_transform(x.shape, layout="NHWC")
    got = tk.to_nchw(x, last)
    assert got.shape == (2, 5, 3, 4) and got[1, 4, 2, 3] == x[1, 2, 3, 4]
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(tk.from_nchw(got, last), x)
    same = tk.token_transform(x.shape, layout="NCHW")
    np.testing.assert_array_equal(tk.to_nchw(x, same), x)
    np.testing.assert_array_equal(tk.from_nchw(x, same), x)
    with pytest.raises(InputError, match="rebuild it"):
        tk.to_nchw(x[:, :2], last)


def test_as_json_round_trips() -> None:
    record = tk.TokenTransform("tokens", (14, 14), 1, 768).as_json()
    assert json.loads(json.dumps(record)) == {"kind": "tokens", "grid": [14, 14],
                                              "prefix_tokens": 1, "channels": 768}
