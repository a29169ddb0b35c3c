"""Object-detection targets: output formats, decoding with NMS, picking a box, and its seed.

Formats (``FORMATS``; boxes are in input pixels unless ``DetectionOptions.normalized``):

- ``"yolov8"``: ultralytics YOLOv8/v11 raw head, one tensor (N, 4 + K, A): ``cx, cy, w, h`` then
  K class scores (already sigmoid) per anchor point ``a``.
- ``"yolov8-t"``: the same transposed, (N, A, 4 + K).
- ``"yolov5"``: (N, A, 5 + K): ``cx, cy, w, h``, objectness, K class scores; a detection's score is
  ``objectness * class score``.
- ``"boxes-scores"``: two tensors, decoded boxes (N, A, 4) and class scores (N, A, K)
  (SSD / RetinaNet exports with the box decoding inside the graph); ``box_format`` says xyxy or
  cxcywh.
- ``"nms"``: end-to-end NMS outputs boxes (N, M, 4), scores (N, M), classes (N, M) and optionally
  a count (N,) or (N, 1) (TensorRT EfficientNMS, ONNX exports with NMS inside).
- ``"end2end"``: one (N, M, 6) tensor ``x0, y0, x1, y1, score, class`` (ultralytics ``nms=True``
  / YOLOv10); only by override, as (N, A, 6) is also a one-class YOLOv5 head.

``detect_format`` reads the format from output shapes and names: one 3-D output (N, a, b) is
``yolov8`` when ``a < b`` (channels first, as ultralytics exports) else ``yolov5``; two 3-D
outputs, one ending in 4, are ``boxes-scores``; three or four outputs are ``nms``. An override
string picks the format when the shapes mislead (a transposed ultralytics head is ``yolov8-t``).

Raw heads (yolov8, yolov8-t, yolov5, boxes-scores) are decoded as ultralytics does: each anchor's
best class, kept when its score > ``conf`` (default 0.25), then greedy per-class NMS dropping a box
whose IoU with a better box of its class is > ``iou`` (default 0.45), then the best ``max_det``.
NMS formats keep the rows the model returned (first ``num``) with score > ``conf``.

A detection's score ``S`` is one element (or, for YOLOv5, the product of two elements) of the
score tensor, so ``dS/d(raw output)`` is a one-hot - or, by the product rule,
``d(obj * cls) = cls * d obj + obj * d cls`` - at that anchor. ``detection_seed`` writes one seed
row per chosen detection, so k detections of one image are k rows of one batched reverse pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError, ModelError

FORMATS = ("yolov8", "yolov8-t", "yolov5", "boxes-scores", "nms", "end2end")
Box = tuple[float, float, float, float]
Shape = Sequence[int | str | None]


@dataclass(frozen=True, slots=True)
class DetectionFormat:
    """A detector's output format and which output plays which role.

    Attributes:
        kind: one of ``FORMATS``.
        tensors: output names by role: ``(raw,)`` for yolov8/yolov8-t/yolov5/end2end,
            ``(boxes, scores)`` for boxes-scores, ``(boxes, scores, classes[, num])`` for nms.
        classes: K, the number of classes (0 when the format does not say: nms, end2end).
    """

    kind: str
    tensors: tuple[str, ...]
    classes: int

    @property
    def score_tensor(self) -> str:
        """The tensor a detection's score is read from (the one the reverse pass seeds)."""
        return self.tensors[1] if self.kind in ("boxes-scores", "nms") else self.tensors[0]


@dataclass(frozen=True, slots=True)
class DetectionOptions:
    """Decoding settings.

    Attributes:
        conf: keep detections with score > conf.
        iou: NMS drops a box with IoU > iou against a better box of the same class.
        max_det: keep at most this many detections per image (best first).
        box_format: ``"xyxy"`` or ``"cxcywh"`` for boxes-scores and nms boxes.
        normalized: boxes are in [0, 1] of the input (scaled by W, H).
    """

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    box_format: str = "xyxy"
    normalized: bool = False


@dataclass(frozen=True, slots=True)
class Detection:
    """One decoded detection.

    Attributes:
        image: batch row.
        box: ``(x0, y0, x1, y1)`` input pixels.
        cls: class index.
        score: class score (times objectness for yolov5).
        anchor: index along the raw output's anchor axis (A), or row M of an NMS output.
        objectness: yolov5's objectness, else None.
    """

    image: int
    box: Box
    cls: int
    score: float
    anchor: int
    objectness: float | None = None


