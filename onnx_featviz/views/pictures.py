"""Filters and feature maps as pictures: the ``filters`` and ``maps`` views of a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.graph.catalog as catalog
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.graph.weights as weights
import onnx_featviz.render.pictures as render
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.inspector import Images, Inspector, ModelSource, load_model
from onnx_featviz.io.outputs import Picture, Rendered, file_stem, input_folders
from onnx_featviz.render import compose


@dataclass(frozen=True, slots=True)
class FilterRenderOptions:
    """How ``render_model_filters`` draws filters."""

    annotate: bool = False
    cmap: str = "RdBu_r"


@dataclass(frozen=True, slots=True)
class MapRenderOptions:
    """How ``render_feature_maps`` draws feature maps.

    ``stage``: ``"conv"``, ``"act"`` or ``"both"`` (both adds a side-by-side picture);
    ``reduce``: ``"none"``, ``"mean"`` or ``"max"`` over channels; ``channels``: a slice of
    channels to draw; ``cmap``: None picks viridis for activations and a diverging map centred on
    zero for pre-activation conv outputs; ``every_layer``: every node output (Keras-style);
    ``normalize``: ``"channel"`` or ``"layer"``.
    """

    stage: str = "act"
    reduce: str = "none"
    channels: slice | None = None
    cmap: str | None = None
    every_layer: bool = False
    normalize: str = "channel"


def render_model_filters(model: ModelSource, layers: Sequence[str | int] | None,
                         options: FilterRenderOptions | None = None) -> Rendered:
    """Draw the filters of ``layers`` (default: every conv layer) with a diverging colormap.

    Returns:
        One picture per layer (``filters_<layer>.png``); arrays keyed by layer name hold the
        float32 ``(O, I/groups, kH, kW)`` weights, dequantized.
    """
    opts = options or FilterRenderOptions()
    proto = load_model(model)
    info = catalog.read_catalog(proto)
    chosen = info.conv_layers if layers is None else tuple(info.layer(n) for n in layers)
    if not chosen:
        raise ModelError("the model has no conv layers, so it has no filters to draw")
    pictures, arrays = [], {}
    for layer in chosen:
        found = weights.read_filters(proto, layer)
        title = f"{layer.name}  weight {'x'.join(map(str, found.weight.shape))}"
        image = compose.render_filters(found.weight, render.FilterOptions(
            annotate=opts.annotate, cmap=opts.cmap, title=title))
        pictures.append(Picture(f"filters_{file_stem(layer.name)}.png", image, layer.name))
        arrays[layer.name] = found.weight
    return Rendered(tuple(pictures), arrays)


def render_feature_maps(inspector: Inspector, images: Images,
                        layers: Sequence[str | int] | None,
                        options: MapRenderOptions | None = None) -> Rendered:
    """Draw the feature maps of ``layers`` for every input: one grid of channels per tensor.

    Returns:
        Pictures named ``<input>/<tensor>.png`` (and ``<input>/<layer>_before_after.png`` for
        stage ``both``; ``io.outputs.file_stem`` makes any name safe); arrays keyed by tensor
        name exactly as the model computed them, with each tensor's layout (an ``NHWC``
        tensor is drawn one tile per channel).
    """
    opts = options or MapRenderOptions()
    batch = inspector.load_batch(images)
    tensors = _map_tensors(inspector, layers, opts)
    arrays = inspector.capture(batch.array, tensors)
    pictures: list[Picture] = []
    for index, folder in enumerate(input_folders(batch.sources)):
        grids = {t: _map_picture(inspector, t, arrays[t][index], opts) for t in tensors
                 if arrays[t].ndim >= 2}
        pictures += [Picture(f"{folder}/{file_stem(t)}.png", g, t) for t, g in grids.items()]
        pictures += _before_after(inspector, grids, folder) if opts.stage == "both" else []
    return Rendered(tuple(pictures), arrays, {t: inspector.info.layout(t) for t in tensors})


def _map_tensors(inspector: Inspector, layers: Sequence[str | int] | None,
                 opts: MapRenderOptions) -> list[str]:
    if opts.every_layer and layers is None:
        return rewrite.all_tensors(inspector.info)
    return inspector.layer_tensors(layers, opts.stage)


def _map_picture(inspector: Inspector, tensor: str, value: NDArray[np.generic],
                 opts: MapRenderOptions) -> Image.Image:
    maps = np.asarray(value, np.float32)
    if inspector.info.layout(tensor) == "NHWC":  # draw one tile per channel, not per row
        maps = np.moveaxis(maps, -1, 0)
    maps = maps.reshape((1, 1, -1)) if maps.ndim == 1 else maps.reshape((-1, *maps.shape[-2:]))
    layer = inspector.layer(tensor)
    pre_activation = layer.is_conv and tensor == layer.output and layer.activation is not None
    title = f"{layer.name} [{tensor}]" if layer.name != tensor else tensor
    if opts.reduce != "none":
        count = len(maps)
        maps = render.reduce_maps(maps, opts.reduce)
        return render.tile_grid(maps, render.GridOptions(
            cmap=opts.cmap or ("RdBu_r" if pre_activation else "viridis"),
            symmetric=pre_activation, labels=False, colorbar=True, mode="layer", min_tile=224,
            title=f"{title} {opts.reduce} of {count} channels", shape=tuple(value.shape)))
    start = _check_channels(opts.channels, len(maps), tensor)
    chosen = maps[opts.channels] if opts.channels else maps
    return render.tile_grid(chosen, render.GridOptions(
        cmap=opts.cmap or ("RdBu_r" if pre_activation else "viridis"), symmetric=pre_activation,
        mode=opts.normalize, label_start=start, colorbar=True, title=title,
        shape=tuple(value.shape)))


def _check_channels(channels: slice | None, count: int, tensor: str) -> int:
    if channels is None:
        return 0
    start = channels.start or 0
    stop = count if channels.stop is None else channels.stop
    if start >= count or stop > count or stop <= start:
        raise InputError(f"channel range {start}:{stop} does not fit tensor {tensor!r}, which "
                         f"has {count} channels (0..{count - 1}); choose a range inside it")
    return start


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
                                 layer.name))
    return pairs

