"""CAM and backprop results as pictures and JSON records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.render.pictures as render
from onnx_featviz.attribution.layers import cam_layer
from onnx_featviz.attribution.run import CamReport
from onnx_featviz.attribution.seeds import TargetSpec
from onnx_featviz.attribution.target_run import backprop_rows
from onnx_featviz.errors import InputError
from onnx_featviz.inspector import Images, Inspector
from onnx_featviz.io.outputs import Picture, Rendered, file_stem, input_folders
from onnx_featviz.render import figures


def render_cam(report: CamReport, *, target_given: bool | None = None) -> Rendered:
    """Return titled overlays ``<input>/cam_<method>.png`` and ``<input>/cam_<method>_heatmap.png``.

    Each overlay carries a title band (class, label, probability, method, layer) and a colour
    bar numbered 0..1. With several CAMs per input (``explain_top``) the names end in
    ``_top<rank>_class<index>`` and the run also gets ``cam_<method>_top<k>.png``, one sheet
    with a row per rank (best class first) and a column per input; a given target adds
    ``_class<index>``, whole-image overlays ``_whole``. Arrays: ``cam`` (R, H, W),
    ``layer_cam`` (R, h, w), ``target`` (R,) and ``image`` (R,) (the input row each CAM
    explains) for ``.npz`` export.

    Args:
        target_given: whether the targets were chosen by the caller (default: read from
            ``report.rank``, which is -1 for given targets).
    """
    folders = input_folders(report.sources)
    index = _cam_rows(report)
    several = len(index) > len(set(index.tolist()))
    given = bool((report.rank < 0).any()) if target_given is None else target_given
    pictures: list[Picture] = []
    rows: dict[int, list[Image.Image]] = {}
    for row, image in enumerate(index):
        stem = f"{folders[image]}/cam_{report.method}{_cam_suffix(report, row, several, given)}"
        heat = Image.fromarray(render.apply_colormap(report.cam[row], report.cmap))
        title = report.titles[row] if row < len(report.titles) else ""
        shows = f"{report.method} CAM of class {int(report.targets[row])} for " \
                f"{report.sources[int(image)] if report.sources else 'input ' + str(image)}"
        if report.overlays:
            titled = figures.titled(report.overlays[row], title, cmap=report.cmap,
                                    ticks=figures.number_ticks(0.0, 1.0, 5),
                                    bar_label="CAM, scaled to [0, 1]")
            pictures.append(Picture(f"{stem}.png", titled, title.replace("\n", " | "),
                                    f"overlay: {shows}"))
            rows.setdefault(int(report.rank[row]), []).append(titled)
        pictures.append(Picture(f"{stem}_heatmap.png", heat, "", f"heatmap: {shows}"))
        for i, layer_heat in enumerate(report.layer_heatmaps):  # fused map above, then each
            pictures.append(Picture(f"{stem}_layer{i}_heatmap.png", Image.fromarray(
                render.apply_colormap(layer_heat[row], report.cmap)), "",
                f"layer {i} heatmap: {shows}"))
    if several and rows:
        pictures.append(_sheet(report, rows))
    arrays: dict[str, NDArray[np.generic]] = {
        "cam": report.cam, "layer_cam": report.layer_cam, "target": report.targets,
        "image": index}
    if report.detections:
        arrays["box"] = np.asarray([d.box for d in report.detections], np.float32)
        arrays["score"] = np.asarray([d.score for d in report.detections], np.float32)
    return Rendered(tuple(pictures), arrays)


def _cam_suffix(report: CamReport, row: int, several: bool, given: bool) -> str:
    """The file name part that tells pictures of one input apart (rank, class, whole)."""
    suffix = ""
    if several:
        suffix += f"_top{int(report.rank[row]) + 1}_class{int(report.targets[row])}"
    elif given:
        suffix += f"_class{int(report.targets[row])}"
    return suffix + ("_whole" if report.whole_image else "")


def _sheet(report: CamReport, rows: dict[int, list[Image.Image]]) -> Picture:
    """One picture of every titled overlay: a row per rank (best class first), a column per
    input."""
    k = len(rows)
    names = ", ".join(Path(src).name for src in report.sources[:4]) + (
        ", ..." if len(report.sources) > 4 else "")
    what = "detections" if report.detections else "classes"
    title = f"{report.method}: the top {k} {what} of {names}"
    name = f"cam_{report.method}_top{k}" + ("_whole" if report.whole_image else "")
    return Picture(f"{name}.png", figures.sheet([rows[r] for r in sorted(rows)], title=title),
                   title, f"sheet of {report.method} CAMs, a row per class rank, a column per "
                   "input")


def _cam_rows(report: CamReport) -> NDArray[np.int64]:
    if len(report.image_index) == len(report.cam):
        return report.image_index
    return np.arange(len(report.cam), dtype=np.int64)


def cam_to_json(report: CamReport) -> list[dict[str, Any]]:
    """Return per CAM: image, target, rank, layer (tensor, module path, layout), score tensor
    and the image's top classes.

    ``rank`` is 1 for the image's best class (or detection), 2 for the second (as in the
    ``_top<rank>`` file names), and null when the target was given rather than picked from the
    scores. Also: ``kind`` (class, segmentation, detection, element, none), ``layers`` with
    ``layer_transform`` (how each token or channels-last layer became (N, C, h, w)) and, for
    detections, ``detection`` (box in input pixels, class, score, anchor).
    """
    index = _cam_rows(report)
    rank = report.rank if len(report.rank) == len(index) else np.zeros(len(index), np.int64)
    rows = []
    for row, i in enumerate(index):
        entry: dict[str, Any] = {
            "image": report.sources[int(i)], "method": report.method, "kind": report.kind,
            "target": int(report.targets[row]),
            "rank": int(rank[row]) + 1 if rank[row] >= 0 else None,
            "layer": report.layer, "module": report.module, "layout": report.layout,
            "score_tensor": report.score_tensor,
            "top": [{"index": c.index, "label": c.label, "probability": c.score}
                    for c in report.top[int(i)]]}
        if report.layers:
            entry["layers"] = list(report.layers)
            entry["layer_transform"] = [t.as_json() for t in report.transforms]
        if report.detections:
            found = report.detections[row]
            entry["detection"] = {"box": list(found.box), "class": found.cls,
                                  "score": found.score, "anchor": found.anchor}
        rows.append(entry)
    return rows


@dataclass(frozen=True, slots=True)
class BackpropViews:
    """Input-gradient views, one row per (input, class rank), image-major.

    ``views``: (R, H, W) saliency or (R, H, W, C) guided views in [0, 1]; ``targets``: (R,)
    class each row explains (-1 for a target that is not a class); ``image_index``: (R,) input
    of each row; ``rank``: (R,) 0 for the input's best class, -1 for a given target;
    ``sources``: where each input came from; ``layer``: the Grad-CAM tensor of
    ``guided-gradcam`` (None for the other methods).
    """

    method: str
    views: NDArray[np.float32]
    targets: NDArray[np.int64]
    image_index: NDArray[np.int64]
    rank: NDArray[np.int64]
    sources: tuple[str, ...]
    layer: str | None
    labels: tuple[str, ...] | None = None


def backprop_views(inspector: Inspector, images: Images, method: str,
                   target: int | str | None = None, *, score: str | int | None = None,
                   goal: TargetSpec | None = None, layer: str | int | None = None,
                   explain_top: int = 1) -> BackpropViews:
    """Compute backprop views (``target_run.backprop``); ``explain_top`` k: one view for each
    of every input's k best classes (only without ``target``).

    Raises:
        InputError: ``explain_top`` < 1 or given with ``target``; as ``target_run.backprop``.
    """
    if explain_top < 1 or (explain_top > 1 and target is not None):
        raise InputError(f"explain_top={explain_top} explains each image's best classes; it "
                         f"must be >= 1 and cannot be combined with target={target!r}")
    batch = inspector.load_batch(images)
    rows = [backprop_rows(inspector, batch.array, method, target, score=score, goal=goal,
                          layer=layer, rank=r) for r in range(explain_top)]
    n = len(batch.array)
    views = np.stack([v for v, _ in rows], axis=1)  # (N, k, ...): image-major rows
    targets = np.stack([np.full(n, -1, np.int64) if t is None else t for _, t in rows], axis=1)
    rank = np.tile(np.arange(explain_top, dtype=np.int64), n)
    return BackpropViews(
        method, views.reshape((-1, *views.shape[2:])), targets.reshape(-1),
        np.repeat(np.arange(n, dtype=np.int64), explain_top),
        rank if target is None else np.full(n, -1, np.int64), tuple(batch.sources),
        cam_layer(inspector, layer) if method == "guided-gradcam" else None,
        tuple(inspector.labels) if inspector.labels else None)


def draw_backprop(result: BackpropViews) -> Rendered:
    """Return one ``<input>/backprop_<method>[_top<rank>][_class<index>].png`` per view, and
    the arrays ``view``, ``target``, ``image`` and ``rank`` (as in ``BackpropViews``)."""
    folders = input_folders(result.sources)
    several = int(result.rank.max(initial=0)) > 0
    pictures = []
    for row, index in enumerate(result.image_index):
        pixels = np.round(np.clip(result.views[row], 0.0, 1.0) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] != 3:
            pixels = pixels[..., 0]  # one-channel models: guided views are gray
        target = int(result.targets[row])
        suffix = f"_top{int(result.rank[row]) + 1}" if several else ""
        if result.rank[row] < 0 or several:
            suffix += f"_class{file_stem(str(target))}" if target >= 0 else ""
        pictures.append(Picture(
            f"{folders[int(index)]}/backprop_{result.method}{suffix}.png",
            Image.fromarray(pixels), "",
            f"{result.method} view of {result.sources[int(index)]}"))
    return Rendered(tuple(pictures), {"view": result.views, "target": result.targets,
                                      "image": result.image_index, "rank": result.rank})


def render_backprop(inspector: Inspector, images: Images, method: str,
                    target: int | str | None = None, *,
                    score: str | int | None = None, goal: TargetSpec | None = None,
                    layer: str | int | None = None, explain_top: int = 1) -> Rendered:
    """Draw backprop views (``backprop_views`` then ``draw_backprop``)."""
    return draw_backprop(backprop_views(inspector, images, method, target, score=score,
                                        goal=goal, layer=layer, explain_top=explain_top))


def backprop_to_json(result: BackpropViews) -> list[dict[str, Any]]:
    """Return per view: image, method, target (with its label), rank (1 = best class, null
    for a given target) and the Grad-CAM layer of guided-gradcam."""
    labels = result.labels or ()
    return [{"image": result.sources[int(i)], "method": result.method,
             "target": int(t) if t >= 0 else None,
             "label": labels[int(t)] if 0 <= t < len(labels) else None,
             "rank": int(r) + 1 if r >= 0 else None, "layer": result.layer}
            for i, t, r in zip(result.image_index, result.targets, result.rank, strict=True)]
