"""The ``featviz`` command line: parse options, call one api function, save, print paths."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnx_featviz import __version__
from onnx_featviz.cli import choices
from onnx_featviz.cli.guards import (
    GuardedGroup,
    HeldNotices,
    notice_nonfinite,
    readable_images,
    refuse_overwrite,
    reports_errors,
    save_or_mark_partial,
)
from onnx_featviz.cli.options import (
    CONTEXT,
    FiniteRange,
    channel_option,
    emit_json,
    emit_written,
    json_file_option,
    out_dir_option,
    parse_fill,
    parse_size,
    prep_options,
    progress_bar,
    provider_option,
    target_options,
)

if TYPE_CHECKING:  # annotations only: the library loads inside each command
    from onnx_featviz import api


# -- commands -------------------------------------------------------------------------------
@click.group(cls=GuardedGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="featviz")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error "
              "(also FEATVIZ_DEBUG=1).")
def main(verbose: bool, debug: bool) -> None:
    """See inside any CNN exported to ONNX: layers, filters, feature maps.

    \b
    Quick start:
      featviz info models/mnist_cnn.onnx
      featviz predict models/mnist_cnn.onnx models/samples/digit_9.png
      featviz filters models/mnist_cnn.onnx --out out/
      featviz maps models/mnist_cnn.onnx models/samples/digit_9.png --out out/

    
    Limits (checked before any work; raise them with these environment variables):
      FEATVIZ_MAX_PIXELS  pixels of one picture after resizing (default 89478485)
      FEATVIZ_MAX_IMAGES  images made in one run (default 4096)
      FEATVIZ_MAX_WINDOWS occlusion windows per image (default 1000000)
      FEATVIZ_MAX_BYTES   one array planned from model dims (default: free memory)
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("featviz: %(message)s"))
    handler.addFilter(_OncePerMessage())
    held = HeldNotices()
    handler.addFilter(held)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    context = click.get_current_context()
    context.call_on_close(lambda: held.release(handler, context))


