"""Tests for onnx_featviz.attribution.methods: CAM definitions against torch / numpy references
and hand maths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from onnx_featviz.attribution import maps as cam_maps
from onnx_featviz.attribution import methods as cam
from onnx_featviz.attribution import perturbation as cam_perturbation
from onnx_featviz.errors import InputError

RTOL = 1e-4


def _close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    """Relative closeness, with an absolute floor at rtol * max|want| (maps have zeros)."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-12))


class _Recorder:
    """progress callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check(self, total: int) -> None:
        done = [d for d, _ in self.calls]
        assert done == sorted(set(done)) and done[-1] == total
        assert {t for _, t in self.calls} == {total}


# --------------------------------------------------------------------------- torch network


def _torch_setup(signed: bool = False) -> dict[str, Any]:
    """Small seeded CNN; returns input, layer activations A, dS/dA for each image's target."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    front = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3))
    if not signed:
        front.append(nn.ReLU())
    back = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 3, 12, 12)).astype(np.float32))
    acts = front(x)
    acts.retain_grad()
    logits = back(acts)
    targets = np.array([0, 3, 6])
    logits[torch.arange(3), torch.from_numpy(targets)].sum().backward()
    return {"torch": torch, "x": x, "A": acts.detach(), "g": acts.grad.detach(),
            "targets": targets, "front": front, "back": back}


def _ref_grad_cam(t: Any, a: Any, g: Any) -> Any:
    w = g.mean(dim=(2, 3), keepdim=True)
    return t.relu((w * a).sum(dim=1))


def _ref_grad_cam_pp(t: Any, a: Any, g: Any) -> Any:
    # Chattopadhay et al. eq. 19 with the exponential score: alpha = g^2 / (2g^2 + sum(A) g^3).
    g2, g3 = g**2, g**3
    den = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = t.where(g != 0, g2 / t.where(den == 0, t.ones_like(den), den), t.zeros_like(g))
    w = (alpha * t.relu(g)).sum(dim=(2, 3), keepdim=True)
    return t.relu((w * a).sum(dim=1))


def _ref_xgrad_cam(t: Any, a: Any, g: Any) -> Any:
    s = a.sum(dim=(2, 3), keepdim=True)
    w = t.nan_to_num((g * a / s).sum(dim=(2, 3), keepdim=True))
    return t.relu((w * a).sum(dim=1))


def _ref_hires_cam(t: Any, a: Any, g: Any) -> Any:
    return t.relu((g * a).sum(dim=1))


def _ref_layer_cam(t: Any, a: Any, g: Any) -> Any:
    return t.relu((t.relu(g) * a).sum(dim=1))


REFS = {"grad_cam": _ref_grad_cam, "grad_cam_pp": _ref_grad_cam_pp,
        "xgrad_cam": _ref_xgrad_cam, "hires_cam": _ref_hires_cam, "layer_cam": _ref_layer_cam}


@pytest.mark.parametrize("signed", [False, True], ids=["after_relu", "conv_output"])
@pytest.mark.parametrize("method", sorted(REFS))
def test_gradient_cams_match_torch_autograd(method: str, signed: bool) -> None:
    s = _torch_setup(signed)
    t = s["torch"]
    want = REFS[method](t, s["A"].double(), s["g"].double()).numpy()
    acts, grads = s["A"].numpy(), s["g"].numpy()
    before = (acts.copy(), grads.copy())
    res = cam.compute(method, cam.CamInputs(targets=s["targets"], input_size=(12, 12),
                                            activations=acts, gradients=grads))
    assert want.max() > 0
    _close(res.layer_cam, want)
    assert res.layer_cam.dtype == np.float32 and res.layer_cam.shape == (3, 10, 10)
    assert res.cam.shape == (3, 12, 12) and res.cam.min() >= 0 and res.cam.max() <= 1
    np.testing.assert_array_equal(acts, before[0])
    np.testing.assert_array_equal(grads, before[1])
    # the heatmap is the normalized bilinear upsampling of the raw map (torch reference)
    up = t.nn.functional.interpolate(t.from_numpy(want)[:, None], size=(12, 12),
                                     mode="bilinear", align_corners=False)[:, 0].numpy()
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(res.cam, (up - lo) / (hi - lo), atol=1e-4)


