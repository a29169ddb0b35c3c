"""Seed rows for any target kind: class, segmentation region, detection or tensor element.

A CAM row explains one scalar score ``S_r`` of one image. ``resolve_seeds`` turns what the caller
asked for (``TargetSpec``) and one unperturbed forward pass into ``Seeds``: the tensor the reverse
pass is seeded on, one ``dS_r / d tensor`` row per CAM row, the image each row belongs to, and
``Seeds.scores`` to score the same targets on perturbed outputs (Score-CAM, Ablation-CAM,
occlusion). The maths of each kind lives in ``attribution.targets`` (segmentation, elements) and
``attribution.detection``; this module only picks the kind and assembles rows.

Pure numpy: no onnxruntime, no disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.attribution import detection as det
from onnx_featviz.attribution import targets as tgt
from onnx_featviz.attribution.methods import select_targets
from onnx_featviz.errors import InputError

KINDS = ("auto", "class", "segmentation", "detection", "element")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a CAM or backprop row explains beyond "the logit of a class".

    Attributes:
        kind: one of ``KINDS``; ``"auto"`` reads it from the options and the score tensor
            (an element target -> element; detection options -> detection; a 4-D score
            tensor -> segmentation; (N, classes) -> class; else detection).
        region: segmentation mask (H, W) or (N, H, W), nonzero inside (any size: resized to
            the output by nearest neighbour).
        box: ``(x0, y0, x1, y1)`` input pixels: the segmentation region, or the detection with
            the best IoU.
        detection: rank of the detection explained in each image (0 = best).
        detections: explain each image's best ``detections`` detections, one row each.
        detect_format: a ``detection.FORMATS`` name overriding the guess from the outputs.
        decode: thresholds of the detection decoding.
        element: an element of the score tensor (flat index within a row, multi-index) or
            ``"all"`` (the row's sum).
        inputs: further model inputs, name -> (N, ...) array (models with several inputs).
    """

    kind: str = "auto"
    region: NDArray[np.generic] | None = None
    box: tgt.Box | None = None
    detection: int | None = None
    detections: int = 1
    detect_format: str | None = None
    decode: det.DetectionOptions = det.DetectionOptions()
    element: tgt.ElementTarget | None = None
    inputs: Mapping[str, NDArray[np.generic]] | None = None


