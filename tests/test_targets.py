"""Tests for attribution.targets: segmentation regions, seeds, scores; any-element targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnx_featviz.attribution import targets as tg
from onnx_featviz.errors import InputError

SIZE = 32


# --------------------------------------------------------------------------- hand-made numbers


def _output() -> np.ndarray:
    """(2, 3, 4, 5) scores, image 1 mirrored left-right."""
    out = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    out[1] = out[0, :, :, ::-1]
    return out


def test_argmax_region_seed_and_score_by_hand() -> None:
    out = _output()
    k = 1
    region = tg.segmentation_region(out, "NCHW", k)
    want_region = np.array([[[out[n, k, i, j] >= out[n, :, i, j].max() for j in range(5)]
                             for i in range(4)] for n in range(2)])
    np.testing.assert_array_equal(region, want_region)
    seed = tg.segmentation_seed(out.shape, "NCHW", k, region)
    assert seed.dtype == np.float32 and seed.shape == out.shape
    assert seed.sum() == region.sum() and np.all(seed[:, k] == region)
    assert not seed[:, [0, 2]].any()
    want = [sum(float(out[n, k, i, j]) for i in range(4) for j in range(5) if want_region[n, i, j])
            for n in range(2)]
    np.testing.assert_allclose(tg.segmentation_score(out, "NCHW", k, region), want, rtol=1e-6)


def test_nhwc_layout_is_the_transposed_nchw_target() -> None:
    out = _output()
    nhwc = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    region = tg.segmentation_region(nhwc, "NHWC", 2)
    np.testing.assert_array_equal(region, tg.segmentation_region(out, "NCHW", 2))
    seed = tg.segmentation_seed(nhwc.shape, "NHWC", 2, region)
    np.testing.assert_array_equal(seed, tg.segmentation_seed(out.shape, "NCHW", 2, region)
                                  .transpose(0, 2, 3, 1))
    np.testing.assert_allclose(tg.segmentation_score(nhwc, "NHWC", -1, region),
                               tg.segmentation_score(out, "NCHW", 2, region), rtol=1e-6)


def test_box_region_scales_input_pixels_to_output_pixels() -> None:
    # 64x64 input, 16x16 output: (8, 4, 20, 13) -> (2, 1, 5, 3.25): columns 2..4, rows 1..3
    region = tg.box_region((8, 4, 20, 13), (64, 64), (16, 16))
    want = np.zeros((16, 16), bool)
    want[1:4, 2:5] = True
    np.testing.assert_array_equal(region, want)
    # non-square: 40 high x 80 wide input to 4x4: x 0..20 -> 0..1 (column 0), y 10..40 -> 1..4
    np.testing.assert_array_equal(np.argwhere(tg.box_region((0, 10, 20, 40), (40, 80), (4, 4))),
                                  [[1, 0], [2, 0], [3, 0]])
    out = _output()
    got = tg.segmentation_region(out, "NCHW", 0, box=(0, 0, 10, 10), input_size=(8, 10))
    assert got.shape == (2, 4, 5) and got[:, :, :].all()


def test_mask_region_is_pil_nearest_resize() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((13, 17)) > 0.5).astype(np.uint8) * 255
    for size in [(4, 5), (26, 34), (7, 40)]:
        want = np.asarray(Image.fromarray(mask).resize(size[::-1], Image.Resampling.NEAREST))
        np.testing.assert_array_equal(tg.mask_region(mask, size), want > 0)
    per_image = np.stack([mask, 255 - mask])
    out = _output()
    got = tg.segmentation_region(out, "NCHW", 0, mask=per_image)
    np.testing.assert_array_equal(got[0], ~got[1])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"k": 3}, "out of range"),
    ({"k": 0, "layout": "NWHC"}, "unknown segmentation layout"),
    ({"k": 0, "mask": np.ones((2, 2)), "box": (0, 0, 1, 1)}, "got both"),
    ({"k": 0, "box": (0, 0, 1, 1)}, "input_size"),
    ({"k": 0, "box": (5, 0, 1, 1), "input_size": (4, 5)}, "x0 < x1"),
    ({"k": 0, "box": (50, 50, 60, 60), "input_size": (4, 5)}, "outside"),
    ({"k": 0, "mask": np.ones((3, 2, 2))}, "3 masks for a batch of 2"),
])
def test_segmentation_errors(kwargs: dict[str, Any], match: str) -> None:
    layout = kwargs.pop("layout", "NCHW")
    with pytest.raises(InputError, match=match):
        tg.segmentation_region(_output(), layout, **kwargs)


def test_empty_argmax_region_is_an_error() -> None:
    out = np.zeros((1, 2, 3, 3), np.float32)
    out[0, 0] = 1.0
    with pytest.raises(InputError, match=r"image\(s\) \[0\]"):
        tg.segmentation_region(out, "NCHW", 1)


def test_element_seed_and_score() -> None:
    out = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    seed = tg.element_seed(out.shape, (1, -1))
    assert np.array_equal(seed, tg.element_seed(out.shape, 7))
    assert seed.sum() == 2 and seed[0, 1, 3] == seed[1, 1, 3] == 1
    np.testing.assert_array_equal(tg.element_score(out, (1, 3)), [7, 19])
    np.testing.assert_array_equal(tg.element_score(out, "all"), [66, 210])
    np.testing.assert_array_equal(tg.element_seed(out.shape, "all"), np.ones_like(out))
    with pytest.raises(InputError, match="out of range"):
        tg.element_seed(out.shape, 12)
    with pytest.raises(InputError, match="batch axis"):
        tg.element_seed(out.shape, (0, 1, 3))


@pytest.mark.parametrize(("text", "want"), [
    ("all", "all"), (" ALL ", "all"), ("17", 17), ("-1", -1), ("3,4,5", (3, 4, 5)), ("3,", None),
    ("x", None),
])
def test_parse_element_target(text: str, want: Any) -> None:
    if want is None:
        with pytest.raises(InputError, match="multi-index"):
            tg.parse_element_target(text)
    else:
        assert tg.parse_element_target(text) == want


# --------------------------------------------------------------------------- torch references


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def unet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    """The seeded TinyUNet, its export, a (2, 3, 32, 32) batch and the onnxruntime output."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("tests.targets_models")
    torch.set_num_threads(1)
    model = models.build("unet")
    path = models.export(model, tmp_path_factory.mktemp("unet") / "m.onnx",
                         dynamo=request.param, size=SIZE)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    return {"torch": torch, "model": model, "path": path, "x": x, "name": name,
            "output": session.run([name], {"input": x})[0]}