class _OncePerMessage(logging.Filter):
    """Show each distinct notice once per command (several sessions may report the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
@json_file_option
@provider_option
@prep_options
@reports_errors
def info(model: Path, as_json: bool, provider: str, prep: api.PrepOptions) -> None:
    """Show the input spec, preprocessing and layer table of MODEL.

    \b
    Examples:
      featviz info models/mnist_cnn.onnx
      featviz info squeezenet.onnx --json > layers.json
    """
    from onnx_featviz import api
    with api.Inspector(model, provider, prep=prep) as inspector:
        summary = api.describe(inspector)
    if not emit_json(summary, as_json):
        click.echo(api.format_summary(summary))


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path),
              help="Class names, one per line (default: the model's metadata).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one entry per image.")
@json_file_option
@provider_option
@prep_options
@reports_errors
def predict(model: Path, images: tuple[Path, ...], labels: Path | None, top_k: int,
            as_json: bool, provider: str, prep: api.PrepOptions) -> None:
    """Print the top classes of MODEL for each IMAGE (files or folders).

    Scores are probabilities; softmax is applied when the model emits logits.

    \b
    Examples:
      featviz predict models/mnist_cnn.onnx models/samples/
      featviz predict squeezenet.onnx cat.png --preset caffe --labels imagenet_classes.txt
    """
    from onnx_featviz import api
    names = api.read_labels(labels) if labels else None
    with api.Inspector(model, provider, prep=prep, labels=names) as inspector:
        results = inspector.predict(readable_images(inspector, images), top_k)
    notice_nonfinite([c.score for r in results for c in r.top], "scores")
    if not emit_json(api.predictions_to_json(results), as_json):
        click.echo(api.format_predictions(results))


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--layer", "--layers", "layers", multiple=True,
              help="Conv layer (name, tensor or index); "
              "repeat for several. Default: every conv layer.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("featviz-out"),
              show_default=True, help="Folder for the PNGs, or a .png file for one layer.")
@click.option("--annotate", is_flag=True, help="Write each weight on its cell (small kernels).")
@click.option("--cmap", default="RdBu_r", show_default=True, help="Matplotlib colormap name.")
@click.option("--max-filters", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most filters (output channels) drawn per layer; a larger layer's title "
              "says how many were drawn.")
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save the float32 (O, I, kH, kW) filters, keyed by layer name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON manifest.")
@json_file_option
@prep_options
@reports_errors
def filters(model: Path, layers: tuple[str, ...], out: Path, annotate: bool, cmap: str,
            max_filters: int, save_npz: Path | None, as_json: bool,
            prep: api.PrepOptions) -> None:
    """Draw the conv filters of MODEL (diverging colormap centred on zero).

    First-layer RGB filters are drawn as colour patches, in the model's channel order (BGR
    for --preset caffe, --bgr or BGR metadata).

    \b
    Examples:
      featviz filters models/mnist_cnn.onnx --layer conv1 --annotate
      featviz filters model.onnx --out filters/ --save-npz filters.npz
    """
    from onnx_featviz import api
    refuse_overwrite([model], [out, save_npz])
    opts = api.FilterRenderOptions(annotate=annotate, cmap=cmap, max_filters=max_filters,
                                   prep=prep)
    result = api.render_model_filters(model, layers or None, opts)
    written = save_or_mark_partial(lambda: api.save_pictures(
        result.pictures, out, arrays=result.arrays, npz=save_npz),
        out, [p.name for p in result.pictures])
    emit_written(written, as_json, api.manifest(result, written))


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--layer", "--layers", "layers", multiple=True,
              help="Layer (name, tensor or index); repeat for several.")
@click.option("--convs", "which", flag_value="convs", help="Every conv layer (default).")
@click.option("--all", "which", flag_value="all", help="Every layer output (Keras-style).")
@click.option("--stage", type=click.Choice(["conv", "act", "both"]), default="act",
              show_default=True, help="Conv output, after its activation, or both side by side.")
@click.option("--reduce", type=click.Choice(["none", "mean", "max"]), default="none",
              show_default=True, help="Draw the mean or max over channels as one image.")
@channel_option("Channels to draw: an index, a range or a comma list (5, 0:16, 8:, 20,22); "
                "repeat for several.")
@click.option("--cmap", help="Matplotlib colormap name (default: viridis; RdBu_r centred on "
              "zero for pre-activation conv outputs).")
@click.option("--normalize", type=click.Choice(["channel", "layer"]), default="channel",
              show_default=True, help="Scale each channel to its own range, or one per layer.")
@click.option("--top", type=click.IntRange(min=1),
              help="Draw only the K channels with the largest mean activation, largest first.")
@out_dir_option
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save the tensors (float32, exactly as computed), keyed by tensor name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON manifest.")
@json_file_option
@provider_option
@prep_options
@reports_errors
def maps(model: Path, images: tuple[Path, ...], layers: tuple[str, ...], which: str | None,
         stage: str, reduce: str, channels: tuple[slice, ...] | None, cmap: str | None,
         normalize: str, top: int | None, out: Path,
         save_npz: Path | None, as_json: bool, provider: str, prep: api.PrepOptions) -> None:
    """Draw the feature maps of MODEL for each IMAGE: one grid of channels per layer.

    \b
    Examples:
      featviz maps models/mnist_cnn.onnx models/samples/digit_9.png
      featviz maps model.onnx cat.png --layer conv1 --stage both --channel 0:16
      featviz maps model.onnx cat.png --all --reduce mean --cmap magma
      featviz maps model.onnx cat.png --layer conv2 --top 16
    """
    from onnx_featviz import api
    refuse_overwrite([model, *images], [out, save_npz])
    opts = api.MapRenderOptions(stage=stage, reduce=reduce, channels=channels, cmap=cmap,
                                every_layer=which == "all", normalize=normalize, top=top)
    with api.Inspector(model, provider, prep=prep) as inspector:  # drawing is quick: no bar
        result = api.render_feature_maps(inspector, readable_images(inspector, images),
                                         layers or None, opts, progress=None)
    written = save_or_mark_partial(lambda: api.save_pictures(
        result.pictures, out, arrays=result.arrays, npz=save_npz),
        out, [p.name for p in result.pictures])
    emit_written(written, as_json, api.manifest(result, written))


@main.command("build-conv", context_settings=CONTEXT)
@click.argument("filters_file", metavar="FILTERS", required=False,
                type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["edges"]),
              help="Use a built-in filter bank instead of FILTERS (edges: four 4x4 edges).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model to write.")
@click.option("--activation", type=click.Choice(["relu", "none"]), default="relu",
              show_default=True)
@reports_errors
def build_conv(filters_file: Path | None, preset: str | None, out: Path,
               activation: str) -> None:
    """Build a one-conv ONNX model from a filter bank (.npy, or text with blank-line blocks).

    \b
    Examples:
      featviz build-conv --preset edges --out edges.onnx
      featviz build-conv my_filters.npy --out mine.onnx --activation none
    """
    from onnx_featviz import api
    if (filters_file is None) == (preset is None):
        raise click.UsageError("give either FILTERS or --preset edges")
    refuse_overwrite([filters_file], [out])
    written = api.build_conv(filters_file, preset=preset, out=out, activation=activation)
    emit_written([written], False)



def _target(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--method", default="grad_cam", show_default=True,
              help="grad_cam, grad_cam_pp, xgrad_cam, hires_cam, layer_cam, eigen_cam, "
              "score_cam, ablation_cam or occlusion.")
@click.option("--layer", "--layers", "layers", multiple=True,
              help="Target layer (name, tensor, index or "
              "module path such as layer4; token (N, T, C) and channels-last layers too); repeat "
              "for one map per layer plus the fused map. Default: the last block the head's "
              "global pooling reads.")
@click.option("--target", help="Class index or label name (with --labels), default top-1; "
              "with --score: an element index, a multi-index 3,4,5 or 'all' (the sum).")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Class names, one per line (default: the model's metadata).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Top classes listed per image in --json.")
@click.option("--explain-top", type=click.IntRange(min=1), default=1, show_default=True,
              help="One CAM for each of every image's K best classes (not with --target).")
@click.option("--score", help="Tensor or layer scored (default: the logits before a final "
              "Softmax, else the first output); any tensor with an element --target.")
@click.option("--alpha", type=FiniteRange(0.0, 1.0), default=0.5, show_default=True,
              help="Heatmap opacity in the overlay.")
@click.option("--cmap", default="jet", show_default=True, help="Matplotlib colormap name.")
@click.option("--whole-image", is_flag=True, help="Draw the overlay on the whole picture "
              "(the part the model does not see darkened) instead of the centre crop.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=32,
              show_default=True, help="Rows per forward pass (Score-CAM, Ablation, occlusion).")
@click.option("--window", callback=parse_size, help="occlusion: window in input pixels, 16 or "
              "16x24 (HxW); default: 1/8 of the input.")
@click.option("--stride", callback=parse_size, help="occlusion: window step in pixels, 8 or "
              "8x12; default: half the window.")
@click.option("--fill", callback=parse_fill, default="0", show_default=True,
              help="occlusion: window fill in model-input units (0 is the dataset mean for "
              "mean/std-normalized inputs), or 'mean' for each image's channel means.")
@out_dir_option
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save cam (N,H,W), layer_cam (N,h,w), target (N,) and image (N,).")
@click.option("--json", "as_json", is_flag=True, help="Print targets, layer and top classes.")
@json_file_option
@target_options
@provider_option
@prep_options
@reports_errors
def cam(model: Path, images: tuple[Path, ...], method: str, layers: tuple[str, ...],
        target: str | None, labels: Path | None, top_k: int, explain_top: int,
        score: str | None, alpha: float, cmap: str, whole_image: bool, batch_size: int,
        window: tuple[int, int] | None, stride: tuple[int, int] | None, fill: float | str,
        out: Path, save_npz: Path | None, as_json: bool, provider: str,
        prep: api.PrepOptions, goal: api.TargetSpec) -> None:
    """Draw class-activation maps of MODEL for each IMAGE (overlay and heatmap PNGs).

    Classifiers, segmentation (the class summed over its pixels, --region or --box),
    detectors (--detection, --target CLASS, --box, --detections K; boxes drawn) and any
    tensor element (--score T --target 3|all).

    \b
    Examples:
      featviz cam models/mnist_cnn.onnx models/samples/digit_9.png
      featviz cam squeezenet.onnx cat.png --preset caffe --method score_cam --save-npz cam.npz
      featviz cam model.onnx cat.png --labels imagenet_classes.txt --target "tabby cat" --json
      featviz cam model.onnx cat.png --explain-top 3 --whole-image
      featviz cam model.onnx cat.png --method occlusion --window 32 --stride 16 --fill mean
      featviz cam unet.onnx street.png --target 2 --box 8,4,40,30
      featviz cam yolo.onnx street.png --detections 5 --layer p3 --layer p4
    """
    from onnx_featviz import api
    refuse_overwrite([model, *images, labels], [out, save_npz])
    names = api.read_labels(labels) if labels else None
    options = api.CamOptions(method, layer=layers[0] if layers else None,
                             layers=layers if len(layers) > 1 else (),
                             target=_target(target), top_k=top_k, goal=goal,
                             explain_top=explain_top, score=score, alpha=alpha, cmap=cmap,
                             batch_size=batch_size, whole_image=whole_image,
                             occlusion=api.OcclusionOptions(window, stride, fill))
    with api.Inspector(model, provider, prep=prep, labels=names) as inspector, \
            progress_bar(f"{method} passes") as progress:
        report = inspector.cam(readable_images(inspector, images), options,
                               progress=progress)
    result = api.render_cam(report)
    written = save_or_mark_partial(lambda: api.save_pictures(
        result.pictures, out, arrays=result.arrays, npz=save_npz),
        out, [p.name for p in result.pictures])
    emit_written(written, as_json, {"images": api.cam_to_json(report)})


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(list(choices.BACKPROP_METHODS)), default="saliency",
              show_default=True, help="Input-gradient view to draw.")
@click.option("--layer", "--layers", "layers", multiple=True, help="guided-gradcam: the "
              "Grad-CAM layer (name, tensor, index or module path). Default: the last block "
              "the head's global pooling reads.")
@click.option("--target", help="Class index or label name (with --labels), default top-1; "
              "with --score: an element index, a multi-index 3,4,5 or 'all'.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Class names, one per line (default: the model's metadata).")
@click.option("--explain-top", type=click.IntRange(min=1), default=1, show_default=True,
              help="One view for each of every image's K best classes (not with --target).")
@click.option("--score", help="Tensor or layer scored (default: the logits before a final "
              "Softmax, else the first output).")
@out_dir_option
@click.option("--save-npz", type=click.Path(path_type=Path),
              help="Also save view (N,H,W[,C]), target (N,), image (N,) and rank (N,).")
@click.option("--json", "as_json", is_flag=True, help="Print paths, targets and labels.")
@json_file_option
@target_options
@provider_option
@prep_options
@reports_errors
def backprop(model: Path, images: tuple[Path, ...], method: str, layers: tuple[str, ...],
             target: str | None, labels: Path | None, explain_top: int, score: str | None,
             out: Path, save_npz: Path | None, as_json: bool, provider: str,
             prep: api.PrepOptions, goal: api.TargetSpec) -> None:
    """Draw input-gradient views of MODEL for each IMAGE (saliency, guided backprop).

    \b
    Examples:
      featviz backprop models/mnist_cnn.onnx models/samples/digit_9.png
      featviz backprop squeezenet.onnx cat.png --preset caffe --method guided-gradcam
      featviz backprop model.onnx cat.png --labels classes.txt --explain-top 3 --json
      featviz backprop yolo.onnx street.png --detection 0
    """
    from onnx_featviz import api
    from onnx_featviz.attribution import output
    if len(layers) > 1:
        raise click.BadParameter(f"guided-gradcam uses one Grad-CAM layer, got {len(layers)}: "
                                 f"{', '.join(layers)}; give --layer once", param_hint="--layer")
    refuse_overwrite([model, *images, labels], [out, save_npz])
    names = api.read_labels(labels) if labels else None
    with api.Inspector(model, provider, prep=prep, labels=names) as inspector:
        views = output.backprop_views(
            inspector, readable_images(inspector, images), method, _target(target),
            score=score, goal=goal, layer=layers[0] if layers else None,
            explain_top=explain_top)
    result = output.draw_backprop(views)
    written = save_or_mark_partial(lambda: api.save_pictures(
        result.pictures, out, arrays=result.arrays, npz=save_npz),
        out, [p.name for p in result.pictures])
    emit_written(written, as_json, {"images": output.backprop_to_json(views)})


from onnx_featviz.cli import audit as cli_audit  # noqa: E402

main.add_command(cli_audit.compare)
main.add_command(cli_audit.stats)

from onnx_featviz.cli import synthesis as cli_synthesis  # noqa: E402

main.add_command(cli_synthesis.maximize)
main.add_command(cli_synthesis.invert)

from onnx_featviz.cli import report as cli_report  # noqa: E402

main.add_command(cli_report.report)
