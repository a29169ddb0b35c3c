"""Filters and feature maps as pictures: the ``filters`` and ``maps`` views of a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.graph.catalog as catalog
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.graph.weights as weights
import onnx_featviz.render.pictures as render
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.inspector import Images, Inspector, ModelSource, PrepOptions, load_model
from onnx_featviz.io import preprocess
from onnx_featviz.io.outputs import Picture, Rendered, file_stem, input_folders
from onnx_featviz.render import compose, figures
from onnx_featviz.render.progress import progress_for
from onnx_featviz.structs import Progress, ProgressFn, auto_progress


@dataclass(frozen=True, slots=True)
class FilterRenderOptions:
    """How ``render_model_filters`` draws filters.

    ``max_filters``: the most output channels drawn per layer (a larger layer says so in its
    title); ``channel_order``: order of a first layer's 3 inputs (None: the model's
    preprocessing, from ``prep``, its metadata or the default preset).
    """

    annotate: bool = False
    cmap: str = "RdBu_r"
    max_filters: int = 64
    channel_order: str | None = None
    prep: PrepOptions | None = None


@dataclass(frozen=True, slots=True)
class MapRenderOptions:
    """How ``render_feature_maps`` draws feature maps.

    ``stage``: ``"conv"``, ``"act"`` or ``"both"`` (both adds a side-by-side picture);
    ``reduce``: ``"none"``, ``"mean"`` or ``"max"`` over channels; ``channels``: the channels
    to draw, a slice or a tuple of indices and slices (drawn in that order, repeats dropped);
    ``cmap``: None picks viridis for activations and a diverging map centred on zero for
    pre-activation conv outputs; ``every_layer``: every node output (Keras-style);
    ``normalize``: ``"channel"`` or ``"layer"``; ``top``: draw only the ``top`` channels with
    the largest mean activation, largest first; ``bars``: how many values a bar chart of a 1-D
    tensor (flatten, fc, logits) shows, largest first, labelled with class names when the
    tensor has one value per label (tensors of at most ``bars`` values are drawn whole).
    """

    stage: str = "act"
    reduce: str = "none"
    channels: slice | tuple[int | slice, ...] | None = None
    cmap: str | None = None
    every_layer: bool = False
    normalize: str = "channel"
    top: int | None = None
    bars: int = 20


def render_model_filters(model: ModelSource, layers: Sequence[str | int] | None,
                         options: FilterRenderOptions | None = None) -> Rendered:
    """Draw the filters of ``layers`` (default: every conv layer) with a diverging colormap.

    Returns:
        One picture per layer (``filters_<layer>.png``, ``filters_<layer>_max<N>.png`` when
        ``max_filters`` is not the default); arrays keyed by layer name hold the float32
        ``(O, I/groups, kH, kW)`` weights, dequantized.

    Raises:
        InputError: ``max_filters`` < 1; ModelError: no conv layers.
    """
    opts = options or FilterRenderOptions()
    if opts.max_filters < 1:
        raise InputError(f"max_filters must be >= 1, got {opts.max_filters}")
    proto = load_model(model)
    info = catalog.read_catalog(proto)
    chosen = info.conv_layers if layers is None else tuple(info.layer(n) for n in layers)
    if not chosen:
        raise ModelError("the model has no conv layers, so it has no filters to draw")
    order = opts.channel_order
    suffix = f"_max{opts.max_filters}" if opts.max_filters != 64 else ""
    pictures, arrays = [], {}
    for layer in chosen:
        found = weights.read_filters(proto, layer)
        if order is None and found.weight.shape[1] == 3:
            order = _channel_order(proto, opts.prep)
        title = f"{layer.name}  weight {'x'.join(map(str, found.weight.shape))}"
        how = render.FilterOptions(
            annotate=opts.annotate, cmap=opts.cmap, title=title, max_filters=opts.max_filters,
            channel_order=order if order in ("RGB", "BGR") else "RGB")
        image = compose.render_filters(found.weight, how)
        drawn = compose.filter_title(found.weight.shape, how) or title
        note = drawn[len(title):].strip() or "all drawn"
        pictures.append(Picture(f"filters_{file_stem(layer.name)}{suffix}.png", image, drawn,
                                f"filters of {layer.name}: {note}", source=layer.name))
        arrays[layer.name] = found.weight
    return Rendered(tuple(pictures), arrays)


def _channel_order(model: onnx.ModelProto, prep: PrepOptions | None) -> str:
    """The model's input channel order (RGB, BGR, GRAY) from options, metadata or preset."""
    spec = preprocess.infer_input_spec(model)
    opts = prep or PrepOptions()
    recipe = preprocess.resolve_preprocessing(
        spec, preset=opts.preset, base=preprocess.read_preprocessing(model), mean=opts.mean,
        std=opts.std, scale=opts.scale, channel_order=opts.channel_order, size=opts.size,
        resize=opts.resize)
    return recipe.channel_order