def test_grad_cam_pp_equals_pytorch_grad_cam_formula_when_eps_is_negligible() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2, (2, 4, 5, 5))
    g = rng.uniform(-1, 1, (2, 4, 5, 5))
    # pytorch-grad-cam grad_cam_plusplus.py, transcribed (eps 1e-6 is tiny next to |g| ~ 1)
    g2, g3 = g**2, g**3
    aij = g2 / (2 * g2 + a.sum(axis=(2, 3))[:, :, None, None] * g3 + 1e-6)
    aij = np.where(g != 0, aij, 0)
    w = (np.maximum(g, 0) * aij).sum(axis=(2, 3))
    want = np.maximum((w[:, :, None, None] * a).sum(axis=1), 0)
    _close(cam_maps.grad_cam_pp(a, g), want, rtol=1e-4)


# --------------------------------------------------------------------------- Eigen-CAM


def _eigen_reference(acts: np.ndarray) -> np.ndarray:
    out = []
    for a in acts.astype(np.float64):
        m = a.reshape(a.shape[0], -1).T
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m)
        p = m @ vt[0]
        if np.corrcoef(p, a.mean(axis=0).ravel())[0, 1] < 0:  # documented sign rule
            p = -p
        out.append(np.maximum(p, 0).reshape(a.shape[1:]))
    return np.stack(out)


def test_eigen_cam_matches_numpy_svd_projection() -> None:
    rng = np.random.default_rng(0)
    acts = rng.uniform(0, 1, (3, 8, 6, 5)).astype(np.float32)
    res = cam.compute("eigen_cam", cam.CamInputs(targets=np.zeros(3, int), input_size=(12, 10),
                                                 activations=acts))
    _close(res.layer_cam, _eigen_reference(acts), rtol=1e-4)
    assert cam.METHODS["eigen_cam"].needs_gradients is False


def test_eigen_cam_sign_points_at_the_active_region() -> None:
    rng = np.random.default_rng(0)
    acts = rng.uniform(0, 0.1, (2, 6, 8, 8))
    acts[:, :, 2:4, 5:7] += rng.uniform(1, 2, (2, 6, 1, 1))  # a blob lit up in every channel
    acts[1] *= -1  # negated activations: the sign rule still follows the channel mean
    got = cam_maps.eigen_cam(acts)
    assert np.unravel_index(got[0].argmax(), (8, 8)) in {(r, c) for r in (2, 3) for c in (5, 6)}
    assert got[1, 2:4, 5:7].max() == 0  # the blob is now the least active region


# --------------------------------------------------------------------------- Score-CAM


def _linear_forward(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """scores[b, c] = sum(x[b] * weights[c]): a model whose class scores are linear in x."""

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.einsum("bchw,kchw->bk", batch.astype(np.float64), weights)

    return forward


def test_score_cam_on_a_linear_model_by_hand() -> None:
    # Layer at input resolution with indicator channels: masks are the indicators themselves.
    x = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2)  # img0 0..3, img1 4..7
    acts = np.zeros((2, 2, 2, 2), np.float32)
    acts[:, 0, 0, :] = 1.0  # channel 0: top row
    acts[:, 1, :, 0] = 1.0  # channel 1: left column
    wts = np.stack([np.ones((1, 2, 2)), np.array([[[1.0, 0.0], [0.0, 2.0]]])])  # 2 classes
    rec = _Recorder()
    inputs = cam.CamInputs(targets=np.array([0, 1]), input_size=(2, 2), activations=acts,
                           input_batch=x, forward=_linear_forward(wts), batch_size=3,
                           progress=rec)
    got = cam.compute("score_cam", inputs).layer_cam
    m = 1 / (1 + 1e-8)  # mask value of an indicator, (1 - 0) / (1 - 0 + 1e-8)
    s0 = np.array([0 + 1, 0 + 2]) * m  # img0 class 0: top row 0+1, left column 0+2
    s1 = np.array([4 * 1 + 5 * 0, 4 * 1 + 6 * 0]) * m  # img1 class 1: weights 1 at (0,0)
    want = []
    for s, a in ((s0, acts[0]), (s1, acts[1])):
        w = np.exp(s) / np.exp(s).sum()
        want.append(np.maximum(w[0] * a[0] + w[1] * a[1], 0))
    _close(got, np.stack(want), rtol=1e-6)
    rec.check(4)
    assert [d for d, _ in rec.calls] == [3, 4]


