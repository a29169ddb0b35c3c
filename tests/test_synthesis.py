"""Pure maths of feature visualization: adjoints, VJPs, Adam, TV, diversity, resizing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import onnx_featviz.synthesis.maths as syn
from onnx_featviz.errors import InputError
from onnx_featviz.io import preprocess as preprocess
from onnx_featviz.structs import InputSpec, Preprocessing
from onnx_featviz.synthesis import optim as syn_optim


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def _assert_adjoint(forward, adjoint, x_shape, y_shape, seed=0, rtol=1e-5) -> None:
    """<A x, y> == <x, A^T y> for random x, y."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = rng.standard_normal(y_shape).astype(np.float32)
    lhs, rhs = _dot(forward(x), y), _dot(x, adjoint(y))
    assert lhs == pytest.approx(rhs, rel=rtol, abs=1e-4)


# -- parameterizations -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 7, 9), (2, 1, 6, 5), (1, 3, 10, 1)])
@pytest.mark.parametrize("basis", ["svd", "cholesky", "none"])
def test_fourier_linear_part_adjoint(shape, basis):
    param = syn.fourier_param(shape, basis=basis, decay=1.0)
    _assert_adjoint(lambda s: syn.fourier_linear(param, s),
                    lambda g: syn.fourier_linear_adjoint(param, g), param.param_shape, shape)


def test_fourier_linear_matches_a_direct_inverse_dft():
    """Independent reference: the real part of a full inverse DFT of the Hermitian-completed
    half spectrum (numpy's irfft2 keeps only the real part of columns 0 and W/2)."""
    rng = np.random.default_rng(1)
    param = syn.fourier_param((1, 1, 4, 6), basis="none")
    spec = rng.standard_normal(param.param_shape).astype(np.float32)
    half = (spec[0, 0, ..., 0] + 1j * spec[0, 0, ..., 1]) * param.scale
    h, w = 4, 6
    y, x = np.mgrid[0:h, 0:w]
    total = np.zeros((h, w))
    for ky in range(h):
        for kx in range(w // 2 + 1):
            weight = 1.0 if kx in (0, w // 2) else 2.0
            wave = np.exp(2j * np.pi * (ky * y / h + kx * x / w))
            total += weight * np.real(half[ky, kx] * wave)
    want = total / (h * w) / 4.0
    np.testing.assert_allclose(syn.fourier_linear(param, spec)[0, 0], want, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 1, 5, 7)])
def test_fourier_vjp_matches_finite_differences(shape):
    param = syn.fourier_param(shape, start=(0.3, 0.5, 0.6)[: shape[1]])
    rng = np.random.default_rng(2)
    spec = (0.5 * rng.standard_normal(param.param_shape)).astype(np.float64)
    g = rng.standard_normal(shape)
    direction = rng.standard_normal(param.param_shape)
    image = syn.fourier_image(param, spec.astype(np.float32))
    analytic = _dot(syn.fourier_vjp(param, image, g.astype(np.float32)), direction)
    eps = 1e-2
    plus = syn.fourier_image(param, (spec + eps * direction).astype(np.float32))
    minus = syn.fourier_image(param, (spec - eps * direction).astype(np.float32))
    numeric = _dot(plus - minus, g) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=2e-3)


def test_fourier_start_colour_and_range():
    param = syn.fourier_param((2, 3, 16, 16), start=(0.0, 0.5, 0.8))
    image = syn.fourier_image(param, np.zeros(param.param_shape, np.float32))
    np.testing.assert_allclose(image[0, :, 0, 0], [0.1, 0.5, 0.8], atol=1e-6)  # 0 clipped
    spec = syn.fourier_init(param, np.random.default_rng(0), sd=5.0)
    image = syn.fourier_image(param, spec)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0


def test_fourier_scale_is_one_over_frequency():
    param = syn.fourier_param((1, 1, 8, 8))
    assert param.scale[0, 1] == pytest.approx(8 / (1 / 8))  # f = 1/8 cycles per pixel
    assert param.scale[0, 0] == pytest.approx(8 * 8)  # DC clamped at 1 / max(H, W)
    assert param.scale[4, 4] == pytest.approx(8 / np.hypot(0.5, 0.5))


def test_colour_bases_share_the_imagenet_covariance():
    svd, chol = syn.colour_basis("svd"), syn.colour_basis("cholesky")
    cov_svd, cov_chol = svd @ svd.T, chol @ chol.T
    np.testing.assert_allclose(cov_svd / cov_svd[0, 0], cov_chol / cov_chol[0, 0], rtol=1e-4)
    assert np.allclose(np.triu(chol, 1), 0.0)
    assert np.linalg.norm(svd, axis=0).max() == pytest.approx(1.0)
    with pytest.raises(InputError, match="colour basis"):
        syn.colour_basis("lab")