def render_feature_maps(inspector: Inspector, images: Images,
                        layers: Sequence[str | int] | None,
                        options: MapRenderOptions | None = None, *,
                        progress: ProgressFn | None = auto_progress) -> Rendered:
    """Draw the feature maps of ``layers`` for every input: one grid of channels per tensor.

    1-D tensors (flatten, fc, logits; also ``(C, 1, 1)``) are drawn as labelled bar charts.
    ``progress`` hears after each input is drawn (unit ``input``; default: a progress bar in
    notebooks and terminals; None: no progress).

    Returns:
        Pictures named ``<input>/<tensor><options>.png``, where ``<options>`` names what changes
        the picture: ``_ch<items>`` (items joined by ``+``: ``5`` for one channel, ``a-b`` for
        channels ``a..b-1``, ``a-end``; e.g. ``_ch5+0-16+20+22``), ``_top<K>``,
        ``_<reduce>``, ``_layer-scaled``; and ``<input>/<layer>_before_after.png`` for stage
        ``both``; ``io.outputs.file_stem`` makes any name safe. Arrays keyed by tensor name
        exactly as the model computed them, with each tensor's layout (an ``NHWC`` tensor is
        drawn one tile per channel).

    Raises:
        InputError: a channel range outside a tensor, ``top`` or ``bars`` < 1.
    """
    opts = options or MapRenderOptions()
    if opts.top is not None and opts.top < 1 or opts.bars < 1:
        raise InputError(f"top and bars must be >= 1, got top={opts.top}, bars={opts.bars}")
    batch = inspector.load_batch(images)
    tensors = _map_tensors(inspector, layers, opts)
    arrays = inspector.capture(batch.array, tensors)
    pictures: list[Picture] = []
    folders = input_folders(batch.sources)
    with progress_for(progress, "maps") as report:
        for index, folder in enumerate(folders):
            pictures += _input_pictures(inspector, tensors, arrays, index, folder, opts)
            if report is not None:
                report(Progress(index + 1, len(folders), "input"))
    return Rendered(tuple(pictures), arrays, {t: inspector.info.layout(t) for t in tensors})


def _input_pictures(inspector: Inspector, tensors: Sequence[str],
                    arrays: Mapping[str, NDArray[np.generic]], index: int, folder: str,
                    opts: MapRenderOptions) -> list[Picture]:
    """The pictures of one input: a grid (or bar chart) per tensor, before/after pairs."""
    grids = {t: _map_picture(inspector, t, arrays[t][index], opts) for t in tensors
             if arrays[t].ndim >= 2}
    pictures = [Picture(f"{folder}/{file_stem(t)}{_map_suffix(opts, g.bars)}.png", g.image,
                        g.title, f"{g.shows} of {t} for input {index} ({folder})", source=t)
                for t, g in grids.items()]
    if opts.stage == "both":
        pictures += _before_after(inspector, {t: g.image for t, g in grids.items()}, folder)
    return pictures


def _map_suffix(opts: MapRenderOptions, bars: bool) -> str:
    """The part of a map picture's file name that says which options drew it."""
    if bars:  # a 1-D tensor: channel options do not apply
        return ""
    parts = []
    if opts.reduce != "none":
        parts.append(opts.reduce)
    elif opts.channels is not None:
        parts.append("ch" + "+".join(_channel_text(c, "-", "end") for c in _items(opts)))
    if opts.top is not None and opts.reduce == "none":
        parts.append(f"top{opts.top}")
    if opts.normalize != "channel" and opts.reduce == "none":
        parts.append("layer-scaled")
    return "".join(f"_{p}" for p in parts)


def _map_tensors(inspector: Inspector, layers: Sequence[str | int] | None,
                 opts: MapRenderOptions) -> list[str]:
    if opts.every_layer and layers is None:
        return rewrite.all_tensors(inspector.info)
    return inspector.layer_tensors(layers, opts.stage)


@dataclass(frozen=True, slots=True)
class _MapPicture:
    image: Image.Image
    title: str
    shows: str
    bars: bool = False