@dataclass(frozen=True, slots=True)
class DetectionSeed:
    """Seeds of a batched reverse pass: row r explains ``detections[r]``.

    Attributes:
        tensor: the output to differentiate (``DetectionFormat.score_tensor``).
        seed: (R, *row shape of tensor) float32, ``dS_r / d tensor[image_index[r]]``.
        image_index: (R,) int64 batch row each seed row belongs to (feed ``batch[image_index]``).
    """

    tensor: str
    seed: NDArray[np.float32]
    image_index: NDArray[np.int64]


# ----------------------------------------------------------------------------- format


def _dims(shape: Shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _single(name: str, shape: Shape, kind: str | None) -> DetectionFormat:
    dims = _dims(shape)
    if len(dims) != 3:
        raise ModelError(f"a one-output detector has a 3-D output, got {name!r} {tuple(shape)}; "
                         f"use a model with a detection head or name the format ({FORMATS})")
    a, b = dims[1], dims[2]
    if kind is None:
        kind = "yolov8" if (a is not None and (b is None or a < b)) else "yolov5"
    channels = a if kind == "yolov8" else b
    if channels is None:
        raise ModelError(f"the channel axis of {name!r} {tuple(shape)} is unknown for format "
                         f"{kind!r}; export with a fixed number of classes")
    need = {"yolov8": 5, "yolov8-t": 5, "yolov5": 6, "end2end": 6}[kind]
    if channels < need:
        raise ModelError(f"output {name!r} {tuple(shape)} has {channels} channels, too few for "
                         f"format {kind!r} (>= {need}); pick another format of {FORMATS}")
    classes = {"yolov8": channels - 4, "yolov8-t": channels - 4, "yolov5": channels - 5,
               "end2end": 0}[kind]
    return DetectionFormat(kind, (name,), classes)


def _named(names: Sequence[str], words: Sequence[str]) -> list[str]:
    return [n for n in names if any(w in n.lower() for w in words)]


def _multi(outputs: Mapping[str, Shape], kind: str | None) -> DetectionFormat:
    names = list(outputs)
    dims = {n: _dims(s) for n, s in outputs.items()}
    boxes = [n for n in names if len(dims[n]) == 3 and dims[n][2] == 4]
    if len(boxes) > 1:
        boxes = _named(boxes, ("box", "bbox", "loc")) or boxes
    if not boxes:
        raise ModelError(f"no (N, A, 4) box output among {dict(outputs)}; a detector with "
                         "several outputs needs decoded boxes")
    rest = [n for n in names if n != boxes[0]]
    if kind == "boxes-scores" or (kind is None and len(names) == 2):
        scores = [n for n in rest if len(dims[n]) == 3]
        if len(scores) != 1:
            raise ModelError(f"boxes-scores needs one (N, A, K) score output beside "
                             f"{boxes[0]!r}, got {dict(outputs)}")
        return DetectionFormat("boxes-scores", (boxes[0], scores[0]), dims[scores[0]][2] or 0)
    if kind not in (None, "nms") or len(names) not in (3, 4):
        raise ModelError(f"outputs {dict(outputs)} fit no detection format (with {kind!r}); "
                         f"name the format: one of {FORMATS}")
    num = [n for n in rest if len(dims[n]) == 1 or dims[n][1:] == (1,)]
    pairs = [n for n in rest if n not in num[:1]]
    if (len(names) == 4 and not num) or len(pairs) != 2:
        raise ModelError(f"nms outputs are boxes (N, M, 4), scores and classes (N, M) and an "
                         f"optional count (N,); got {dict(outputs)}")
    classes = _named(pairs, ("class", "label", "cls"))
    cls_name = classes[0] if len(classes) == 1 else pairs[1]
    score_name = next(n for n in pairs if n != cls_name)
    return DetectionFormat("nms", (boxes[0], score_name, cls_name, *num[:1]), 0)


def detect_format(outputs: Mapping[str, Shape], override: str | None = None
                  ) -> DetectionFormat:
    """Read a detector's output format from its output names and shapes.

    Args:
        outputs: output name -> shape (batch first; symbolic dims as strings or None), in graph
            order. Symbolic dims weaken the guess (``(N, a, 80)`` with ``a`` unknown reads as
            yolov5): pass the shapes of a forward pass's outputs when the graph's are symbolic.
        override: one of ``FORMATS`` to skip the guess (roles are still found by shape/name).

    Returns:
        The format.

    Raises:
        InputError: an unknown override (close matches listed).
        ModelError: the outputs fit no format.
    """
    if override is not None and override not in FORMATS:
        near = difflib.get_close_matches(override, FORMATS, n=3)
        raise InputError(f"unknown detection format {override!r}; close matches: {near}; "
                         f"all formats: {FORMATS}")
    if not outputs:
        raise ModelError("the model has no outputs to read detections from")
    single = override in ("yolov8", "yolov8-t", "yolov5", "end2end")
    if single or (override is None and len(outputs) == 1):
        name = next(iter(outputs)) if len(outputs) == 1 else next(
            (n for n, s in outputs.items() if len(s) == 3), next(iter(outputs)))
        return _single(name, outputs[name], override)
    return _multi(outputs, override)


# ----------------------------------------------------------------------------- decoding


def xywh_to_xyxy(boxes: NDArray[np.floating]) -> NDArray[np.float64]:
    """Convert (..., 4) ``cx, cy, w, h`` boxes to ``x0, y0, x1, y1``."""
    b = np.asarray(boxes, np.float64)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def box_iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Return the (P, Q) IoU of xyxy boxes (P, 4) and (Q, 4) (0 where the union is empty)."""
    a64, b64 = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    lo, hi = np.maximum(a64[..., :2], b64[..., :2]), np.minimum(a64[..., 2:], b64[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = np.prod(np.clip(a64[..., 2:] - a64[..., :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b64[..., 2:] - b64[..., :2], 0, None), axis=-1)
    union = area + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: NDArray[np.floating], scores: NDArray[np.floating],
        classes: NDArray[np.integer], iou: float, *, max_keep: int | None = None
        ) -> NDArray[np.intp]:
    """Greedy per-class NMS; return kept indices, best score first (ties: lower index first).

    A box is dropped when its IoU with an already kept box of the same class is > ``iou``.
    Memory is O(boxes): each kept box is compared with the boxes still alive.

    Args:
        boxes: (B, 4) xyxy; scores: (B,); classes: (B,) ints.
        iou: suppression threshold.
        max_keep: stop after this many (the result is the prefix of the full one).

    Returns:
        (kept,) indices into the B boxes.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ranked, cls = np.asarray(boxes, np.float64)[order], np.asarray(classes)[order]
    alive = np.ones(len(order), bool)
    keep: list[int] = []
    for pos in range(len(order)):
        if not alive[pos]:
            continue
        keep.append(int(order[pos]))
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = pos + 1 + np.flatnonzero(alive[pos + 1:] & (cls[pos + 1:] == cls[pos]))
        if rest.size:
            alive[rest[box_iou(ranked[pos:pos + 1], ranked[rest])[0] > iou]] = False
    return np.asarray(keep, np.intp)


def _scale(boxes: NDArray[np.float64], options: DetectionOptions,
           input_size: tuple[int, int]) -> NDArray[np.float64]:
    xyxy = xywh_to_xyxy(boxes) if options.box_format == "cxcywh" else boxes
    if options.normalized:
        h, w = input_size
        xyxy = xyxy * np.array([w, h, w, h], np.float64)
    return xyxy


def _raw_parts(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat,
               options: DetectionOptions, input_size: tuple[int, int]
               ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
    """Return xyxy boxes (N, A, 4), class scores (N, A, K), objectness (N, A) or None."""
    raw = np.asarray(outputs[fmt.tensors[0]], np.float64)
    if fmt.kind == "yolov8":
        raw = raw.transpose(0, 2, 1)
    if fmt.kind == "boxes-scores":
        scores = np.asarray(outputs[fmt.tensors[1]], np.float64)
        return _scale(raw, options, input_size), scores, None
    boxes = _scale(xywh_to_xyxy(raw[..., :4]), DetectionOptions(normalized=options.normalized),
                   input_size)
    if fmt.kind == "yolov5":
        return boxes, raw[..., 5:], raw[..., 4]
    return boxes, raw[..., 4:], None


def _decode_raw(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat,
                options: DetectionOptions, input_size: tuple[int, int]
                ) -> tuple[tuple[Detection, ...], ...]:
    boxes, cls_scores, obj = _raw_parts(outputs, fmt, options, input_size)
    full = cls_scores if obj is None else cls_scores * obj[..., None]
    result = []
    for n in range(len(boxes)):
        cls = np.argmax(full[n], axis=1)
        score = full[n, np.arange(len(cls)), cls]
        cand = np.flatnonzero(score > options.conf)
        kept = cand[nms(boxes[n, cand], score[cand], cls[cand], options.iou,
                         max_keep=options.max_det)]
        result.append(tuple(
            Detection(n, _box(boxes[n, a]), int(cls[a]), float(score[a]), int(a),
                      None if obj is None else float(obj[n, a])) for a in kept))
    return tuple(result)


def _box(row: NDArray[np.float64]) -> Box:
    return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))