def test_score_cam_matches_torch_definition() -> None:
    s = _torch_setup()
    t, model = s["torch"], _full_model(s)
    acts, x = s["A"].numpy(), s["x"].numpy()

    def forward(batch: np.ndarray) -> np.ndarray:
        with t.no_grad():
            return model(t.from_numpy(batch)).numpy()

    got = cam_perturbation.score_cam(acts, x, targets=s["targets"], forward=forward, batch_size=7)
    up = t.nn.functional.interpolate(s["A"], size=(12, 12), mode="bilinear", align_corners=False)
    lo = up.amin(dim=(2, 3), keepdim=True)
    masks = (up - lo) / (up.amax(dim=(2, 3), keepdim=True) - lo + 1e-8)
    want = []
    with t.no_grad():
        for n, target in enumerate(s["targets"]):
            scores = model(s["x"][n][None] * masks[n][:, None])[:, target]
            w = t.softmax(scores.double(), dim=0)
            want.append(t.relu((w[:, None, None] * s["A"][n].double()).sum(0)).numpy())
    _close(got, np.stack(want), rtol=1e-4)


def _full_model(s: dict[str, Any]) -> Any:
    return s["torch"].nn.Sequential(s["front"], s["back"])


# --------------------------------------------------------------------------- Ablation-CAM


def test_ablation_cam_on_a_linear_head_by_hand() -> None:
    rng = np.random.default_rng(0)
    acts = rng.uniform(0, 1, (2, 3, 2, 2)).astype(np.float32)
    v = rng.uniform(-1, 1, (4, 3, 2, 2))  # 4 classes
    bias = np.array([5.0, 7.0])  # per image: checks that image_index reaches the callable
    seen: list[np.ndarray] = []

    def rest(layer: np.ndarray, image_index: np.ndarray) -> np.ndarray:
        seen.append(image_index.copy())
        return np.einsum("bkhw,ckhw->bc", layer.astype(np.float64), v) + bias[image_index, None]

    rec = _Recorder()
    targets = np.array([1, 3])
    got = cam.compute("ablation_cam", cam.CamInputs(
        targets=targets, input_size=(4, 4), activations=acts, forward_from_layer=rest,
        batch_size=3, progress=rec)).layer_cam
    want = []
    for n, t in enumerate(targets):
        contrib = (acts[n] * v[t]).sum(axis=(1, 2))  # y - y_k: what channel k adds to the score
        y = contrib.sum() + bias[n]
        want.append(np.maximum(((contrib / y)[:, None, None] * acts[n]).sum(0), 0))
    _close(got, np.stack(want), rtol=1e-5)
    rec.check(8)  # N * (K + 1) rows
    np.testing.assert_array_equal(np.concatenate(seen), [0, 0, 0, 0, 1, 1, 1, 1])


def test_ablation_cam_matches_torch_rest_of_network() -> None:
    s = _torch_setup()
    t, back = s["torch"], s["back"]

    def rest(layer: np.ndarray, image_index: np.ndarray) -> np.ndarray:
        with t.no_grad():
            return back(t.from_numpy(layer)).numpy()

    got = cam_perturbation.ablation_cam(s["A"].numpy(), targets=s["targets"],
                                        forward_from_layer=rest, batch_size=4)
    want = []
    with t.no_grad():
        for n, target in enumerate(s["targets"]):
            a = s["A"][n]
            y = back(a[None])[0, target].double()
            ablated = a[None].repeat(a.shape[0], 1, 1, 1)
            for k in range(a.shape[0]):
                ablated[k, k] = 0
            w = (y - back(ablated)[:, target].double()) / y
            want.append(t.relu((w[:, None, None] * a.double()).sum(0)).numpy())
    _close(got, np.stack(want), rtol=1e-4)


# --------------------------------------------------------------------------- occlusion


def test_occlusion_on_a_linear_model_by_hand() -> None:
    x = np.arange(1 * 2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5) / 10
    wts = np.random.default_rng(0).uniform(-1, 1, (3, 2, 5, 5))
    opts = cam_perturbation.OcclusionOptions(window=(2, 3), stride=(2, 2), baseline=0.5)
    rec = _Recorder()
    res = cam.compute("occlusion", cam.CamInputs(
        targets=np.array([2]), input_size=(5, 5), input_batch=x, forward=_linear_forward(wts),
        occlusion=opts, batch_size=4, progress=rec))
    rows, cols = [0, 2, 3], [0, 2]  # 3 = 5 - 2: an extra window flush with the bottom edge
    grid = np.zeros((len(rows), len(cols)))
    total, count = np.zeros((5, 5)), np.zeros((5, 5))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            patch = (x[0, :, r:r + 2, c:c + 3] - 0.5) * wts[2, :, r:r + 2, c:c + 3]
            grid[i, j] = max(patch.sum(), 0.0)  # score drop y - y_p for a linear model
            total[r:r + 2, c:c + 3] += grid[i, j]
            count[r:r + 2, c:c + 3] += 1
    _close(res.layer_cam[0], grid, rtol=1e-5)
    pix = total / count
    np.testing.assert_allclose(res.cam[0], (pix - pix.min()) / (pix.max() - pix.min()), atol=1e-6)
    rec.check(7)  # 1 unoccluded + 6 windows
    assert cam.METHODS["occlusion"].needs_activations is False


