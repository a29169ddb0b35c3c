"""CAM and backprop results as pictures and JSON records."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.render.pictures as render
from onnx_featviz.attribution.run import CamReport
from onnx_featviz.attribution.seeds import TargetSpec
from onnx_featviz.attribution.target_run import backprop
from onnx_featviz.inspector import Images, Inspector
from onnx_featviz.io.outputs import Picture, Rendered, input_folders


def render_cam(report: CamReport) -> Rendered:
    """Return ``<input>/cam_<method>.png`` overlays and ``<input>/cam_<method>_heatmap.png``.

    With several CAMs per input (``explain_top``) the names end in ``_top<rank>_class<index>``.
    Arrays: ``cam`` (R, H, W), ``layer_cam`` (R, h, w), ``target`` (R,) and ``image`` (R,) (the
    input row each CAM explains) for ``.npz`` export.
    """
    folders = input_folders(report.sources)
    index = _cam_rows(report)
    several = len(index) > len(set(index.tolist()))
    pictures: list[Picture] = []
    for row, image in enumerate(index):
        stem = f"{folders[image]}/cam_{report.method}"
        if several:
            stem += f"_top{int(report.rank[row]) + 1}_class{int(report.targets[row])}"
        heat = Image.fromarray(render.apply_colormap(report.cam[row], "jet"))
        if report.overlays:
            pictures.append(Picture(f"{stem}.png", report.overlays[row]))
        pictures.append(Picture(f"{stem}_heatmap.png", heat))
        for i, layer_heat in enumerate(report.layer_heatmaps):  # fused map above, then each
            pictures.append(Picture(f"{stem}_layer{i}_heatmap.png", Image.fromarray(
                render.apply_colormap(layer_heat[row], "jet"))))
    arrays: dict[str, NDArray[np.generic]] = {
        "cam": report.cam, "layer_cam": report.layer_cam, "target": report.targets,
        "image": index}
    if report.detections:
        arrays["box"] = np.asarray([d.box for d in report.detections], np.float32)
        arrays["score"] = np.asarray([d.score for d in report.detections], np.float32)
    return Rendered(tuple(pictures), arrays)


def _cam_rows(report: CamReport) -> NDArray[np.int64]:
    if len(report.image_index) == len(report.cam):
        return report.image_index
    return np.arange(len(report.cam), dtype=np.int64)


def cam_to_json(report: CamReport) -> list[dict[str, Any]]:
    """Return per CAM: image, target, rank, layer, score tensor and the image's top classes.

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
            "layer": report.layer, "score_tensor": report.score_tensor,
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


def render_backprop(inspector: Inspector, images: Images, method: str,
                    target: int | str | None = None, *,
                    score: str | int | None = None, goal: TargetSpec | None = None
                    ) -> Rendered:
    """Return one ``<input>/backprop_<method>.png`` per input (see ``Inspector.backprop``)."""
    batch = inspector.load_batch(images)
    views = backprop(inspector, batch.array, method, target, score=score, goal=goal)
    pictures = []
    for index, folder in enumerate(input_folders(batch.sources)):
        pixels = np.round(np.clip(views[index], 0.0, 1.0) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] != 3:
            pixels = pixels[..., 0]  # one-channel models: guided views are gray
        image = Image.fromarray(pixels)
        pictures.append(Picture(f"{folder}/backprop_{method}.png", image))
    return Rendered(tuple(pictures), {method: views})

