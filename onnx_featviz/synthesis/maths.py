"""Image parameterizations and transforms for feature visualization (pure numpy): colour basis,
Fourier and pixel images, jitter and bilinear samplers, the model's preprocessing as an affine map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError
from onnx_featviz.structs import InputSpec, Preprocessing

F32 = NDArray[np.float32]


#: Square root of ImageNet's RGB colour correlation (Lucid's ``color_correlation_svd_sqrt``):
#: its columns are the principal colour directions scaled by the square roots of their variances.
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], dtype=np.float64)


COLOR_BASES = ("svd", "cholesky", "none")


# -- colour basis ---------------------------------------------------------------------------
def colour_basis(kind: str = "svd") -> F32:
    """Return the (3, 3) matrix ``M`` that maps decorrelated colour to RGB (``rgb = M @ v``).

    ``"svd"`` is Lucid's SVD square root of the ImageNet colour covariance; ``"cholesky"`` is
    the lower-triangular square root of the same covariance; ``"none"`` is the identity. The
    square roots are divided by their largest column norm, as Lucid does.

    Raises:
        InputError: unknown kind.
    """
    if kind not in COLOR_BASES:
        raise InputError(f"unknown colour basis {kind!r}; choose one of {', '.join(COLOR_BASES)}")
    if kind == "none":
        return np.eye(3, dtype=np.float32)
    root: NDArray[np.float64] = COLOR_CORRELATION_SVD_SQRT
    if kind == "cholesky":
        root = np.asarray(np.linalg.cholesky(root @ root.T), np.float64)
    out: F32 = (root / np.linalg.norm(root, axis=0).max()).astype(np.float32)
    return out


def _mix_channels(matrix: F32, x: F32) -> F32:
    """Apply ``matrix`` (C_out, C_in) to the channel axis of ``x`` (N, C_in, H, W)."""
    if matrix.shape == (1, 1):
        scaled: F32 = (x * matrix[0, 0]).astype(np.float32, copy=False)
        return scaled
    out = np.empty((x.shape[0], matrix.shape[0], *x.shape[2:]), np.float32)
    for o in range(matrix.shape[0]):
        np.multiply(x[:, 0], matrix[o, 0], out=out[:, o])
        for c in range(1, matrix.shape[1]):
            out[:, o] += matrix[o, c] * x[:, c]
    return out


def sigmoid(x: F32) -> F32:
    """Return the logistic function of ``x`` without overflow warnings."""
    out: F32 = (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(np.float32, copy=False)
    return out


# -- fourier parameterization ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FourierParam:
    """Lucid's Fourier image parameterization for images of ``shape`` ``(N, C, H, W)``.

    ``image = sigmoid(colour @ irfft2(scale * spectrum) / 4 + offset)``: ``spectrum`` is the
    parameter array ``(N, C, H, W // 2 + 1, 2)`` (real and imaginary parts), ``scale``
    ``(H, W // 2 + 1)`` is ``sqrt(H * W) / max(f, 1 / max(H, W)) ** decay`` for spatial
    frequency ``f`` (cycles per pixel), ``colour`` ``(C, C)`` is the decorrelated colour basis
    (identity for gray) and ``offset`` ``(C,)`` the logit of the start colour (0: grey).
    """

    shape: tuple[int, int, int, int]
    scale: F32
    colour: F32
    offset: F32

    @property
    def param_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of the parameter array: ``(N, C, H, W // 2 + 1, 2)``."""
        n, c, h, w = self.shape
        return (n, c, h, w // 2 + 1, 2)


def fourier_param(shape: Sequence[int], *, decay: float = 1.0, basis: str = "svd",
                  start: Sequence[float] | None = None) -> FourierParam:
    """Return the Fourier parameterization of images of ``shape`` ``(N, C, H, W)``.

    Args:
        shape: image batch shape; ``C`` is 1 (gray) or 3 (RGB).
        decay: power of the 1/f spectrum scaling (1 gives natural-image statistics).
        basis: colour basis for ``C = 3`` (see ``colour_basis``); ignored for gray.
        start: colour (one value per channel, in [0, 1]) of a zero spectrum; None: grey 0.5.
            Clipped to [0.1, 0.9] so that the sigmoid keeps a useful slope.

    Raises:
        InputError: a shape that is not (N, 1|3, H, W) with positive sizes.
    """
    n, c, h, w = _image_shape(shape)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = np.sqrt(h * w) / np.maximum(freqs, 1.0 / max(h, w)) ** decay
    colour = colour_basis(basis) if c == 3 else np.eye(c, dtype=np.float32)
    centre = np.clip(np.broadcast_to(np.asarray(0.5 if start is None else start), (c,)), 0.1,
                     0.9)
    offset = np.log(centre / (1.0 - centre)).astype(np.float32)
    return FourierParam((n, c, h, w), scale.astype(np.float32), colour, offset)


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) != 4 or dims[1] not in (1, 3) or min(dims) < 1:
        raise InputError(f"expected an image batch shape (N, 1 or 3, H, W), got {tuple(shape)}")
    return dims[0], dims[1], dims[2], dims[3]


def fourier_init(param: FourierParam, rng: np.random.Generator, *, sd: float = 0.01) -> F32:
    """Return a random spectrum ``(N, C, H, W // 2 + 1, 2)`` (Lucid: normal, std ``sd``)."""
    return (sd * rng.standard_normal(param.param_shape)).astype(np.float32)


def fourier_linear(param: FourierParam, spectrum: F32) -> F32:
    """Return the linear part ``colour @ irfft2(scale * spectrum) / 4`` ``(N, C, H, W)``
    (the pre-sigmoid image is this plus ``offset``)."""
    h, w = param.shape[2], param.shape[3]
    coeffs = _as_complex(spectrum) * param.scale
    planes = np.fft.irfft2(coeffs, s=(h, w)).astype(np.float32, copy=False)
    return _mix_channels(param.colour * np.float32(0.25), planes)


def _as_complex(spectrum: F32) -> NDArray[np.complex64]:
    """View ``(..., 2)`` float32 real/imaginary pairs as complex64 (no copy when contiguous)."""
    pairs = np.ascontiguousarray(spectrum, np.float32)
    out: NDArray[np.complex64] = pairs.view(np.complex64)[..., 0]
    return out


def fourier_linear_adjoint(param: FourierParam, grad: F32) -> F32:
    """Return the exact adjoint of ``fourier_linear`` applied to ``grad`` ``(N, C, H, W)``.

    ``irfft2`` (numpy's ``1 / (H W)`` normalization) counts each half-spectrum column that has a
    mirrored partner twice, so its adjoint is ``rfft2(g) * m / (H W)`` with ``m = 2`` on those
    columns and 1 on column 0 (and on column ``W / 2`` for even ``W``).
    """
    w = param.shape[3]
    planes = _mix_channels(np.ascontiguousarray(param.colour.T) * np.float32(0.25), grad)
    # norm="forward" is the 1 / (H W): numpy's unscaled forward transforms take a path 2-4x
    # slower than the scaled ones (numpy 2.x pocketfft), so the scale is not applied afterwards
    coeffs = np.fft.rfft2(planes, norm="forward").astype(np.complex64, copy=False)
    mult = np.full(w // 2 + 1, 2.0, np.float32)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    coeffs *= param.scale * mult
    out: F32 = np.ascontiguousarray(coeffs).view(np.float32).reshape(*coeffs.shape, 2)
    return out


def fourier_image(param: FourierParam, spectrum: F32) -> F32:
    """Return the image ``(N, C, H, W)`` in (0, 1) for a spectrum."""
    return sigmoid(fourier_linear(param, spectrum) + param.offset[:, None, None])


def fourier_vjp(param: FourierParam, image: F32, grad: F32) -> F32:
    """Return d(objective)/d(spectrum) from d(objective)/d(image) and the image it was taken at.

    Args:
        param: the parameterization; image: ``fourier_image(param, spectrum)``;
        grad: ``(N, C, H, W)`` gradient with respect to the image.
    """
    return fourier_linear_adjoint(param, grad * image * (1.0 - image))


# -- pixel parameterization ----------------------------------------------------------------
def pixel_init(shape: Sequence[int], rng: np.random.Generator, *, low: float = 150 / 255,
               high: float = 180 / 255) -> F32:
    """Return uniform noise near grey ``(N, C, H, W)`` quantized to 8 bits (FilterVisualizer)."""
    dims = _image_shape(shape)
    noise = np.floor(rng.uniform(low * 255, high * 255, dims)) / 255.0
    return noise.astype(np.float32)


def project_pixels(image: F32) -> F32:
    """Return ``image`` clipped to the valid range [0, 1] (the pixel recipe's projection)."""
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


# -- transforms: integer jitter ----------------------------------------------------------------
def shift(x: F32, dy: int, dx: int, *, fill: float = 0.5) -> F32:
    """Return ``x`` ``(..., H, W)`` moved by ``(dy, dx)`` pixels, uncovered pixels set to ``fill``.

    ``out[..., i, j] = x[..., i - dy, j - dx]`` where that index exists (pad + crop jitter).
    """
    out = np.full_like(x, fill)
    dst, src = _shift_slices(x.shape[-2:], dy, dx)
    out[..., dst[0], dst[1]] = x[..., src[0], src[1]]
    return out


def shift_adjoint(grad: F32, dy: int, dx: int) -> F32:
    """Return the adjoint of ``shift``'s linear part: ``grad`` moved back by ``(-dy, -dx)``."""
    out = np.zeros_like(grad)
    dst, src = _shift_slices(grad.shape[-2:], dy, dx)
    out[..., src[0], src[1]] = grad[..., dst[0], dst[1]]
    return out


def _shift_slices(hw: tuple[int, ...], dy: int, dx: int
                  ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    h, w = hw
    dy, dx = int(np.clip(dy, -h, h)), int(np.clip(dx, -w, w))
    dst = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    src = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    return dst, src


# -- transforms: bilinear samplers -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sampler:
    """Bilinear resampling of ``(H_in, W_in)`` planes onto ``(H_out, W_out)``: an affine map.

    ``out[p] = sum_k weight[k, p] * x[index[k, p]] + fill * outside[p]`` over the 4 corners
    ``k`` of output pixel ``p`` (flat indices). Corners outside the input have weight 0 and
    their share goes to ``outside``. The adjoint of the linear part scatters ``weight * g``
    back to ``index`` (one ``np.bincount`` per plane: 3x faster than a sorted
    ``np.add.reduceat`` and free of ``np.add.at``).
    """

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    index: NDArray[np.intp]
    weight: F32
    outside: F32
    fill: float


def affine_sampler(in_shape: Sequence[int], out_shape: Sequence[int],
                   matrix: NDArray[np.float64], offset: Sequence[float] = (0.0, 0.0), *,
                   fill: float = 0.5, clamp: bool = False) -> Sampler:
    """Return the sampler reading input ``matrix @ (p - c_out) + c_in + offset`` at output ``p``.

    Coordinates are (row, column) of pixel centres; ``c`` is a plane's centre
    ``((H - 1) / 2, (W - 1) / 2)``. With ``clamp`` the coordinates are clamped onto the input
    (edge pixels repeat, nothing is filled); otherwise corners outside read ``fill``.
    """
    (hi, wi), (ho, wo) = _hw(in_shape), _hw(out_shape)
    yy, xx = np.meshgrid(np.arange(ho) - (ho - 1) / 2.0, np.arange(wo) - (wo - 1) / 2.0,
                         indexing="ij")
    m = np.asarray(matrix, np.float64)
    src_y = m[0, 0] * yy + m[0, 1] * xx + (hi - 1) / 2.0 + offset[0]
    src_x = m[1, 0] * yy + m[1, 1] * xx + (wi - 1) / 2.0 + offset[1]
    if clamp:
        src_y, src_x = np.clip(src_y, 0, hi - 1), np.clip(src_x, 0, wi - 1)
    return _bilinear(src_y.ravel(), src_x.ravel(), (hi, wi), (ho, wo), fill)


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    h, w = (int(d) for d in shape[-2:])
    if h < 1 or w < 1:
        raise InputError(f"plane size must be positive, got {tuple(shape)}")
    return h, w


def _bilinear(src_y: NDArray[np.float64], src_x: NDArray[np.float64], in_hw: tuple[int, int],
              out_hw: tuple[int, int], fill: float) -> Sampler:
    hi, wi = in_hw
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    index = np.zeros((4, src_y.size), np.intp)
    weight = np.zeros((4, src_y.size), np.float32)
    corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
               (1, 1, fy * fx))
    for k, (dy, dx, w) in enumerate(corners):
        yc, xc = (y0 + dy).astype(np.intp), (x0 + dx).astype(np.intp)
        inside = (yc >= 0) & (yc < hi) & (xc >= 0) & (xc < wi) & (w > 0)
        index[k] = np.where(inside, yc * wi + xc, 0)
        weight[k] = np.where(inside, w, 0.0)
    outside = np.clip(1.0 - weight.sum(axis=0, dtype=np.float64), 0.0, 1.0).astype(np.float32)
    return Sampler(in_hw, out_hw, index, weight, outside, float(fill))


def sample(sampler: Sampler, x: F32) -> F32:
    """Apply ``sampler`` to ``x`` ``(..., H_in, W_in)``; returns ``(..., H_out, W_out)``."""
    lead = x.shape[:-2]
    planes = x.reshape(-1, sampler.in_shape[0] * sampler.in_shape[1])
    out = np.take(planes, sampler.index[0], axis=1) * sampler.weight[0]
    for k in range(1, 4):
        out += np.take(planes, sampler.index[k], axis=1) * sampler.weight[k]
    if sampler.fill:
        out += np.float32(sampler.fill) * sampler.outside
    result: F32 = out.reshape(*lead, *sampler.out_shape)
    return result


def sample_adjoint(sampler: Sampler, grad: F32) -> F32:
    """Apply the adjoint of ``sample``'s linear part to ``grad`` ``(..., H_out, W_out)``."""
    lead = grad.shape[:-2]
    size_in = sampler.in_shape[0] * sampler.in_shape[1]
    rows = grad.reshape(-1, sampler.out_shape[0] * sampler.out_shape[1])
    out = np.empty((rows.shape[0], size_in), np.float32)
    index = sampler.index.ravel()
    for plane, row in enumerate(rows):
        out[plane] = np.bincount(index, weights=(row * sampler.weight).ravel(), minlength=size_in)
    return out.reshape(*lead, *sampler.in_shape)


def scale_sampler(shape: Sequence[int], factor: float, *, fill: float = 0.5) -> Sampler:
    """Return the sampler that zooms a plane by ``factor`` about its centre (same size)."""
    return affine_sampler(shape, shape, np.eye(2) / factor, fill=fill)


def rotation_sampler(shape: Sequence[int], degrees: float, *, fill: float = 0.5) -> Sampler:
    """Return the sampler that rotates a plane by ``degrees`` (counter-clockwise) about its
    centre (same size)."""
    return affine_sampler(shape, shape, _rotation(-degrees), fill=fill)


def resize_sampler(in_shape: Sequence[int], out_shape: Sequence[int]) -> Sampler:
    """Return the bilinear resize (pixel-centre aligned, edges clamped) of in to out planes."""
    (hi, wi), (ho, wo) = _hw(in_shape), _hw(out_shape)
    return affine_sampler((hi, wi), (ho, wo), np.diag([hi / ho, wi / wo]), fill=0.0, clamp=True)


def _rotation(degrees: float) -> NDArray[np.float64]:
    """Matrix rotating (row, column) vectors by ``degrees`` counter-clockwise on screen."""
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


@dataclass(frozen=True, slots=True)
class TransformOptions:
    """Random transformation robustness (Lucid's standard transforms), composed into one sampler.

    Per step: shift by an integer in ``[-jitter, jitter]`` per axis, zoom by one of ``scales``,
    rotate by one of ``angles`` degrees, shift again by up to ``jitter_after``; pixels from
    outside the image read ``fill`` (grey, like Lucid's constant padding). Jitter amounts are
    given for a 224-pixel image and scaled with the image size.
    """

    jitter: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5
    jitter_after: int = 4
    fill: float = 0.5


def random_sampler(rng: np.random.Generator, in_shape: Sequence[int],
                   out_shape: Sequence[int], options: TransformOptions | None = None) -> Sampler:
    """Draw one composite transform (jitter, scale, rotation, jitter, resize to ``out_shape``).

    The whole chain is one affine map, so the view is sampled once (one bilinear blur, not four)
    and the adjoint is one scatter.
    """
    opts = options or TransformOptions()
    (hi, wi), (ho, wo) = _hw(in_shape), _hw(out_shape)
    size = max(hi, wi) / 224.0
    j1 = max(1, round(opts.jitter * size)) if opts.jitter else 0
    j2 = max(1, round(opts.jitter_after * size)) if opts.jitter_after else 0
    first = rng.integers(-j1, j1 + 1, 2) if j1 else np.zeros(2)
    second = rng.integers(-j2, j2 + 1, 2) if j2 else np.zeros(2)
    factor = float(rng.choice(np.asarray(opts.scales))) if opts.scales else 1.0
    angle = float(rng.choice(np.asarray(opts.angles))) if opts.angles else 0.0
    # output pixel p -> undo the second shift, the rotation and zoom, the first shift, the resize
    resize = np.diag([hi / ho, wi / wo])
    matrix = resize @ _rotation(-angle) / factor
    offset = -(matrix @ second.astype(np.float64)) - first
    return affine_sampler((hi, wi), (ho, wo), matrix, tuple(float(v) for v in offset),
                          fill=opts.fill)


# -- the model's preprocessing as an affine map ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class InputMap:
    """The affine map from image space to the model input and its adjoint.

    Model channel ``c`` gets ``gain[c] * u[:, order[c]] + bias[c]`` (``u`` in [0, 1]); then the
    channels are laid out as ``layout`` (``"NCHW"``, ``"NHWC"`` or ``"NHW"``). ``image_channels``
    is 3 (RGB image space) or 1 (gray). Integer inputs (``integer``) take the rounded values.
    """

    gain: F32
    bias: F32
    order: tuple[int, ...]
    layout: str
    image_channels: int
    integer: bool = False


def input_map(spec: InputSpec, prep: Preprocessing) -> InputMap:
    """Return the ``InputMap`` of a model input and its resolved preprocessing.

    Float inputs: ``x = (255 u * scale - mean) / std`` in the recipe's channel order; ``uint8``
    (and other integer) inputs: ``255 u``; ``int8``: ``255 u - 128`` (as ``preprocess`` does).

    Raises:
        InputError: the input is not an image input with 1 or 3 channels.
    """
    if spec.layout not in ("NCHW", "NHWC", "NHW") or spec.channels not in (1, 3):
        raise InputError(f"model input {spec.name!r} has shape {spec.shape} (layout "
                         f"{spec.layout}, {spec.channels} channels); feature visualization "
                         "needs an image input with 1 or 3 channels, e.g. (N, 3, H, W)")
    channels = spec.channels
    gray = channels == 1 or prep.channel_order == "GRAY"
    order = (0,) * channels if gray else ((2, 1, 0) if prep.channel_order == "BGR" else (0, 1, 2))
    kind = np.dtype(spec.dtype).kind
    if kind in "iu":
        low = -128.0 if np.dtype(spec.dtype) == np.int8 else 0.0
        gain, bias = np.full(channels, 255.0), np.full(channels, low)
    else:
        mean = np.broadcast_to(np.asarray(prep.mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(prep.std, np.float64), (channels,))
        gain, bias = 255.0 * prep.scale / std, -mean / std
    return InputMap(gain.astype(np.float32), bias.astype(np.float32), order, spec.layout,
                    1 if gray else 3, kind in "iu")


def to_model(imap: InputMap, image: F32) -> F32:
    """Map an image batch ``(N, C_img, H, W)`` to float32 model input in the model's layout."""
    x = image[:, list(imap.order)] * imap.gain[:, None, None] + imap.bias[:, None, None]
    return _to_layout(x.astype(np.float32, copy=False), imap.layout)


def to_model_adjoint(imap: InputMap, grad: NDArray[np.floating]) -> F32:
    """Apply the adjoint of ``to_model``'s linear part to a model-input gradient."""
    g = _from_layout(np.asarray(grad, np.float32), imap.layout) * imap.gain[:, None, None]
    out = np.zeros((g.shape[0], imap.image_channels, *g.shape[2:]), np.float32)
    for c, src in enumerate(imap.order):
        out[:, src] += g[:, c]
    return out


def from_model(imap: InputMap, x: NDArray[np.generic]) -> F32:
    """Invert ``to_model``: model input (its layout) -> image ``(N, C_img, H, W)`` in [0, 1].

    Gray images fed to a 3-channel input become the mean of the channels it reads.
    """
    nchw = _from_layout(np.asarray(x, np.float32), imap.layout)
    values = (nchw - imap.bias[:, None, None]) / imap.gain[:, None, None]
    out = np.zeros((values.shape[0], imap.image_channels, *values.shape[2:]), np.float32)
    counts = np.zeros(imap.image_channels, np.float32)
    for c, src in enumerate(imap.order):
        out[:, src] += values[:, c]
        counts[src] += 1
    return np.clip(out / counts[:, None, None], 0.0, 1.0).astype(np.float32)


def quantize(imap: InputMap, x: F32) -> F32:
    """Round float model input to the integers an integer model reads (identity for floats)."""
    if not imap.integer:
        return x
    low = float(imap.bias.min())
    return np.clip(np.rint(x), low, low + 255.0).astype(np.float32)


def _to_layout(x: F32, layout: str) -> F32:
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x[:, 0] if layout == "NHW" else x


def _from_layout(x: F32, layout: str) -> F32:
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x[:, None] if layout == "NHW" else x