def _map_picture(inspector: Inspector, tensor: str, value: NDArray[np.generic],
                 opts: MapRenderOptions) -> _MapPicture:
    maps = np.asarray(value, np.float32)
    if inspector.info.layout(tensor) == "NHWC" and maps.ndim >= 2:  # one tile per channel
        maps = np.moveaxis(maps, -1, 0)
    layer = inspector.layer(tensor)
    title = f"{layer.name} [{tensor}]" if layer.name != tensor else tensor
    if maps.ndim == 1 or maps.size == len(maps):  # (C,), (C, 1, 1): one value per channel
        return _bars(inspector, maps.reshape(-1), title, opts)
    maps = maps.reshape((-1, *maps.shape[-2:]))
    pre_activation = layer.is_conv and tensor == layer.output and layer.activation is not None
    cmap = opts.cmap or ("RdBu_r" if pre_activation else "viridis")
    if opts.reduce != "none":
        title = f"{title} {opts.reduce} of {len(maps)} channels"
        image = render.tile_grid(render.reduce_maps(maps, opts.reduce), render.GridOptions(
            cmap=cmap, symmetric=pre_activation, labels=False, colorbar=True, mode="layer",
            min_tile=224, title=title, shape=tuple(value.shape)))
        return _MapPicture(image, title, f"{opts.reduce} over channels")
    chosen = _chosen_channels(opts, len(maps), tensor)
    if opts.top is not None:
        means = maps[chosen].reshape(len(chosen), -1).mean(axis=1)
        chosen = chosen[np.argsort(-means, kind="stable")[: opts.top]]
        title = f"{title}  top {len(chosen)} of {len(maps)} channels by mean"
    elif len(chosen) < len(maps):
        shown = ", ".join(_channel_text(c, "..", str(len(maps) - 1), 1) for c in _items(opts))
        title = f"{title}  channels {shown} of {len(maps)}"
    image = render.tile_grid(maps[chosen], render.GridOptions(
        cmap=cmap, symmetric=pre_activation, mode=opts.normalize,
        label_texts=tuple(str(c) for c in chosen), colorbar=True, title=title,
        shape=tuple(value.shape)))
    return _MapPicture(image, title, f"{len(chosen)} channels")


def _bars(inspector: Inspector, values: NDArray[np.float32], title: str,
          opts: MapRenderOptions) -> _MapPicture:
    """A 1-D tensor as bars; one value per label gets the labels (class scores)."""
    labels = inspector.labels
    names = (tuple(name if name == str(i) else f"{i} {name}" for i, name in enumerate(labels))
             if labels and len(labels) == len(values) else None)
    # class scores: the best classes first; other vectors: in index order when they fit
    top = min(opts.bars, len(values)) if names or len(values) > opts.bars else None
    image = figures.bar_chart(values, names=names, top_k=top, title=title)
    return _MapPicture(image, title, f"bar chart of {min(len(values), opts.bars)} of "
                       f"{len(values)} values", bars=True)


def _items(opts: MapRenderOptions) -> tuple[slice, ...]:
    """``opts.channels`` as a tuple of slices (an index ``k`` is ``k:k+1``)."""
    given = opts.channels
    items = (given,) if isinstance(given, slice) else tuple(given or ())
    return tuple(c if isinstance(c, slice) else slice(int(c), int(c) + 1) for c in items)


def _channel_text(item: slice, dash: str, end: str, last: int = 0) -> str:
    """``5`` for one channel, else ``a<dash>b`` (b exclusive, or inclusive with last=1)."""
    start = item.start or 0
    if item.stop == start + 1:
        return str(start)
    return f"{start}{dash}{end if item.stop is None else item.stop - last}"


def _chosen_channels(opts: MapRenderOptions, count: int, tensor: str) -> NDArray[np.int64]:
    """The channel indices ``opts.channels`` names, in order, without repeats.

    Raises:
        InputError: an index or range outside the tensor's ``count`` channels.
    """
    if opts.channels is None:
        return np.arange(count, dtype=np.int64)
    chosen: list[int] = []
    for item in _items(opts):
        start = item.start or 0
        stop = count if item.stop is None else item.stop
        if start < 0 or start >= count or stop > count or stop <= start:
            raise InputError(f"channel {_channel_text(item, ':', '')} does not fit tensor "
                             f"{tensor!r}, which has {count} channels (0..{count - 1}); "
                             "choose channels inside it")
        chosen += range(start, stop)
    return np.asarray(list(dict.fromkeys(chosen)), np.int64)


def _before_after(inspector: Inspector, grids: Mapping[str, Image.Image],
                  folder: str) -> list[Picture]:
    pairs = []
    for layer in inspector.info.conv_layers:
        act = layer.activation
        if act and act != layer.output and layer.output in grids and act in grids:
            image = compose.render_side_by_side(
                [grids[layer.output], grids[act]],
                [f"before {layer.activation_op or 'activation'}: {layer.output}",
                 f"after: {act}"])
            pairs.append(Picture(f"{folder}/{file_stem(layer.name)}_before_after.png", image,
                                 layer.name, source=layer.name))
    return pairs