@dataclass(frozen=True, slots=True)
class Seeds:
    """One reverse-pass seed row per CAM row.

    Attributes:
        kind: the resolved kind (``KINDS`` minus ``"auto"``).
        tensor: the tensor seeded (scored).
        seed: (R, *row shape of tensor) float32, ``dS_r / d tensor[image_index[r]]``.
        image_index: (R,) int64 batch row of each CAM row, image-major.
        targets: (R,) int64 class explained (segmentation and detection), flat element
            index (class, element) or -1 (``"all"``).
        detections: the detection each row explains (detection kind only, else empty).
        fmt: the detection format (detection kind only).
        layout: ``"NCHW"``/``"NHWC"`` of a segmentation output, else None.
    """

    kind: str
    tensor: str
    seed: NDArray[np.float32]
    image_index: NDArray[np.int64]
    targets: NDArray[np.int64]
    detections: tuple[det.Detection, ...] = ()
    fmt: det.DetectionFormat | None = None
    layout: str | None = None

    def scores(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        """Score every row's target on every row of (perturbed) ``tensor`` values.

        Args:
            values: (B, *row shape) values of ``tensor``.

        Returns:
            (B, R) float64: column r is ``S_r`` computed on each of the B rows.
        """
        arr = np.asarray(values, np.float64)
        if self.fmt is not None and self.fmt.kind == "yolov5":
            out = np.empty((len(arr), len(self.detections)), np.float64)
            for r, found in enumerate(self.detections):
                out[:, r] = det.detection_scores({self.tensor: arr}, self.fmt,
                                                 [found] * len(arr))
            return out
        flat = arr.reshape(len(arr), -1)
        return np.asarray(flat @ self.seed.reshape(len(self.seed), -1).astype(np.float64).T)


def resolve_kind(spec: TargetSpec, shape: Sequence[int]) -> str:
    """Return the target kind for ``spec`` and the default score tensor's ``shape``.

    Raises:
        InputError: an unknown kind.
    """
    if spec.kind not in KINDS:
        raise InputError(f"unknown target kind {spec.kind!r}; choose one of {KINDS}")
    if spec.kind != "auto":
        return spec.kind
    if spec.element is not None:
        return "element"
    if spec.detection is not None or spec.detect_format is not None or spec.detections > 1:
        return "detection"
    dims = list(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 4:
        return "segmentation"
    if len(dims) == 2 and spec.region is None and spec.box is None:
        return "class"
    return "detection"


def class_index(target: int | str | None, classes: int, labels: Sequence[str] | None
                ) -> int | None:
    """Return a class index from an index or label (None stays None).

    Raises:
        InputError: index out of range, label not found.
    """
    if target is None:
        return None
    return int(select_targets(np.zeros((1, classes)), target, labels=labels)[0])


def segmentation_seeds(values: NDArray[np.floating], tensor: str, layout: str,
                       target: int | None, spec: TargetSpec, input_size: tuple[int, int]
                       ) -> Seeds:
    """Seeds of ``S = sum over region of output[class k]``, one row per image.

    Without a target each image explains the class that wins most of its pixels.

    Args:
        values: (N, K, H, W) or (N, H, W, K) unperturbed output.
        tensor: its name; layout: its layout; target: class k or None.
        spec: region (mask) or box; input_size: (H_in, W_in) of the model input.

    Returns:
        ``Seeds`` with R = N rows.

    Raises:
        InputError: see ``targets.segmentation_region``.
    """
    arr = np.asarray(values, np.float32)
    axis = 1 if layout == "NCHW" else -1
    classes = arr.shape[axis]
    rows, chosen = [], []
    for n in range(len(arr)):
        k = target
        if k is None:
            k = int(np.argmax(np.bincount(np.argmax(arr[n:n + 1], axis=axis).ravel(),
                                          minlength=classes)))
        mask = spec.region
        if mask is not None and np.ndim(mask) == 3:
            mask = np.asarray(mask)[n]
        region = tgt.segmentation_region(arr[n:n + 1], layout, k, mask=mask, box=spec.box,
                                         input_size=input_size)
        rows.append(tgt.segmentation_seed(arr[n:n + 1].shape, layout, k, region)[0])
        chosen.append(k)
    index = np.arange(len(arr), dtype=np.int64)
    return Seeds("segmentation", tensor, np.stack(rows), index, np.asarray(chosen, np.int64),
                 layout=layout)


def detection_seeds(outputs: Mapping[str, NDArray[np.generic]], target: int | None,
                    spec: TargetSpec, input_size: tuple[int, int]) -> Seeds:
    """Seeds of detections: one row per chosen detection, image-major.

    Per image: the box with the best IoU with ``spec.box``, else the best box of class
    ``target``, else the detection of rank ``spec.detection``, else the best
    ``spec.detections`` detections.

    Raises:
        InputError: no detection fits (an image without detections included).
        ModelError: the outputs fit no detection format.
    """
    shapes = {name: tuple(np.shape(v)) for name, v in outputs.items()}
    fmt = det.detect_format(shapes, spec.detect_format)
    decoded = det.decode_detections(outputs, fmt, input_size=input_size, options=spec.decode)
    chosen: list[det.Detection] = []
    for n, found in enumerate(decoded):
        if spec.box is not None:
            chosen.append(det.pick_detection(found, box=spec.box))
            continue
        if target is not None or spec.detection is not None:
            chosen.append(det.pick_detection(found, cls=target, index=None if target is not None
                                             else spec.detection))
            continue
        if spec.detections < 1:
            raise InputError(f"detections must be >= 1, got {spec.detections}")
        if not found:
            raise InputError(f"image {n} has no detection with score > {spec.decode.conf}; "
                             "lower the confidence threshold or drop the image")
        chosen.extend(found[:spec.detections])
    rows = det.detection_seed(outputs, fmt, chosen)
    return Seeds("detection", rows.tensor, rows.seed, rows.image_index,
                 np.asarray([d.cls for d in chosen], np.int64), tuple(chosen), fmt)


def element_seeds(values: NDArray[np.generic], tensor: str,
                  element: tgt.ElementTarget | list[int]) -> Seeds:
    """Seeds of one element per image (or its row's sum); ``element`` may be a per-image list.

    Args:
        values: (N, ...) the tensor's values; tensor: its name.
        element: ``"all"``, a flat index or multi-index shared by all images, or a list of
            N flat indices (one per image, e.g. each image's top class).

    Returns:
        ``Seeds`` with R = N rows.
    """
    shape = tuple(np.shape(values))
    if isinstance(element, list):
        seed = np.stack([tgt.element_seed((1, *shape[1:]), int(e))[0] for e in element])
        flat = np.asarray(element, np.int64)
    else:
        seed = tgt.element_seed(shape, element)
        first = seed.reshape(len(seed), -1)[:1]
        flat = np.full(len(seed), -1 if element == "all" else int(np.argmax(first)), np.int64)
    return Seeds("element", tensor, seed, np.arange(shape[0], dtype=np.int64), flat)


def padded_columns(image_index: NDArray[np.int64], images: int
                   ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Lay the R rows out as (N, T) columns for the perturbation methods.

    The perturbation methods serve T targets per image from the same forward rows; image n's
    columns are its rows' indices into ``Seeds.scores``, padded by repeating its last row.

    Returns:
        ((N, T) column indices, (R,) position of row r in the image-major (N * T) maps).

    Raises:
        InputError: an image without rows.
    """
    counts = np.bincount(image_index, minlength=images)
    if counts.min(initial=1) < 1:
        raise InputError(f"image(s) {np.flatnonzero(counts == 0).tolist()} have no target row")
    width = int(counts.max())
    columns = np.zeros((images, width), np.int64)
    where = np.zeros(len(image_index), np.int64)
    for n in range(images):
        rows = np.flatnonzero(image_index == n)
        columns[n, :len(rows)] = rows
        columns[n, len(rows):] = rows[-1]
        where[rows] = n * width + np.arange(len(rows))
    return columns, where