def _input_gradient(unet: dict[str, Any], seed: np.ndarray) -> np.ndarray:
    """dS/d(input) through the project's ONNX reverse mode, seeded with ``seed``."""
    from onnx_featviz import autodiff

    grad = autodiff.differentiate(onnx.load(str(unet["path"])), of=unet["name"], wrt=["input"])
    session = ort.InferenceSession(grad.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out = session.run([grad.gradient("input")], {"input": unet["x"], grad.seed: seed})[0]
    return np.asarray(out)


def _torch_input_gradient(unet: dict[str, Any], score: Any) -> np.ndarray:
    """d score(output) / d(input) by torch autograd; ``score`` maps (N, K, H, W) to (N,)."""
    x = unet["torch"].from_numpy(unet["x"]).requires_grad_()
    score(unet["model"](x)).sum().backward()
    return np.asarray(x.grad.numpy())


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_segmentation_seed_gives_torch_gradient_of_region_score(unet: dict[str, Any]) -> None:
    torch, k = unet["torch"], 1
    region = tg.segmentation_region(unet["output"], "NCHW", k)
    assert 0.2 < region.mean() < 0.6  # a real region, not everything
    got = _input_gradient(unet, tg.segmentation_seed(unet["output"].shape, "NCHW", k, region))

    def score(out: Any) -> Any:  # pytorch-grad-cam SemanticSegmentationTarget, fixed mask
        mask = (out.argmax(1) == k).float().detach()
        return (out[:, k] * mask).sum(dim=(1, 2))

    _close(got, _torch_input_gradient(unet, score))
    with torch.no_grad():
        want = score(unet["model"](torch.from_numpy(unet["x"]))).numpy()
    np.testing.assert_allclose(tg.segmentation_score(unet["output"], "NCHW", k, region), want,
                               rtol=1e-5)


def test_box_region_seed_gives_torch_gradient(unet: dict[str, Any]) -> None:
    region = tg.segmentation_region(unet["output"], "NCHW", 2, box=(4, 8, 20, 30),
                                    input_size=(SIZE, SIZE))
    got = _input_gradient(unet, tg.segmentation_seed(unet["output"].shape, "NCHW", 2, region))
    _close(got, _torch_input_gradient(unet, lambda out: out[:, 2, 8:30, 4:20].sum(dim=(1, 2))))


@pytest.mark.parametrize("target", [(2, 5, 7), 1000, "all"])
def test_element_seed_gives_torch_gradient(unet: dict[str, Any], target: Any) -> None:
    got = _input_gradient(unet, tg.element_seed(unet["output"].shape, target))
    if target == "all":
        want = _torch_input_gradient(unet, lambda out: out.sum(dim=(1, 2, 3)))
    else:
        flat = np.ravel_multi_index(target, (3, SIZE, SIZE)) if isinstance(target, tuple) \
            else target
        want = _torch_input_gradient(unet, lambda out: out.reshape(len(out), -1)[:, flat])
    _close(got, want)