def _decode_nms(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat,
                options: DetectionOptions, input_size: tuple[int, int]
                ) -> tuple[tuple[Detection, ...], ...]:
    if fmt.kind == "end2end":
        raw = np.asarray(outputs[fmt.tensors[0]], np.float64)
        boxes, scores, classes = raw[..., :4], raw[..., 4], raw[..., 5]
    else:
        boxes = np.asarray(outputs[fmt.tensors[0]], np.float64)
        scores = np.asarray(outputs[fmt.tensors[1]], np.float64)
        classes = np.asarray(outputs[fmt.tensors[2]])
    boxes = _scale(boxes, options, input_size)
    m = scores.shape[1]
    count = (np.asarray(outputs[fmt.tensors[3]]).reshape(-1).astype(np.int64)
             if len(fmt.tensors) == 4 else np.full(len(scores), m, np.int64))
    result = []
    for n in range(len(scores)):
        rows = np.arange(min(int(count[n]), m))
        rows = rows[scores[n, rows] > options.conf]
        rows = rows[np.argsort(-scores[n, rows], kind="stable")][:options.max_det]
        result.append(tuple(Detection(n, _box(boxes[n, r]), int(classes[n, r]),
                                      float(scores[n, r]), int(r)) for r in rows))
    return tuple(result)


