"""``featviz report``: one self-contained HTML page that shows a model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnx_featviz.cli import choices
from onnx_featviz.cli.guards import reports_errors
from onnx_featviz.cli.options import (
    CONTEXT,
    emit_written,
    prep_options,
    progress_bar,
    provider_option,
)

if TYPE_CHECKING:  # annotations only: the library loads inside each command
    from onnx_featviz import api


def _split(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), metavar="DATA",
              help="Dataset for channel statistics and --compare: an image, a folder, "
                   ".npy/.npz or an MNIST IDX file (default for --compare: IMAGES when one "
                   "path is given).")
@click.option("--compare", "compare_model", type=click.Path(path_type=Path), metavar="MODEL_B",
              help="A second form of MODEL (fp16, int8...): add the per-layer drift.")
@click.option("--methods", default="grad_cam,grad_cam_pp", show_default=True,
              callback=_split, metavar="LIST", help="CAM methods drawn side by side "
                                                   "(comma-separated; empty: no CAMs).")
@click.option("--backprop", default="saliency,guided", show_default=True, callback=_split,
              metavar="LIST", help="Backprop views, comma-separated from "
                                   f"{', '.join(choices.BACKPROP_METHODS)} (empty: none).")
@click.option("--layer", "--layers", "layers", multiple=True,
              help="Layer of the feature-map picker (name, "
              "tensor or index); repeat for several. Default: every conv layer.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Class names, one per line (default: the model's metadata).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes listed per prediction.")
@click.option("--top-channels", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most active channels drawn per feature map.")
@click.option("--image-format", type=click.Choice(["webp", "png"]), default="webp",
              show_default=True, help="Encoding of the inline pictures.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@provider_option
@prep_options
@reports_errors
def report(model: Path, images: tuple[Path, ...], data: Path | None,
           compare_model: Path | None, methods: tuple[str, ...], backprop: tuple[str, ...],
           layers: tuple[str, ...], labels: Path | None, top_k: int, top_channels: int,
           image_format: str, out: Path, provider: str, prep: api.PrepOptions) -> None:
    """Write one self-contained HTML page about MODEL run on IMAGES (files or folders).

    The page holds the model card and layer table, predictions, filters, feature maps, CAMs
    and backprop views; with --data the channel statistics and findings; with --compare the
    drift of MODEL_B layer by layer. Pictures, CSS and JS are inline: it opens from disk in any
    browser, with no network.

    \b
    Examples:
      featviz report models/mnist_cnn.onnx models/samples/ --data models/samples/
      featviz report squeezenet.onnx photos/ --preset caffe --labels imagenet_classes.txt
      featviz report model.onnx photos/ --compare model_int8.onnx --out drift.html
    """
    from onnx_featviz import api
    if compare_model is not None and data is None and len(images) == 1:
        data = images[0]
    options = api.ReportOptions(
        data=data, compare=compare_model, methods=methods, backprop=backprop, layers=layers,
        labels=api.read_labels(labels) if labels else None, prep=prep, provider=provider,
        top_k=top_k, top_channels=top_channels, image_format=image_format)
    with progress_bar("report") as bar:
        html = api.build_report(model, api.expand_images(images), options, progress=bar)
    emit_written([api.save_report(html, out)], False)
