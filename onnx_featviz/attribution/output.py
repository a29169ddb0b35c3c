"""CAM and backprop results as pictures and JSON records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.render.pictures as render
from onnx_featviz.attribution.run import CamReport, backprop
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
    if several and rows:
        pictures.append(_sheet(report, rows))
    arrays: dict[str, NDArray[np.generic]] = {
        "cam": report.cam, "layer_cam": report.layer_cam, "target": report.targets,
        "image": index}
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
    title = f"{report.method}: the top {k} classes of {names}"
    name = f"cam_{report.method}_top{k}" + ("_whole" if report.whole_image else "")
    return Picture(f"{name}.png", figures.sheet([rows[r] for r in sorted(rows)], title=title),
                   title, f"sheet of {report.method} CAMs, a row per class rank, a column per "
                   "input")


def _cam_rows(report: CamReport) -> NDArray[np.int64]:
    if len(report.image_index) == len(report.cam):
        return report.image_index
    return np.arange(len(report.cam), dtype=np.int64)


def cam_to_json(report: CamReport) -> list[dict[str, Any]]:
    """Return per CAM: image, target, rank, layer, score tensor and the image's top classes.

    ``rank`` is 1 for the image's best class, 2 for the second (as in the ``_top<rank>`` file
    names), and null when the target was given rather than picked from the scores.
    """
    index = _cam_rows(report)
    rank = report.rank if len(report.rank) == len(index) else np.zeros(len(index), np.int64)
    return [{"image": report.sources[int(i)], "method": report.method,
             "target": int(report.targets[row]),
             "rank": int(rank[row]) + 1 if rank[row] >= 0 else None,
             "layer": report.layer, "score_tensor": report.score_tensor,
             "top": [{"index": c.index, "label": c.label, "probability": c.score}
                     for c in report.top[int(i)]]}
            for row, i in enumerate(index)]


def render_backprop(inspector: Inspector, images: Images, method: str,
                    target: int | str | None = None, *,
                    score: str | int | None = None) -> Rendered:
    """Return one ``<input>/backprop_<method>.png`` per input (see ``Inspector.backprop``)."""
    batch = inspector.load_batch(images)
    views = backprop(inspector, batch.array, method, target, score=score)
    pictures = []
    for index, folder in enumerate(input_folders(batch.sources)):
        pixels = np.round(np.clip(views[index], 0.0, 1.0) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] != 3:
            pixels = pixels[..., 0]  # one-channel models: guided views are gray
        image = Image.fromarray(pixels)
        suffix = f"_class{file_stem(str(target))}" if target is not None else ""
        pictures.append(Picture(f"{folder}/backprop_{method}{suffix}.png", image, "",
                                f"{method} view of {batch.sources[index]}"))
    return Rendered(tuple(pictures), {method: views})