def decode_detections(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat, *,
                      input_size: tuple[int, int],
                      options: DetectionOptions | None = None
                      ) -> tuple[tuple[Detection, ...], ...]:
    """Decode a detector's outputs to detections per image, best score first.

    Args:
        outputs: output name -> (N, ...) values (at least ``fmt.tensors``).
        fmt: the format (``detect_format``).
        input_size: (H, W) model input, for normalized boxes.
        options: thresholds and box encoding (defaults: conf 0.25, IoU 0.45).

    Returns:
        One tuple of ``Detection`` per image (possibly empty).

    Raises:
        InputError: a tensor of ``fmt`` is missing or a bad ``box_format``.
    """
    opts = options or DetectionOptions()
    if opts.box_format not in ("xyxy", "cxcywh"):
        raise InputError(f"box_format must be 'xyxy' or 'cxcywh', got {opts.box_format!r}")
    missing = [t for t in fmt.tensors if t not in outputs]
    if missing:
        raise InputError(f"outputs {missing} of format {fmt.kind!r} not given; got "
                         f"{list(outputs)}")
    if fmt.kind in ("nms", "end2end"):
        return _decode_nms(outputs, fmt, opts, input_size)
    return _decode_raw(outputs, fmt, opts, input_size)


# ----------------------------------------------------------------------------- picking, seeds


