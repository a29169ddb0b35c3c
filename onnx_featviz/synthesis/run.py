"""``maximize`` and ``invert``: feature visualization runs on an ``Inspector`` (options, results,
the optimization loops).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

import onnx_featviz.inspector as inspection
import onnx_featviz.io.files as fileio
import onnx_featviz.synthesis.maths as syn
from onnx_featviz.errors import InputError
from onnx_featviz.io import limits
from onnx_featviz.render.progress import progress_for
from onnx_featviz.structs import Progress, ProgressFn, auto_progress
from onnx_featviz.synthesis import optim as syn_optim
from onnx_featviz.synthesis.heads import (
    POSITION_IN,
    SELECT_IN,
    TARGET_IN,
    WEIGHT_IN,
    _GradientSession,
    _Head,
)

LOG = logging.getLogger(__name__)


_T = TypeVar("_T")


RECIPES = ("fourier", "pyramid")


OBJECTIVES = syn_optim.OBJECTIVES


DEFAULT_CHANNELS = 16


F32 = NDArray[np.float32]


ModelOrInspector = inspection.Inspector | inspection.ModelSource


# -- options and results ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MaximizeOptions:
    """What ``maximize`` optimizes and how.

    ``layer``: layer name, tensor name or index; the tensor is its output (a conv layer's
    pre-activation output; name the activation tensor to use it instead). ``channels``: one
    optimized image per channel (None: the first 16, or every channel of a smaller layer);
    ignored by the ``layer`` objective. ``objective``: ``"channel"`` (mean of the channel),
    ``"neuron"`` (the channel's centre value; needs spatial dims) or ``"layer"`` (mean square of
    the whole tensor). An ``(N, C)`` tensor (a Gemm output) has channels but no spatial dims:
    the channel objective takes each channel's value and the neuron objective is refused; a
    tensor without a channel axis is refused. ``recipe``: ``"fourier"`` (1/f spectrum,
    decorrelated colour, sigmoid, random jitter/scale/rotation each step; it starts from the
    colour the preprocessing maps to a zero input) or ``"pyramid"`` (pixels from noise near
    grey, grown from ``start_size`` by ``factor`` for ``scales`` scales with bicubic upscaling
    and optional ``blur``; the sizes are the long side and a fixed non-square input keeps its
    aspect; fixed-size models see each scale resized bilinearly to their size).
    A channel whose activation is zero everywhere on the start image gets no gradient through
    a ReLU: optimize the pre-activation tensor (e.g. a conv output) for such channels.
    ``steps``: fourier: total steps (None: 512); pyramid: steps per scale (None: 20).
    ``size``: image side for models with a dynamic input size (None: the preprocessing size,
    else 224); models with a fixed size use it. ``lr``: Adam learning rate (None: 0.05 for
    fourier, 0.03 for pyramid, per [0, 1] pixel). ``diversity``: weight of Lucid's diversity
    term over the ``images`` images made per unit (``images`` None: 1, or 4 with diversity).
    ``transforms``: the fourier recipe's random transforms; ``decorrelate``: its colour basis.
    """

    layer: str | int
    channels: tuple[int, ...] | None = None
    objective: str = "channel"
    recipe: str = "fourier"
    steps: int | None = None
    size: int | None = None
    seed: int = 0
    lr: float | None = None
    diversity: float = 0.0
    images: int | None = None
    transforms: bool = True
    decorrelate: bool = True
    start_size: int = 56
    scales: int = 12
    factor: float = 1.2
    blur: int | None = None


@dataclass(frozen=True, slots=True)
class MaximizeResult:
    """Images that maximize units of one layer.

    Attributes:
        tensor: the layer tensor optimized; objective, recipe: as requested.
        units: (R,) channel of each row (-1 for the layer objective); rows are unit-major
            (the ``images`` images of a unit are consecutive).
        images: (R, H, W, C) float32 in [0, 1], RGB (C = 3) or gray (C = 1); for integer
            inputs the rounded image the model scored (except pyramid images resized to a
            fixed input size, which ``model_input`` holds).
        model_input: (R, ...) the images in the model's input layout and dtype (rounded for
            integer inputs), exactly as scored by ``final``.
        start, final: (R,) float64 objective of the initial and final image (no transforms).
        history: (steps, R) float32 objective at each step (of the transformed view).
        With ``diversity`` these are the unit's objective alone; the optimization also follows
        the diversity term, which is not included.
        start_images: (R, h, w, C) the initial images (pyramid: at the first scale's size).
    """

    tensor: str
    objective: str
    recipe: str
    units: tuple[int, ...]
    images: F32
    model_input: NDArray[np.generic]
    start: NDArray[np.float64]
    final: NDArray[np.float64]
    history: F32
    start_images: F32


@dataclass(frozen=True, slots=True)
class InvertOptions:
    """How ``invert`` reconstructs an image from its features at ``layer``.

    ``steps``: Adam steps on the pixels; ``tv``: weight of the squared total variation (per
    pixel, image in [0, 1]); ``lr``: learning rate per [0, 1] pixel; ``seed``: for the start
    noise (uniform near grey).
    """

    layer: str | int
    steps: int = 300
    tv: float = 0.05
    lr: float = 0.02
    seed: int = 0


@dataclass(frozen=True, slots=True)
class InvertResult:
    """Reconstructions of each input from its features at one layer.

    Attributes:
        tensor: the layer tensor matched; sources: where each input came from.
        images, originals: (N, H, W, C) float32 in [0, 1], the reconstructions and the inputs as
            the model saw them (after resizing), RGB or gray; for integer inputs the
            reconstructions are the rounded images the model scored.
        loss: (N,) final ``||f(x) - f(x0)||^2 / ||f(x0)||^2`` (without the TV term).
        correlation: (N,) Pearson correlation of each reconstruction with its original.
        history: (steps, N) float32 total loss (feature term + tv * TV) at each step.
    """

    tensor: str
    sources: tuple[str, ...]
    images: F32
    originals: F32
    loss: NDArray[np.float64]
    correlation: NDArray[np.float64]
    history: F32


# -- checks before a long run -------------------------------------------------------------------
def check_outputs(out: Path, npz: Path | None = None, *, picture: str = "maximize.png") -> None:
    """Refuse, before any optimization step, outputs that ``save_pictures`` would reject.

    Args:
        out: the folder the pictures go to (``maximize`` and ``invert`` write several, so a
            ``.png`` file name does not fit); npz: the optional arrays file;
        picture: a picture name written under ``out`` (named in the error message).

    Raises:
        InputError: ``out`` names a ``.png`` file or sits under a file; a path is not writable.
    """
    if out.suffix.lower() == ".png":
        raise InputError(f"{out} names one file but several pictures are written (a grid and "
                         "one per image); give a folder instead")
    fileio.check_writable([out / picture, *([npz] if npz is not None else [])])


def layer_tensors(inspector: inspection.Inspector, layers: Sequence[str | int]) -> list[str]:
    """Resolve every layer to its tensor up front (as ``maximize`` and ``invert`` do).

    Raises:
        LayerNotFoundError: a layer is unknown (close matches are listed).
    """
    return [_layer_tensor(inspector, layer) for layer in layers]


# -- layer, size and unit resolution ---------------------------------------------------------
def _layer_tensor(inspector: inspection.Inspector, layer: str | int) -> str:
    """The tensor of ``layer``: the name itself when it is a tensor, else the layer's output."""
    tensor = inspector.layer_tensors([layer], "conv")[0]
    lay = inspector.layer(layer)
    return layer if isinstance(layer, str) and layer in lay.outputs else tensor


def _image_size(inspector: inspection.Inspector, size: int | None) -> tuple[int, int]:
    """(H, W) of the optimized images: the model's fixed size, else ``size``, else the
    preprocessing size, else 224."""
    spec = inspector.spec
    if spec.height is not None and spec.width is not None:
        if size is not None and (size, size) != (spec.height, spec.width):
            raise InputError(f"model input {spec.name!r} has a fixed size {spec.height}x"
                             f"{spec.width}; size {size} does not fit it; omit the size")
        return spec.height, spec.width
    chosen = (size, size) if size is not None else inspector.preprocessing.size or (224, 224)
    if min(chosen) < 8:
        raise InputError(f"the image size must be at least 8 pixels, got {chosen}; give a "
                         "larger size")
    return chosen


def _layer_shape(inspector: inspection.Inspector, imap: syn.InputMap, tensor: str,
                 size: tuple[int, int]) -> tuple[int, ...]:
    """Per-row shape ``(C, ...)`` of ``tensor`` for a grey image of ``size`` (one real run).

    Raises:
        InputError: the tensor has no channel axis, or is not a float tensor.
    """
    grey = np.full((1, imap.image_channels, *size), 0.5, np.float32)
    x = syn.quantize(imap, syn.to_model(imap, grey)).astype(inspector.spec.dtype)
    value = inspector.capture(x, [tensor])[tensor]
    if value.ndim < 2:
        raise InputError(f"layer tensor {tensor!r} has shape {value.shape}, without a channel "
                         "axis; pick a layer with shape (N, C) or (N, C, H, W)")
    if value.dtype.kind != "f":
        raise InputError(f"layer tensor {tensor!r} is {value.dtype}, not a float tensor; pick "
                         "its dequantized (float) tensor or another layer")
    return tuple(int(d) for d in value.shape[1:])


def _units(opts: MaximizeOptions, channels: int) -> tuple[int, ...]:
    """Channel of each optimized image row (unit-major; -1 for the layer objective)."""
    per = opts.images or (4 if opts.diversity else 1)
    if opts.objective == "layer":
        if opts.channels:
            raise InputError("the layer objective uses every channel; give no channels")
        return (-1,) * per
    chans = opts.channels if opts.channels else tuple(range(min(channels, DEFAULT_CHANNELS)))
    syn_optim.check_channels(chans, channels)
    return tuple(c for c in chans for _ in range(per))


def _unit_feeds(head: _Head, units: Sequence[int], shape: Sequence[int]) -> dict[str, F32]:
    """The head's per-row inputs: channel selection (times C) and the neuron's position."""
    if head.kind == "layer":
        return {}
    rows = len(units)
    select = np.zeros((rows, head.channels), np.float32)
    select[np.arange(rows), list(units)] = head.channels
    feeds: dict[str, F32] = {SELECT_IN: select}
    if head.kind == "neuron":
        spatial = int(np.prod(shape[1:], dtype=np.int64))
        position = np.zeros((rows, spatial, 1), np.float32)
        position[:, syn_optim.centre_index(shape[1:]), 0] = 1.0
        feeds[POSITION_IN] = position
    return feeds


# -- activation maximization ---------------------------------------------------------------------
def maximize(source: ModelOrInspector, options: MaximizeOptions,
             progress: ProgressFn | None = auto_progress, *,
             provider: str = "auto") -> MaximizeResult:
    """Find images that maximize channels, centre neurons or a whole layer of a model.

    Args:
        source: an open ``Inspector`` (its provider and preprocessing are used) or a model
            (path, bytes or proto; opened with ``provider``).
        options: see ``MaximizeOptions``.
        progress: called after every step with the mean objective in the status (default: a
            progress bar in notebooks and terminals; None: no progress).

    Returns:
        ``MaximizeResult`` with the images, their model inputs and the objective before, during
        and after the optimization.

    Raises:
        InputError: unknown objective or recipe, a channel out of range, a layer without
            channels, a neuron objective on an (N, C) layer, a non-image model input.
        LayerNotFoundError: no such layer. ModelError: an op on the path from the input to the
            layer has no gradient rule (the message names it).
    """
    opts = _check_maximize(options)
    inspector = (source if isinstance(source, inspection.Inspector)
                 else inspection.Inspector(source, provider))
    try:
        with progress_for(progress, "maximize") as report:
            return _maximize(inspector, opts, report)
    finally:
        if inspector is not source:
            inspector.close()


def _check_maximize(opts: MaximizeOptions) -> MaximizeOptions:
    if opts.objective not in OBJECTIVES:
        raise InputError(f"unknown objective {opts.objective!r}; choose one of "
                         f"{', '.join(OBJECTIVES)}")
    if opts.recipe not in RECIPES:
        raise InputError(f"unknown recipe {opts.recipe!r}; choose one of {', '.join(RECIPES)}")
    if opts.steps is not None and opts.steps < 1:
        raise InputError(f"steps must be at least 1, got {opts.steps}")
    if opts.lr is not None and not opts.lr > 0:
        raise InputError(f"the learning rate must be positive, got {opts.lr}")
    if opts.diversity < 0:
        raise InputError(f"diversity must be >= 0, got {opts.diversity}")
    if opts.images is not None and (opts.images < 1 or (opts.diversity and opts.images < 2)):
        raise InputError(f"images per unit must be >= 1 (>= 2 with diversity), got {opts.images}")
    return opts


def _maximize(inspector: inspection.Inspector, opts: MaximizeOptions,
              progress: ProgressFn | None) -> MaximizeResult:
    imap = syn.input_map(inspector.spec, inspector.preprocessing)
    size = _image_size(inspector, opts.size)
    limits.check_pixels(size[1], size[0], f"the image optimized for model input "
                        f"{inspector.spec.name!r}")
    limits.check_allocation((opts.images or 4, imap.image_channels, *size), 4,
                            "one channel's images to optimize")
    tensor = _layer_tensor(inspector, opts.layer)
    shape = _layer_shape(inspector, imap, tensor, size)
    units = _units(opts, shape[0])
    if opts.objective == "neuron" and len(shape) < 2:
        raise InputError(f"the neuron objective needs a layer with spatial dims (N, C, H, W); "
                         f"layer tensor {tensor!r} has shape (N, {shape[0]}): use the channel "
                         "objective or a conv layer")
    group = opts.images or (4 if opts.diversity else 1)
    head = _Head(opts.objective, shape[0], group, opts.diversity)
    feeds = _Feeds(inspector, imap, tensor, head, units)
    rng = np.random.default_rng(opts.seed)
    images_shape = (len(units), imap.image_channels, *size)
    with _GradientSession(inspector, tensor, head) as grads:
        loop = _fourier if opts.recipe == "fourier" else _pyramid
        image, view, history, start, first = loop(grads, images_shape, opts, rng, feeds,
                                                  progress)
        x = syn.quantize(imap, syn.to_model(imap, view))
        if imap.integer and image.shape == view.shape:
            image = syn.from_model(imap, x)  # the rounded image the model scores
        final, _ = grads.run_model(x, feeds(view.shape[2:]), unit=True)
    return MaximizeResult(tensor, opts.objective, opts.recipe, units, _hwc(image),
                          x.astype(inspector.spec.dtype), start, final, history, _hwc(first))


class _Feeds:
    """The head's per-row inputs for each view size (neuron positions depend on the size)."""

    def __init__(self, inspector: inspection.Inspector, imap: syn.InputMap, tensor: str,
                 head: _Head, units: Sequence[int]) -> None:
        self.inspector, self.imap, self.tensor, self.head, self.units = (
            inspector, imap, tensor, head, units)
        self.cache: dict[tuple[int, ...], dict[str, F32]] = {}

    def __call__(self, size: tuple[int, ...]) -> dict[str, F32]:
        key = tuple(size)
        if key not in self.cache:
            shape = ((self.head.channels,) if self.head.kind != "neuron" else
                     _layer_shape(self.inspector, self.imap, self.tensor, (key[0], key[1])))
            self.cache[key] = _unit_feeds(self.head, self.units, shape)
        return self.cache[key]


def _report(progress: ProgressFn | None, done: int, total: int,
            values: NDArray[np.float64]) -> None:
    if progress is not None:
        progress(Progress(done, total, "step", f"objective {float(np.mean(values)):.4g}"))


Loop = tuple[F32, F32, F32, NDArray[np.float64], F32]


class _FourierRun:
    """A Fourier-parameterized batch under optimization (one ``step`` = one session call).

    The host work of a step (parameterization, transform, preprocessing map, their adjoints and
    Adam) is per row, so it runs on row chunks in a thread pool (numpy releases the GIL) while
    the session call takes the whole batch; results do not depend on the chunking.
    """

    def __init__(self, grads: _GradientSession, shape: tuple[int, int, int, int],
                 opts: MaximizeOptions, rng: np.random.Generator) -> None:
        self.grads, self.rng, self.hw = grads, rng, shape[2:]
        self.param = syn.fourier_param(shape, basis="svd" if opts.decorrelate else "none",
                                       start=_neutral_colour(grads.imap))
        spectrum = syn.fourier_init(self.param, rng)
        # a chunk below ~half a million pixel values costs more in thread hand-offs than it saves
        size = int(np.prod(shape))
        workers = max(1, min(os.cpu_count() or 1, shape[0], 16, size // 500_000))
        self.chunks = [slice(int(a[0]), int(a[-1]) + 1)
                       for a in np.array_split(np.arange(shape[0]), workers)]
        self.spectra = [spectrum[c] for c in self.chunks]
        self.states = [syn_optim.adam_init(part) for part in self.spectra]
        self.lr, self.transforms = opts.lr or 0.05, opts.transforms
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _map(self, fn: Callable[[int], _T]) -> list[_T]:
        if self.pool is None:
            return [fn(i) for i in range(len(self.chunks))]
        return list(self.pool.map(fn, range(len(self.chunks))))

    def image(self) -> F32:
        """The current images ``(R, C, H, W)`` in (0, 1)."""
        return np.concatenate(self._map(lambda i: syn.fourier_image(self.param,
                                                                    self.spectra[i])))

    def step(self, feeds: dict[str, F32]) -> NDArray[np.float64]:
        """Take one Adam step on a randomly transformed view; return the objective per row."""
        sampler = syn.random_sampler(self.rng, self.hw, self.hw) if self.transforms else None
        imap = self.grads.imap

        def forward(i: int) -> tuple[F32, F32]:
            image = syn.fourier_image(self.param, self.spectra[i])
            view = syn.sample(sampler, image) if sampler is not None else image
            return image, syn.to_model(imap, view).astype(self.grads.dtype)

        parts = self._map(forward)
        values, grad = self.grads.run_model(np.concatenate([x for _, x in parts]), feeds,
                                            unit=True)

        def backward(i: int) -> None:
            g = syn.to_model_adjoint(imap, grad[self.chunks[i]])
            g = syn.sample_adjoint(sampler, g) if sampler is not None else g
            g = syn.fourier_vjp(self.param, parts[i][0], g)
            self.spectra[i], self.states[i] = syn_optim.adam_step(
                self.spectra[i], g, self.states[i], lr=self.lr)

        self._map(backward)
        return values


def _fourier(grads: _GradientSession, shape: tuple[int, int, int, int], opts: MaximizeOptions,
             rng: np.random.Generator, feeds: _Feeds, progress: ProgressFn | None) -> Loop:
    """Optimize a Fourier-parameterized batch; return (image, view, history, start, first)."""
    run = _FourierRun(grads, shape, opts, rng)
    try:
        steps, rows = opts.steps or 512, feeds(shape[2:])
        first = run.image()
        start, _ = grads.run(first, rows, unit=True)
        history = np.zeros((steps, shape[0]), np.float32)
        for step in range(steps):
            history[step] = values = run.step(rows)
            _report(progress, step + 1, steps, values)
        image = run.image()
    finally:
        run.close()
    return image, image, history, start, first


def _neutral_colour(imap: syn.InputMap) -> tuple[float, ...]:
    """The image colour the preprocessing maps to a zero model input (the data mean for
    mean-subtracted models, black for plain [0, 1] inputs)."""
    zero = np.zeros((1, len(imap.order), 1, 1), np.float32)
    layout = {"NCHW": zero, "NHWC": zero.transpose(0, 2, 3, 1), "NHW": zero[:, 0]}[imap.layout]
    return tuple(float(v) for v in syn.from_model(imap, layout)[0, :, 0, 0])


def _pyramid(grads: _GradientSession, shape: tuple[int, int, int, int], opts: MaximizeOptions,
             rng: np.random.Generator, feeds: _Feeds, progress: ProgressFn | None) -> Loop:
    """FilterVisualizer: pixels from noise, Adam per scale, bicubic upscaling (+ blur)."""
    target = shape[2:]
    fixed = grads.inspector.spec.height is not None
    longest = max(target)
    # the pyramid grows the long side; a fixed non-square input keeps its aspect at every scale
    sizes = [(max(1, round(side * target[0] / longest)), max(1, round(side * target[1] / longest)))
             for side in syn_optim.pyramid_sizes(opts.start_size, opts.scales, opts.factor,
                                           cap=longest)]
    per, lr = opts.steps or 20, opts.lr or 0.03
    image = first = syn.pixel_init((shape[0], shape[1], *sizes[0]), rng)
    history = np.zeros((per * len(sizes), shape[0]), np.float32)
    start = np.zeros(shape[0])
    for index, size in enumerate(sizes):
        if index:
            image = syn_optim.resize_bicubic(image, size)
            image = syn_optim.box_blur(image, opts.blur) if opts.blur else image
        out = target if fixed else size
        resize = syn_optim.linear_resize(size, out)
        rows, state = feeds(out), syn_optim.adam_init(image)
        if index == 0:
            start, _ = grads.run(resize.apply(image), rows, unit=True)
        for step in range(per):
            values, grad = grads.run(resize.apply(image), rows, unit=True)
            image, state = syn_optim.adam_step(image, resize.adjoint(grad), state, lr=lr)
            image = syn.project_pixels(image)
            history[index * per + step] = values
            _report(progress, index * per + step + 1, len(history), values)
    return image, resize.apply(image), history, start, first


# -- feature inversion -------------------------------------------------------------------------
def invert(source: ModelOrInspector, image: inspection.Images, options: InvertOptions,
           progress: ProgressFn | None = auto_progress, *,
           provider: str = "auto") -> InvertResult:
    """Reconstruct each input image from its features at one layer (Mahendran & Vedaldi).

    From noise near grey, Adam on the pixels minimizes ``||f(x) - f(x0)||^2 / ||f(x0)||^2 +
    tv * TV(x)`` with ``f`` the layer tensor and ``x0`` the input as the model sees it.

    Args:
        source: an open ``Inspector`` or a model (opened with ``provider``).
        image: image paths, PIL images or a model-ready array (every row is inverted).
        options: see ``InvertOptions``.
        progress: called after every step with the mean loss in the status (default: a
            progress bar in notebooks and terminals; None: no progress).

    Returns:
        ``InvertResult`` with reconstructions, originals, final loss and correlation.

    Raises:
        InputError: bad steps/tv/lr, a non-image input, a layer without channels, an input
            whose features are all zero. LayerNotFoundError: no such layer. ModelError: an op
            on the path has no gradient rule.
    """
    if options.steps < 1 or options.tv < 0 or not options.lr > 0:
        raise InputError(f"invert needs steps >= 1, tv >= 0 and lr > 0; got steps "
                         f"{options.steps}, tv {options.tv}, lr {options.lr}")
    inspector = (source if isinstance(source, inspection.Inspector)
                 else inspection.Inspector(source, provider))
    try:
        with progress_for(progress, "invert") as report:
            return _invert(inspector, image, options, report)
    finally:
        if inspector is not source:
            inspector.close()


def _invert(inspector: inspection.Inspector, image: inspection.Images, opts: InvertOptions,
            progress: ProgressFn | None) -> InvertResult:
    imap = syn.input_map(inspector.spec, inspector.preprocessing)
    loaded = inspector.load_batch(image)
    tensor = _layer_tensor(inspector, opts.layer)
    target = np.asarray(inspector.capture(loaded.array, [tensor])[tensor], np.float32)
    if target.ndim < 2:
        raise InputError(f"layer tensor {tensor!r} has shape {target.shape}, without a channel "
                         "axis; pick a layer with shape (N, C) or (N, C, H, W)")
    syn_optim.inversion_loss(target, target)  # raises for all-zero features
    originals = syn.from_model(imap, loaded.array)
    flat = target.reshape(len(target), target.shape[1], -1)
    feeds = {TARGET_IN: flat, WEIGHT_IN: (1.0 / np.mean(flat * flat, axis=(1, 2))).astype(
        np.float32)}
    rng = np.random.default_rng(opts.seed)
    with _GradientSession(inspector, tensor, _Head("invert", target.shape[1])) as grads:
        pixels, history = _invert_loop(grads, originals.shape, opts, rng, feeds, progress)
        x = syn.quantize(imap, syn.to_model(imap, pixels))
        if imap.integer:
            pixels = syn.from_model(imap, x)  # the rounded image the model scores
        loss, _ = grads.run_model(x, feeds)
    return InvertResult(tensor, loaded.sources, _hwc(pixels), _hwc(originals), loss,
                        syn_optim.image_correlation(pixels, originals), history)


def _invert_loop(grads: _GradientSession, shape: tuple[int, ...], opts: InvertOptions,
                 rng: np.random.Generator, feeds: dict[str, F32],
                 progress: ProgressFn | None) -> tuple[F32, F32]:
    """Adam descent on the pixels; return the image (N, C, H, W) and the loss history."""
    pixels = syn.pixel_init(shape, rng)
    state = syn_optim.adam_init(pixels)
    history = np.zeros((opts.steps, shape[0]), np.float32)
    for step in range(opts.steps):
        values, grad = grads.run(pixels, feeds)
        total = values + opts.tv * syn_optim.total_variation(pixels)
        grad = grad + np.float32(opts.tv) * syn_optim.total_variation_grad(pixels)
        pixels, state = syn_optim.adam_step(pixels, grad, state, lr=opts.lr, ascend=False)
        pixels = syn.project_pixels(pixels)
        history[step] = total
        if progress is not None:
            progress(Progress(step + 1, opts.steps, "step", f"loss {float(np.mean(total)):.4g}"))
    return pixels, history


def _hwc(images: F32) -> F32:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))

