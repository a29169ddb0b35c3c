"""``featviz maximize`` and ``featviz invert``: feature visualization by optimization."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnx_featviz.cli import choices
from onnx_featviz.cli.guards import notice_nonfinite, refuse_overwrite, reports_errors
from onnx_featviz.cli.options import (
    CONTEXT,
    SEED,
    FiniteRange,
    channel_option,
    check_limit,
    emit_written,
    json_file_option,
    out_dir_option,
    prep_options,
    progress_bar,
    provider_option,
)

if TYPE_CHECKING:  # annotations only: the library loads inside each command
    from onnx_featviz import api



def _check_counts(pictures: int, tile: int | None) -> None:
    """Refuse, before any step, more images than FEATVIZ_MAX_IMAGES or a grid of ``tile``-px
    tiles over FEATVIZ_MAX_PIXELS."""
    from onnx_featviz.io import limits
    check_limit(lambda: limits.check_images(pictures, "images to optimize (--images times "
                                                      "channels)"))
    if tile is not None:
        check_limit(lambda: limits.check_pixels(tile * math.ceil(math.sqrt(pictures)), tile
                                                * math.ceil(math.sqrt(pictures)),
                                                f"a grid of {pictures} tiles of --tile {tile}"))


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--layer", "--layers", "layers", required=True, multiple=True,
              help="Layer name, tensor name or index; repeat to run each layer in turn.")
@channel_option("Channels to visualize: an index, a range or a comma list (5, 0:8, 20,22); "
                "repeat for several. Default: the first 16.")
@click.option("--objective", type=click.Choice(list(choices.OBJECTIVES)), default="channel",
              show_default=True, help="Maximize a channel's mean, its centre neuron, or the "
              "layer's mean square.")
@click.option("--recipe", type=click.Choice(list(choices.RECIPES)), default="fourier",
              show_default=True, help="fourier: 1/f spectrum + decorrelated colour + random "
              "transforms; pyramid: pixels grown from 56 px by 1.2 for 12 scales.")
@click.option("--steps", type=click.IntRange(min=1),
              help="fourier: total steps (default 512); pyramid: steps per scale (default 20).")
@click.option("--lr", type=FiniteRange(min=0, min_open=True),
              help="Adam learning rate (default 0.05 fourier, 0.03 pyramid).")
@click.option("--diversity", type=FiniteRange(min=0), default=0.0, show_default=True,
              help="Weight of the diversity term over several images per channel.")
@click.option("--images", type=click.IntRange(min=1),
              help="Images per channel (default 1, or 4 with --diversity).")
@click.option("--blur", type=click.IntRange(min=2), help="pyramid: box blur between scales.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option("--tile", type=click.IntRange(min=16), help="Grid tile side in pixels.")
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save images, model inputs and objectives to this .npz file.")
@click.option("--json", "as_json", is_flag=True, help="Print paths and objectives as JSON.")
@json_file_option
@out_dir_option
@provider_option
@prep_options
@reports_errors
def maximize(model: Path, layers: tuple[str, ...], channels: tuple[slice, ...] | None,
             objective: str, recipe: str,
             steps: int | None, lr: float | None, diversity: float, images: int | None,
             blur: int | None, seed: int, tile: int | None, save_npz: Path | None,
             as_json: bool, out: Path, provider: str, prep: api.PrepOptions) -> None:
    """Find images that maximize channels of a layer of MODEL (activation maximization).

    \b
    Examples:
      featviz maximize models/mnist_cnn.onnx --layer conv2 --steps 256
      featviz maximize squeezenet.onnx --preset caffe --layer fire4/concat_1 --channel 3
      featviz maximize model.onnx --layer conv1 --layer conv2 --channel 0:8
      featviz maximize model.onnx --layer conv3 --recipe pyramid --blur 5 --json
    """
    from onnx_featviz import api
    from onnx_featviz.synthesis import pictures as synthesis_pictures
    from onnx_featviz.synthesis import run as synthesis
    refuse_overwrite([model], [out, save_npz])
    units = _channel_indices(channels)
    _check_counts((images or (4 if diversity else 1)) * (len(units) or 16) * len(layers), tile)
    options = [synthesis.MaximizeOptions(
        layer, channels=units or None, objective=objective, recipe=recipe,
        steps=steps, seed=seed, lr=lr, diversity=diversity, images=images, blur=blur)
        for layer in layers]
    synthesis.check_outputs(out, save_npz)
    results = []
    with api.Inspector(model, provider, prep=prep) as inspector:
        synthesis.layer_tensors(inspector, layers)  # an unknown last layer fails first
        for opts in options:
            with progress_bar(f"maximize {opts.layer}", enabled=not as_json) as bar:
                results.append(synthesis.maximize(inspector, opts, bar))
    for result in results:
        notice_nonfinite(result.final, f"final objectives of {result.tensor}")
    rendered = [synthesis_pictures.render_maximized(r, tile=tile) for r in results]
    written = api.save_pictures([p for r in rendered for p in r.pictures], out,
                                arrays=_maximize_arrays(results, rendered), npz=save_npz)
    emit_written(written, as_json, _maximize_json(results, objective, recipe))


def _channel_indices(channels: tuple[slice, ...] | None) -> tuple[int, ...]:
    """The channel indices of ``--channel`` items (a range needs its end here)."""
    indices: list[int] = []
    for item in channels or ():
        if item.stop is None:
            raise click.BadParameter(f"channel range {item.start}: has no end; give one, e.g. "
                                     f"{item.start}:{item.start + 8}", param_hint="--channel")
        indices += range(item.start or 0, item.stop)
    return tuple(dict.fromkeys(indices))


def _maximize_arrays(results: list[Any], rendered: list[Any]) -> dict[str, Any]:
    """The arrays to save: as ``render_maximized`` names them for one layer, prefixed with
    ``<tensor>/`` for several."""
    if len(rendered) == 1:
        return dict(rendered[0].arrays)
    return {f"{r.tensor}/{key}": value for r, drawn in zip(results, rendered, strict=True)
            for key, value in drawn.arrays.items()}


def _maximize_json(results: list[Any], objective: str, recipe: str) -> dict[str, Any]:
    """One entry per layer under ``layers``; with one layer its fields also at the top."""
    entries = [{"tensor": r.tensor, "units": list(r.units), "start": r.start.tolist(),
                "final": r.final.tolist()} for r in results]
    record: dict[str, Any] = {"objective": objective, "recipe": recipe, "layers": entries}
    return {**entries[0], **record} if len(entries) == 1 else record


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", "--layers", "layers", required=True, multiple=True,
              help="Layer to invert at (repeat to compare depths).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="Adam steps.")
@click.option("--tv", type=FiniteRange(min=0), default=0.05, show_default=True,
              help="Total-variation weight.")
@click.option("--lr", type=FiniteRange(min=0, min_open=True), default=0.02,
              show_default=True, help="Adam learning rate per [0, 1] pixel.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option("--tile", type=click.IntRange(min=16), help="Tile side in pixels.")
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save the reconstructions and losses to this .npz file.")
@click.option("--json", "as_json", is_flag=True, help="Print paths and scores as JSON.")
@json_file_option
@out_dir_option
@provider_option
@prep_options
@reports_errors
def invert(model: Path, image: Path, layers: tuple[str, ...], steps: int, tv: float, lr: float,
           seed: int, tile: int | None, save_npz: Path | None, as_json: bool, out: Path,
           provider: str, prep: api.PrepOptions) -> None:
    """Reconstruct IMAGE from its features at each --layer of MODEL (feature inversion).

    \b
    Examples:
      featviz invert models/mnist_cnn.onnx models/samples/digit_7.png --layer conv1 --layer conv2
      featviz invert squeezenet.onnx cat.png --preset caffe --layer conv1_2 --tv 0.1
    """
    from onnx_featviz import api
    from onnx_featviz.synthesis import pictures as synthesis_pictures
    from onnx_featviz.synthesis import run as synthesis
    refuse_overwrite([model, image], [out, save_npz])
    _check_counts(len(layers) + 1, tile)
    synthesis.check_outputs(out, save_npz, picture="invert.png")
    results = []
    with api.Inspector(model, provider, prep=prep) as inspector:
        synthesis.layer_tensors(inspector, layers)  # an unknown last layer fails first
        for layer in layers:
            opts = synthesis.InvertOptions(layer, steps=steps, tv=tv, lr=lr, seed=seed)
            with progress_bar(f"invert {layer}", enabled=not as_json) as bar:
                results.append(synthesis.invert(inspector, image, opts, bar))
    notice_nonfinite([r.loss for r in results], "final losses")
    rendered = synthesis_pictures.render_inversions(results, tile=tile)
    written = api.save_pictures(rendered.pictures, out, arrays=rendered.arrays, npz=save_npz)
    emit_written(written, as_json, {"layers": [
        {"tensor": r.tensor, "loss": r.loss.tolist(), "correlation": r.correlation.tolist()}
        for r in results]})