def test_occlusion_mean_baseline_and_bad_window() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 5.0
    wts = np.ones((1, 1, 4, 4))
    got = cam_perturbation.occlusion(x, targets=np.array([0]), forward=_linear_forward(wts),
                        options=cam_perturbation.OcclusionOptions(window=(4, 4), baseline="mean"))
    _close(got, np.zeros((1, 1, 1)), rtol=1e-6)  # mean fill keeps the total: no drop
    with pytest.raises(InputError, match="larger than the input"):
        cam_perturbation.occlusion(x, targets=np.array([0]), forward=_linear_forward(wts),
                      options=cam_perturbation.OcclusionOptions(window=(5, 2)))


# --------------------------------------------------------------------------- resize / normalize


@pytest.mark.parametrize("src,dst", [((7, 7), (224, 224)), ((3, 5), (12, 10)),
                                     ((10, 10), (4, 6)), ((1, 4), (3, 9)), ((6, 6), (6, 6))])
def test_upsample_bilinear_matches_torch_interpolate(src: tuple[int, int],
                                                     dst: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).standard_normal((2, *src)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=dst,
                                           mode="bilinear", align_corners=False)[:, 0].numpy()
    got = cam_maps.upsample_bilinear(maps, dst)
    assert got.shape == (2, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_upsample_bilinear_rejects_bad_shapes() -> None:
    with pytest.raises(InputError, match=r"\(N, h, w\)"):
        cam_maps.upsample_bilinear(np.zeros((3, 3)), (4, 4))
    with pytest.raises(InputError, match="two positive ints"):
        cam_maps.upsample_bilinear(np.zeros((1, 3, 3)), (0, 4))


def test_normalize_heatmaps_range_constant_and_nan() -> None:
    maps = np.random.default_rng(0).standard_normal((3, 4, 5)) * 100
    maps[1] = 7.0
    maps[2, 0, 0] = np.nan
    out = cam_maps.normalize_heatmaps(maps)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert out[0].min() == 0 and out[0].max() == 1
    np.testing.assert_array_equal(out[1], 0)
    assert np.isfinite(out).all() and out[2].max() == 1


# --------------------------------------------------------------------------- backprop views


def test_saliency_guided_views() -> None:
    g = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    raw = cam_maps.saliency(g, normalize=False)
    np.testing.assert_array_equal(raw, np.abs(g).max(axis=1))
    assert cam_maps.saliency(g).max() == 1
    img = cam_maps.guided_backprop_image(g)
    assert img.shape == (2, 4, 5, 3) and img.min() >= 0 and img.max() <= 1
    heat = np.random.default_rng(1).uniform(0, 1, (2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(cam_maps.guided_grad_cam(g, heat), g * heat[:, None], rtol=1e-6)
    with pytest.raises(InputError, match="upsample the CAM"):
        cam_maps.guided_grad_cam(g, heat[:, :2])


# --------------------------------------------------------------------------- compute / registry


def test_registry_flags_and_aliases() -> None:
    assert {n for n, m in cam.METHODS.items() if m.needs_gradients} == set(REFS)
    assert cam.METHODS["score_cam"].needs_forward and cam.METHODS["score_cam"].needs_input
    assert cam.METHODS["ablation_cam"].needs_layer_forward
    assert cam.resolve_method("Grad-CAM++") == "grad_cam_pp"
    assert cam.resolve_method("GradCAM") == "grad_cam"
    assert cam.resolve_method("score-cam") == "score_cam"


def test_compute_errors() -> None:
    acts = np.ones((1, 2, 3, 3), np.float32)
    base = {"targets": np.array([0]), "input_size": (6, 6), "activations": acts}
    with pytest.raises(InputError, match="close matches: grad_cam.*valid methods"):
        cam.compute("grad_camm", cam.CamInputs(**base))
    with pytest.raises(InputError, match="needs CamInputs.gradients"):
        cam.compute("grad_cam", cam.CamInputs(**base))
    with pytest.raises(InputError, match="needs CamInputs.forward"):
        cam.compute("score_cam", cam.CamInputs(**base, input_batch=np.ones((1, 3, 6, 6))))
    with pytest.raises(InputError, match="no spatial extent"):
        cam.compute("eigen_cam", cam.CamInputs(**{**base, "activations": acts[:, :, :1, :1]}))
    with pytest.raises(InputError, match="same layer"):
        cam.compute("grad_cam", cam.CamInputs(**base, gradients=np.ones((1, 2, 3, 4))))
    with pytest.raises(InputError, match="one class per image"):
        cam.compute("eigen_cam", cam.CamInputs(**{**base, "targets": np.array([0, 1])}))
    with pytest.raises(InputError, match="but input_size is"):
        cam.compute("score_cam", cam.CamInputs(**base, input_batch=np.ones((1, 3, 6, 5)),
                                               forward=lambda b: np.ones((1, 2))))
    with pytest.raises(InputError, match=r"return \(batch, classes\)"):
        cam.compute("score_cam", cam.CamInputs(**base, input_batch=np.ones((1, 3, 6, 6)),
                                               forward=lambda b: np.ones((1, 2, 3))))


# --------------------------------------------------------------------------- targets


def test_select_targets() -> None:
    scores = np.array([[0.1, 0.9, 0.3, 0.2], [0.8, 0.1, 0.05, 0.6]])
    labels = ["tabby, tabby cat", "tiger cat", "golden retriever", "cat"]
    np.testing.assert_array_equal(cam.select_targets(scores), [1, 0])
    np.testing.assert_array_equal(cam.select_targets(scores, 2), [2, 2])
    np.testing.assert_array_equal(cam.select_targets(scores, top_k=3), [[1, 2, 3], [0, 3, 1]])
    np.testing.assert_array_equal(cam.select_targets(scores, "golden retriever", labels=labels),
                                  [2, 2])
    np.testing.assert_array_equal(cam.select_targets(scores, "Tabby Cat", labels=labels), [0, 0])
    np.testing.assert_array_equal(cam.select_targets(scores, "3"), [3, 3])
    assert cam.select_targets(scores).dtype == np.int64


def test_a_unique_close_label_is_taken_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    """ImageNet's classes.txt says "tabby"; users type "tabby cat". One close match is taken."""
    labels = ["tench", "tabby", "tiger cat", "golden retriever", "Egyptian cat",
              "Labrador retriever"]
    scores = np.zeros((1, 6))
    with caplog.at_level("WARNING"):
        assert cam.select_targets(scores, "tabby cat", labels=labels).tolist() == [1]
        assert cam.select_targets(scores, "Golden Retreiver", labels=labels).tolist() == [3]
        assert cam.select_targets(scores, "labrador", labels=labels).tolist() == [5]
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["label 'tabby cat' is not a class name; taking its one close match, "
                       "class 1 'tabby'",
                       "label 'Golden Retreiver' is not a class name; taking its one close "
                       "match, class 3 'golden retriever'",
                       "label 'labrador' is not a class name; taking its one close match, "
                       "class 5 'Labrador retriever'"]
    with pytest.raises(InputError, match="not found among 6 labels"):
        cam.select_targets(scores, "cat", labels=labels)  # tiger cat or Egyptian cat: no guess


def test_select_targets_errors() -> None:
    scores = np.zeros((1, 1000))
    msg = r"^target 1000 is out of range for 1000 classes \(0\.\.999\)$"
    with pytest.raises(InputError, match=msg):
        cam.select_targets(scores, 1000)
    labels = ["tabby cat", "tiger cat", "golden retriever"]
    with pytest.raises(InputError, match="close matches: 'tabby cat', 'tiger cat'"):
        cam.select_targets(np.zeros((1, 3)), "tabbi cot", labels=labels)  # two close matches
    with pytest.raises(InputError, match="no labels were given"):
        cam.select_targets(np.zeros((1, 3)), "cat")
    with pytest.raises(InputError, match="both given"):
        cam.select_targets(np.zeros((1, 3)), 1, top_k=2)
    with pytest.raises(InputError, match="top_k must be in 1..3"):
        cam.select_targets(np.zeros((1, 3)), top_k=4)
    with pytest.raises(InputError, match="one score per class"):
        cam.select_targets(np.zeros((1, 3, 2, 2)))