def pick_detection(detections: Sequence[Detection], *, index: int | None = None,
                   cls: int | None = None, box: Box | None = None) -> Detection:
    """Pick one image's detection by rank, by class (its best box) or by box (best IoU).

    Args:
        detections: one image's detections, best first (``decode_detections``).
        index: rank in that list (0 = best).
        cls: class index: the best-scoring detection of that class.
        box: ``(x0, y0, x1, y1)`` input pixels: the detection with the highest IoU.

    Returns:
        The detection.

    Raises:
        InputError: not exactly one criterion, or nothing matches.
    """
    if sum(v is not None for v in (index, cls, box)) != 1:
        raise InputError(f"pick a detection by exactly one of index, cls, box; got "
                         f"index={index}, cls={cls}, box={box}")
    if not detections:
        raise InputError("the image has no detection above the confidence threshold; lower "
                         "conf or pick another image")
    if index is not None:
        if not -len(detections) <= index < len(detections):
            raise InputError(f"detection index {index} out of range for {len(detections)} "
                             "detections")
        return detections[index]
    if cls is not None:
        found = [d for d in detections if d.cls == cls]
        if not found:
            seen = sorted({d.cls for d in detections})
            raise InputError(f"no detection of class {cls}; classes detected: {seen}")
        return max(found, key=lambda d: d.score)
    ious = box_iou(np.asarray([box], np.float64), np.asarray([d.box for d in detections]))[0]
    if ious.max() <= 0:
        raise InputError(f"no detection overlaps box {box}; boxes are x0, y0, x1, y1 in input "
                         "pixels")
    return detections[int(np.argmax(ious))]


def _seed_row(raw: NDArray[np.float64] | None, fmt: DetectionFormat, det: Detection,
              row_shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Return ``dS/d(score tensor row)`` for one detection."""
    seed = np.zeros(row_shape, np.float32)
    a, c = det.anchor, det.cls
    if fmt.kind == "yolov8":
        seed[4 + c, a] = 1.0
    elif fmt.kind in ("yolov8-t", "boxes-scores"):
        seed[a, (4 if fmt.kind == "yolov8-t" else 0) + c] = 1.0
    elif fmt.kind == "yolov5":
        assert raw is not None
        seed[a, 4] = raw[a, 5 + c]  # d(obj * cls) / d obj = cls
        seed[a, 5 + c] = raw[a, 4]  # d(obj * cls) / d cls = obj
    elif fmt.kind == "end2end":
        seed[a, 4] = 1.0
    else:
        seed[a] = 1.0
    return seed


def detection_seed(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat,
                   detections: Sequence[Detection]) -> DetectionSeed:
    """Return the reverse-pass seeds, one row per detection, on ``fmt.score_tensor``.

    Args:
        outputs: the outputs the detections were decoded from (the score tensor, (N, ...)).
        fmt: the format.
        detections: R chosen detections (any images, any order; repeats allowed).

    Returns:
        The seeds: (R, *row shape) float32 and the (R,) image index of each row.

    Raises:
        InputError: no detections, or a detection that does not fit the tensor.
    """
    if not detections:
        raise InputError("no detections to explain; pick at least one")
    values = np.asarray(outputs[fmt.score_tensor], np.float64)
    rows = []
    for det in detections:
        if not 0 <= det.image < len(values):
            raise InputError(f"detection of image {det.image} but the batch has "
                             f"{len(values)} images")
        raw = values[det.image] if fmt.kind == "yolov5" else None
        rows.append(_seed_row(raw, fmt, det, tuple(values.shape[1:])))
    index = np.asarray([d.image for d in detections], np.int64)
    return DetectionSeed(fmt.score_tensor, np.stack(rows), index)


def detection_scores(outputs: Mapping[str, NDArray[np.generic]], fmt: DetectionFormat,
                     detections: Sequence[Detection]) -> NDArray[np.float64]:
    """Score row ``b`` of (perturbed) outputs at detection ``b``'s anchor and class.

    The anchor and class stay those of the unperturbed detection (no re-matching of boxes),
    so this is the score ``detection_seed`` differentiates.

    Args:
        outputs: (B, ...) outputs, B = len(detections).
        fmt: the format.
        detections: B detections; ``image`` is ignored (row b is scored with detection b).

    Returns:
        (B,) float64 scores.
    """
    values = np.asarray(outputs[fmt.score_tensor], np.float64)
    if len(values) != len(detections):
        raise InputError(f"{len(values)} output rows for {len(detections)} detections; row b "
                         "is scored with detection b")
    out = np.empty(len(detections), np.float64)
    for b, det in enumerate(detections):
        if fmt.kind == "yolov5":
            out[b] = values[b, det.anchor, 4] * values[b, det.anchor, 5 + det.cls]
        else:  # one element: where the one-hot seed is 1
            seed = _seed_row(None, fmt, det, tuple(values.shape[1:]))
            out[b] = float(values[b][seed == 1].sum())
    return out