def test_pixel_init_is_quantized_noise_near_grey():
    noise = syn.pixel_init((2, 3, 5, 5), np.random.default_rng(0))
    assert noise.min() >= 150 / 255 and noise.max() <= 180 / 255
    np.testing.assert_allclose(noise * 255, np.round(noise * 255), atol=1e-4)
    assert syn.project_pixels(np.array([-1.0, 0.5, 2.0], np.float32)).tolist() == [0, 0.5, 1]


# -- transforms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dy,dx", [(2, -3), (0, 0), (-4, 1), (9, 9)])
def test_shift_adjoint_and_values(dy, dx):
    shape = (2, 3, 6, 7)
    _assert_adjoint(lambda x: syn.shift(x, dy, dx, fill=0.0),
                    lambda g: syn.shift_adjoint(g, dy, dx), shape, shape)
    x = np.arange(42, dtype=np.float32).reshape(6, 7)
    out = syn.shift(x, 1, 2, fill=-1.0)
    assert out[1, 2] == x[0, 0] and out[0, 0] == -1.0 and out[5, 6] == x[4, 4]


SAMPLERS = {
    "scale 0.9": lambda: syn.scale_sampler((9, 11), 0.9),
    "scale 1.1": lambda: syn.scale_sampler((9, 11), 1.1),
    "rotate 7": lambda: syn.rotation_sampler((9, 11), 7.0),
    "rotate -10": lambda: syn.rotation_sampler((12, 12), -10.0),
    "resize up": lambda: syn.resize_sampler((5, 6), (9, 11)),
    "resize down": lambda: syn.resize_sampler((9, 11), (4, 5)),
    "random composite": lambda: syn.random_sampler(np.random.default_rng(3), (20, 20), (16, 18)),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_adjoint_is_exact(name):
    sampler = SAMPLERS[name]()
    offset = sampler.fill * sampler.outside.reshape(sampler.out_shape)
    _assert_adjoint(lambda x: syn.sample(sampler, x) - offset,
                    lambda g: syn.sample_adjoint(sampler, g),
                    (2, 3, *sampler.in_shape), (2, 3, *sampler.out_shape))


def test_sampler_matches_exact_references():
    x = np.random.default_rng(0).standard_normal((2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(syn.sample(syn.rotation_sampler((7, 7), 90.0), x),
                               np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(syn.sample(syn.scale_sampler((7, 7), 1.0), x), x, atol=1e-6)
    moved = syn.affine_sampler((7, 7), (7, 7), np.eye(2), (-1.0, -2.0), fill=0.25)
    np.testing.assert_allclose(syn.sample(moved, x), syn.shift(x, 1, 2, fill=0.25), atol=1e-6)
    half = syn.affine_sampler((1, 2), (1, 1), np.eye(2), (0.0, 0.0), fill=0.0)
    assert syn.sample(half, np.array([[2.0, 4.0]], np.float32))[0, 0] == pytest.approx(3.0)


def test_zoom_out_fills_the_border_with_grey():
    out = syn.sample(syn.scale_sampler((9, 9), 0.5, fill=0.5), np.zeros((9, 9), np.float32))
    assert out[0, 0] == pytest.approx(0.5) and out[4, 4] == pytest.approx(0.0)


def test_random_sampler_is_seeded_and_varied():
    a = syn.random_sampler(np.random.default_rng(5), (32, 32), (32, 32))
    b = syn.random_sampler(np.random.default_rng(5), (32, 32), (32, 32))
    np.testing.assert_array_equal(a.index, b.index)
    rng = np.random.default_rng(6)
    weights = {syn.random_sampler(rng, (32, 32), (32, 32)).weight.tobytes() for _ in range(6)}
    assert len(weights) > 1


def test_linear_resize_adjoint_and_torch_reference():
    resize = syn_optim.linear_resize((5, 7), (11, 13))
    _assert_adjoint(resize.apply, resize.adjoint, (2, 1, 5, 7), (2, 1, 11, 13))
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((1, 2, 5, 7), dtype=np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(11, 13), mode="bilinear",
                                           align_corners=False).numpy()
    np.testing.assert_allclose(resize.apply(x), want, atol=1e-5)
    np.testing.assert_allclose(syn.sample(syn.resize_sampler((5, 7), (11, 13)), x), want,
                               atol=1e-5)


def test_bicubic_resize_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((1, 3, 6, 8), dtype=np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(7, 9), mode="bicubic",
                                           align_corners=False).numpy()
    np.testing.assert_allclose(syn_optim.resize_bicubic(x, (7, 9)), np.clip(want, 0, 1), atol=1e-5)


def test_box_blur_matches_a_naive_reflect101_mean():
    x = np.random.default_rng(0).random((1, 2, 6, 7), dtype=np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")  # OpenCV's default
    want = np.zeros_like(x)
    for i in range(6):
        for j in range(7):
            want[:, :, i, j] = padded[:, :, i:i + 5, j:j + 5].mean(axis=(2, 3))
    np.testing.assert_allclose(syn_optim.box_blur(x, 5), want, atol=1e-6)
    np.testing.assert_array_equal(syn_optim.box_blur(x, 1), x)


def test_pyramid_sizes_follow_filter_visualizer():
    assert syn_optim.pyramid_sizes(56, 12, 1.2) == [56, 67, 80, 96, 115, 138, 165, 198, 237, 284,
                                              340, 408]
    assert syn_optim.pyramid_sizes(56, 12, 1.2, cap=224)[-4:] == [224, 224, 224, 224]
    with pytest.raises(InputError, match="pyramid"):
        syn_optim.pyramid_sizes(56, 0, 1.2)


# -- the model's preprocessing ------------------------------------------------------------------
CAFFE = preprocess.PRESETS["caffe"]
IMAGENET = preprocess.PRESETS["imagenet"]


@pytest.mark.parametrize("layout,prep,channels,dtype", [
    ("NCHW", CAFFE, 3, "float16"), ("NHWC", IMAGENET, 3, "float32"),
    ("NCHW", preprocess.PRESETS["mnist"], 1, "float32"), ("NHW", Preprocessing(), 1, "float32"),
    ("NCHW", Preprocessing(), 3, "uint8"), ("NHWC", Preprocessing(), 3, "int8"),
])
def test_input_map_matches_preprocess_and_has_an_exact_adjoint(layout, prep, channels, dtype):
    spec = InputSpec("x", dtype, layout, channels, 4, 5, None)
    prep = dataclasses.replace(prep, resize="stretch")  # same size: no resampling
    imap = syn.input_map(spec, prep)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels if imap.image_channels == 3 else pixels[..., 0])
    want = preprocess.image_to_array(image, spec, prep).astype(np.float32)
    u = np.asarray(image, np.float32).reshape(4, 5, -1).transpose(2, 0, 1)[None] / 255.0
    got = syn.quantize(imap, syn.to_model(imap, u))[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(syn.from_model(imap, got[None]), u, atol=1e-3)
    model_shape = syn.to_model(imap, u).shape
    offset = syn.to_model(imap, np.zeros_like(u))
    _assert_adjoint(lambda v: syn.to_model(imap, v) - offset,
                    lambda g: syn.to_model_adjoint(imap, g), u.shape, model_shape)


def test_input_map_rejects_non_image_inputs():
    tokens = InputSpec("ids", "int64", "other", 0, None, None, None, (None, 16))
    with pytest.raises(InputError, match="image input"):
        syn.input_map(tokens, Preprocessing())


# -- optimizer and regularizers -----------------------------------------------------------------
def test_adam_matches_hand_computed_steps():
    params = np.array([1.0, -2.0], np.float32)
    state = syn_optim.adam_init(params)
    g1, g2 = np.array([0.5, -4.0], np.float32), np.array([1.0, 2.0], np.float32)
    p1, state = syn_optim.adam_step(params, g1, state, lr=0.1)
    # step 1: m_hat = g, v_hat = g^2, so the step is lr * sign(g) (eps negligible)
    np.testing.assert_allclose(p1, [1.1, -2.1], rtol=1e-6)
    p2, state = syn_optim.adam_step(p1, g2, state, lr=0.1)
    m = 0.9 * 0.1 * g1 + 0.1 * g2              # [0.145, -0.16]
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2  # [0.00124975, 0.019984]
    want = p1 + 0.1 * (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.999**2)) + 1e-8)
    np.testing.assert_allclose(p2, want, rtol=1e-6)
    np.testing.assert_allclose(p2, [1.1 + 0.1 * 0.7631579 / 0.7905694 * 1.0,
                                    -2.1 - 0.1 * 0.8421053 / 3.1620504], rtol=1e-4)
    down, _ = syn_optim.adam_step(params, g1, syn_optim.adam_init(params), lr=0.1, ascend=False)
    np.testing.assert_allclose(down, [0.9, -1.9], rtol=1e-6)
    assert state.t == 2 and params.tolist() == [1.0, -2.0]  # inputs untouched


def test_total_variation_value_and_gradient():
    checker = np.indices((4, 4)).sum(axis=0) % 2
    image = checker[None, None].astype(np.float32)
    # 12 vertical + 12 horizontal neighbour pairs each differ by 1, over 16 pixels
    assert syn_optim.total_variation(image)[0] == pytest.approx(24 / 16)
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 5, 6))
    d = rng.standard_normal(x.shape)
    eps = 1e-4
    numeric = (syn_optim.total_variation(x + eps * d).sum()
               - syn_optim.total_variation(x - eps * d).sum()) / (2 * eps)
    analytic = _dot(syn_optim.total_variation_grad(x.astype(np.float32)), d)
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_diversity_value_and_gradient():
    rng = np.random.default_rng(0)
    acts = rng.random((4, 3, 2, 2))
    same = np.concatenate([acts[:1]] * 3)
    values, _ = syn_optim.diversity(same, 3)
    np.testing.assert_allclose(values, 2 / 3)  # every Gram cosine is 1: (B - 1) / B
    # Lucid's loop: sum_{j != i} <G_i, G_j> / B with G the Frobenius-normalized (C, C) Gram
    flat = acts.reshape(4, 3, -1)
    grams = [f @ f.T / np.linalg.norm(f @ f.T) for f in flat]
    want = [sum(float((grams[i] * grams[j]).sum()) for j in range(2 * (i // 2), 2 * (i // 2) + 2)
                if j != i) / 2 for i in range(4)]
    np.testing.assert_allclose(syn_optim.diversity(acts, 2)[0], want, rtol=1e-9)
    d = rng.standard_normal(acts.shape)
    eps = 1e-5
    numeric = (syn_optim.diversity(acts + eps * d, 2)[0].sum()
               - syn_optim.diversity(acts - eps * d, 2)[0].sum()) / (2 * eps)
    assert _dot(syn_optim.diversity(acts, 2)[1], d) == pytest.approx(numeric, rel=1e-4)
    with pytest.raises(InputError, match="groups"):
        syn_optim.diversity(acts, 3)


@pytest.mark.parametrize("kind", ["channel", "neuron", "layer"])
def test_objective_values_and_seeds(kind):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    values, seed = syn_optim.objective_values(kind, acts, [1, 3, 0])
    want = {"channel": acts[[0, 1, 2], [1, 3, 0]].mean(axis=(1, 2)),
            "neuron": acts[[0, 1, 2], [1, 3, 0], 2, 2],
            "layer": (acts.astype(np.float64) ** 2).mean(axis=(1, 2, 3))}[kind]
    np.testing.assert_allclose(values, want, rtol=1e-6)
    d = rng.standard_normal(acts.shape)
    eps = 1e-3
    numeric = (syn_optim.objective_values(kind, acts + eps * d, [1, 3, 0])[0].sum()
               - syn_optim.objective_values(kind, acts - eps * d, [1, 3, 0])[0].sum()) / (2 * eps)
    assert _dot(seed, d) == pytest.approx(numeric, rel=1e-3)


def test_objective_errors_name_the_problem():
    acts = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(InputError, match=r"channel\(s\) \[4\] out of range.*0\.\.3"):
        syn_optim.objective_values("channel", acts, [0, 4])
    with pytest.raises(InputError, match="spatial dims"):
        syn_optim.objective_values("neuron", np.zeros((2, 4), np.float32), [0, 1])
    with pytest.raises(InputError, match="unknown objective"):
        syn_optim.objective_values("max", acts, [0, 1])


def test_inversion_loss_and_gradient():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2, 3, 4))
    acts = rng.standard_normal((2, 3, 4))
    values, grad = syn_optim.inversion_loss(acts, target)
    want = ((acts - target) ** 2).sum(axis=(1, 2)) / (target**2).sum(axis=(1, 2))
    np.testing.assert_allclose(values, want)
    np.testing.assert_allclose(syn_optim.inversion_loss(target, target)[0], 0.0)
    d = rng.standard_normal(acts.shape)
    eps = 1e-6
    numeric = (syn_optim.inversion_loss(acts + eps * d, target)[0].sum()
               - syn_optim.inversion_loss(acts - eps * d, target)[0].sum()) / (2 * eps)
    assert _dot(grad, d) == pytest.approx(numeric, rel=1e-5)
    with pytest.raises(InputError, match="all zero"):
        syn_optim.inversion_loss(acts, np.zeros_like(acts))


def test_image_correlation():
    a = np.random.default_rng(0).random((2, 10))
    np.testing.assert_allclose(syn_optim.image_correlation(a, 3 * a + 1), [1.0, 1.0])
    np.testing.assert_allclose(syn_optim.image_correlation(a, -a), [-1.0, -1.0])
    assert syn_optim.image_correlation(np.ones((1, 4)), a[:1, :4])[0] == 0.0
