"""``featviz maximize`` and ``featviz invert``: feature visualization by optimization."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnx_featviz.cli import choices
from onnx_featviz.cli.options import (
    CONTEXT,
    SEED,
    FiniteRange,
    check_limit,
    emit_written,
    json_file_option,
    notice_nonfinite,
    out_dir_option,
    prep_options,
    progress_bar,
    provider_option,
    refuse_overwrite,
    reports_errors,
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
@click.option("--layer", required=True, help="Layer name, tensor name or index.")
@click.option("--channel", "channels", type=click.IntRange(min=0), multiple=True,
              help="Channel to visualize (repeat for several); default: the first 16.")
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
def maximize(model: Path, layer: str, channels: tuple[int, ...], objective: str, recipe: str,
             steps: int | None, lr: float | None, diversity: float, images: int | None,
             blur: int | None, seed: int, tile: int | None, save_npz: Path | None,
             as_json: bool, out: Path, provider: str, prep: api.PrepOptions) -> None:
    """Find images that maximize channels of a layer of MODEL (activation maximization).

    \b
    Examples:
      featviz maximize models/mnist_cnn.onnx --layer conv2 --steps 256
      featviz maximize squeezenet.onnx --preset caffe --layer fire4/concat_1 --channel 3
      featviz maximize model.onnx --layer conv3 --recipe pyramid --blur 5 --json
    """
    from onnx_featviz import api
    from onnx_featviz.synthesis import pictures as synthesis_pictures
    from onnx_featviz.synthesis import run as synthesis
    refuse_overwrite([model], [out, save_npz])
    _check_counts((images or (4 if diversity else 1)) * (len(channels) or 16), tile)
    options = synthesis.MaximizeOptions(
        layer, channels=channels or None, objective=objective, recipe=recipe,
        steps=steps, seed=seed, lr=lr, diversity=diversity, images=images, blur=blur)
    synthesis.check_outputs(out, save_npz)
    with api.Inspector(model, provider, prep=prep) as inspector, \
            progress_bar("maximize", enabled=not as_json) as bar:
        result = synthesis.maximize(inspector, options, bar)
    notice_nonfinite(result.final, "final objectives")
    rendered = synthesis_pictures.render_maximized(result, tile=tile)
    written = api.save_pictures(rendered.pictures, out, arrays=rendered.arrays, npz=save_npz)
    emit_written(written, as_json, {
        "tensor": result.tensor, "objective": objective, "recipe": recipe,
        "units": list(result.units), "start": result.start.tolist(),
        "final": result.final.tolist()})


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

