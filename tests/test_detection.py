"""Tests for attribution.detection: formats, decoding + NMS and seeds vs torch and hand maths."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_featviz.attribution import detection as det
from onnx_featviz.errors import InputError, ModelError

torch = pytest.importorskip("torch")
targets_models = pytest.importorskip("tests.targets_models")

SIZE = 64
CONF, IOU = 0.25, 0.45
KINDS = {"yolov8": "yolov8", "yolov5": "yolov5", "boxes": "boxes-scores"}


# --------------------------------------------------------------------------- torch reference


def _torch_scores(kind: str, outs: tuple[Any, ...]) -> tuple[Any, Any]:
    """Decode in torch: (N, A, 4) xyxy boxes and (N, A, K) final class scores."""
    if kind == "boxes":
        return outs[0], outs[1]
    raw = outs[0].transpose(1, 2) if kind == "yolov8" else outs[0]
    xy, wh = raw[..., :2], raw[..., 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    cls = raw[..., 4:] if kind == "yolov8" else raw[..., 5:] * raw[..., 4:5]
    return boxes, cls


def _torch_nms(boxes: Any, scores: Any, labels: Any, iou: float) -> list[int]:
    """Greedy NMS: repeatedly keep the best remaining box, drop same-class boxes with IoU > iou."""
    remaining = torch.argsort(scores, descending=True, stable=True)
    keep: list[int] = []
    while len(remaining):
        best, remaining = remaining[0], remaining[1:]
        keep.append(int(best))
        b, r = boxes[best], boxes[remaining]
        wh = (torch.minimum(b[2:], r[:, 2:]) - torch.maximum(b[:2], r[:, :2])).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        union = (b[2] - b[0]) * (b[3] - b[1]) + (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1]) - inter
        drop = (inter / union > iou) & (labels[remaining] == labels[best])
        remaining = remaining[~drop]
    return keep


def _torch_decode(kind: str, outs: tuple[Any, ...]) -> list[list[tuple[int, int, float, Any]]]:
    """Per image: (anchor, class, score, box) best first, as ultralytics decodes raw heads."""
    boxes, cls = _torch_scores(kind, outs)
    score, label = cls.max(-1)
    result = []
    for n in range(len(score)):
        cand = torch.nonzero(score[n] > CONF).flatten()
        kept = cand[_torch_nms(boxes[n, cand], score[n, cand], label[n, cand], IOU)]
        result.append([(int(a), int(label[n, a]), float(score[n, a]), boxes[n, a].numpy())
                       for a in kept])
    return result


# --------------------------------------------------------------------------- exported models


@pytest.fixture(scope="module", params=[(k, d) for k in KINDS for d in (False, True)],
                ids=lambda p: f"{p[0]}-{'dynamo' if p[1] else 'torchscript'}")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """A seeded model, its ONNX export, a batch of 3 and the torch / onnxruntime outputs."""
    name, dynamo = request.param
    model, path = targets_models.build_and_export(name, tmp_path_factory.mktemp(name),
                                                  dynamo=dynamo)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE))
                         .astype(np.float32))
    with torch.no_grad():
        ref = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"input": x.numpy()})
    return {"name": name, "model": model, "path": path, "x": x,
            "torch": ref if isinstance(ref, tuple) else (ref,),
            # concrete shapes: the TorchScript export leaves the yolov8 channel axis symbolic
            "shapes": {n: v.shape for n, v in zip(names, values, strict=True)},
            "outputs": dict(zip(names, values, strict=True))}


def test_format_read_from_exported_outputs(exported: dict[str, Any]) -> None:
    fmt = det.detect_format(exported["shapes"])
    assert fmt.kind == KINDS[exported["name"]]
    assert fmt.classes == 3
    assert fmt.tensors == tuple(exported["shapes"])


def test_decoding_matches_torch(exported: dict[str, Any]) -> None:
    fmt = det.detect_format(exported["shapes"])
    got = det.decode_detections(exported["outputs"], fmt, input_size=(SIZE, SIZE))
    want = _torch_decode(exported["name"], exported["torch"])
    assert sum(len(w) for w in want) >= 6, "the seeded model should detect several boxes"
    assert any(len(w) < len(_torch_decode_no_nms(exported)) for w in want[:1])
    for n, (dets, ref) in enumerate(zip(got, want, strict=True)):
        assert [(d.anchor, d.cls) for d in dets] == [(a, c) for a, c, _, _ in ref]
        for d, (_, _, score, box) in zip(dets, ref, strict=True):
            assert d.image == n
            np.testing.assert_allclose(d.score, score, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(d.box, box, atol=1e-3)


def _torch_decode_no_nms(exported: dict[str, Any]) -> Any:
    """Image 0's candidates above the confidence threshold (to check NMS removed some)."""
    _, cls = _torch_scores(exported["name"], exported["torch"])
    return torch.nonzero(cls[0].max(-1).values > CONF)


def _shifted(box: det.Box, by: float) -> det.Box:
    return (box[0] + by, box[1] + by, box[2] + by, box[3] + by)


def _picked(dets: tuple[tuple[det.Detection, ...], ...]) -> list[det.Detection]:
    """Several detections of images 0 and 2 by each rule, image 2 twice (k rows per image)."""
    best2 = dets[2][0]
    return [det.pick_detection(dets[0], index=1), det.pick_detection(dets[2], index=0),
            det.pick_detection(dets[2], cls=dets[2][-1].cls),
            det.pick_detection(dets[0], box=_shifted(dets[0][0].box, 1.0)),
            best2]


def test_seeds_match_torch_autograd_of_the_decoded_score(exported: dict[str, Any]) -> None:
    fmt = det.detect_format(exported["shapes"])
    dets = det.decode_detections(exported["outputs"], fmt, input_size=(SIZE, SIZE))
    picked = _picked(dets)
    seeds = det.detection_seed(exported["outputs"], fmt, picked)
    assert seeds.tensor == fmt.score_tensor
    np.testing.assert_array_equal(seeds.image_index, [d.image for d in picked])
    which = 1 if exported["name"] == "boxes" else 0
    for r, d in enumerate(picked):
        outs = [torch.from_numpy(exported["outputs"][t]).requires_grad_() for t in fmt.tensors]
        _, cls = _torch_scores(exported["name"], tuple(outs))
        cls[d.image, d.anchor].max().backward()
        want = outs[which].grad[d.image].numpy()
        np.testing.assert_allclose(seeds.seed[r], want, rtol=1e-6, atol=1e-7)
        assert np.count_nonzero(want) == (2 if exported["name"] == "yolov5" else 1)


def test_seeded_reverse_pass_equals_torch_input_gradient(exported: dict[str, Any]) -> None:
    """The seed through the project's ONNX reverse mode gives torch's dS/d(input)."""
    from onnx_featviz import autodiff

    fmt = det.detect_format(exported["shapes"])
    dets = det.decode_detections(exported["outputs"], fmt, input_size=(SIZE, SIZE))
    picked = _picked(dets)[:3]
    seeds = det.detection_seed(exported["outputs"], fmt, picked)
    grad = autodiff.differentiate(onnx.load(str(exported["path"])), of=seeds.tensor,
                                  wrt=["input"])
    session = ort.InferenceSession(grad.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rows = exported["x"].numpy()[seeds.image_index]
    got = session.run([grad.gradient("input")], {"input": rows, grad.seed: seeds.seed})[0]
    for r, d in enumerate(picked):
        x = exported["x"][d.image:d.image + 1].clone().requires_grad_()
        out = exported["model"](x)
        _, cls = _torch_scores(exported["name"], out if isinstance(out, tuple) else (out,))
        cls[0, d.anchor].max().backward()
        want = x.grad[0].numpy()
        np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_perturbed_scores_follow_the_fixed_anchor_and_class(exported: dict[str, Any]) -> None:
    fmt = det.detect_format(exported["shapes"])
    dets = det.decode_detections(exported["outputs"], fmt, input_size=(SIZE, SIZE))
    picked = _picked(dets)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(len(picked), 3, SIZE, SIZE)).astype(np.float32))
    with torch.no_grad():
        out = exported["model"](x)
        _, cls = _torch_scores(exported["name"], out if isinstance(out, tuple) else (out,))
    names = list(exported["shapes"])
    outs = dict(zip(names, [t.numpy() for t in (out if isinstance(out, tuple) else (out,))],
                    strict=True))
    got = det.detection_scores(outs, fmt, picked)
    want = [float(cls[b, d.anchor, d.cls]) for b, d in enumerate(picked)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --------------------------------------------------------------------------- formats by shape


@pytest.mark.parametrize(("outputs", "override", "kind", "tensors", "classes"), [
    ({"output0": (1, 84, 8400)}, None, "yolov8", ("output0",), 80),
    ({"output0": ("batch", 84, "anchors")}, None, "yolov8", ("output0",), 80),
    ({"output0": (1, 8400, 84)}, "yolov8-t", "yolov8-t", ("output0",), 80),
    ({"output": (1, 25200, 85)}, None, "yolov5", ("output",), 80),
    ({"output0": (1, 300, 6)}, "end2end", "end2end", ("output0",), 0),
    ({"scores": (1, 3000, 91), "boxes": (1, 3000, 4)}, None, "boxes-scores",
     ("boxes", "scores"), 91),
    ({"num_dets": (1, 1), "det_boxes": (1, 100, 4), "det_scores": (1, 100),
      "det_classes": (1, 100)}, None, "nms", ("det_boxes", "det_scores", "det_classes",
                                              "num_dets"), 0),
    ({"boxes": ("N", 100, 4), "labels": ("N", 100), "scores": ("N", 100)}, None, "nms",
     ("boxes", "scores", "labels"), 0),
])
def test_detect_format_by_shape_and_name(outputs: dict[str, Any], override: str | None,
                                         kind: str, tensors: tuple[str, ...],
                                         classes: int) -> None:
    assert det.detect_format(outputs, override) == det.DetectionFormat(kind, tensors, classes)


def test_detect_format_errors() -> None:
    with pytest.raises(InputError, match=r"'yolov8'"):
        det.detect_format({"o": (1, 84, 8400)}, "yolo8")
    with pytest.raises(ModelError, match="3-D"):
        det.detect_format({"logits": (1, 1000)})
    with pytest.raises(ModelError, match="too few"):
        det.detect_format({"o": (1, 4, 10)}, "yolov8")
    with pytest.raises(ModelError, match="box output"):
        det.detect_format({"a": (1, 10, 3), "b": (1, 10, 5)})


# --------------------------------------------------------------------------- hand-made numbers


def test_nms_by_hand() -> None:
    # 0 and 1 overlap with IoU 81/119 = 0.68 (> 0.45); 2 overlaps 0 with IoU 0 ; 3 = 1's box,
    # another class: kept.
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [1, 1, 11, 11]], float)
    np.testing.assert_allclose(det.box_iou(boxes[:1], boxes[1:2]), [[81 / 119]])
    kept = det.nms(boxes, np.array([0.9, 0.95, 0.5, 0.3]), np.array([0, 0, 0, 1]), 0.45)
    assert kept.tolist() == [1, 2, 3]
    assert det.nms(boxes, np.array([0.9, 0.95, 0.5, 0.3]), np.array([0, 0, 0, 1]),
                   0.7).tolist() == [1, 0, 2, 3]
    assert det.nms(boxes, np.array([0.9, 0.95, 0.5, 0.3]), np.array([0, 0, 0, 1]), 0.45,
                   max_keep=2).tolist() == [1, 2]


def test_yolov5_decoding_and_seed_by_hand() -> None:
    raw = np.zeros((1, 2, 7), np.float32)  # 2 anchors, K = 2
    raw[0, 0] = [10, 10, 4, 6, 0.8, 0.5, 0.25]  # obj 0.8: class scores 0.4 (c0), 0.2 (c1)
    raw[0, 1] = [30, 30, 8, 8, 0.3, 0.9, 0.1]  # 0.27 (c0)
    fmt = det.detect_format({"out": (1, 2, 7)}, "yolov5")  # 2 anchors < 7: needs the name
    (dets,) = det.decode_detections({"out": raw}, fmt, input_size=(40, 40))
    assert [(d.anchor, d.cls) for d in dets] == [(0, 0), (1, 0)]
    assert dets[0].box == (8.0, 7.0, 12.0, 13.0)
    np.testing.assert_allclose([d.score for d in dets], [0.4, 0.27], rtol=1e-6)
    assert dets[0].objectness == pytest.approx(0.8)
    seed = det.detection_seed({"out": raw}, fmt, [dets[0]]).seed
    want = np.zeros((1, 2, 7), np.float32)
    want[0, 0, 4], want[0, 0, 5] = 0.5, 0.8  # d(obj*cls)/d obj = cls; /d cls = obj
    np.testing.assert_allclose(seed, want, rtol=1e-6)


def test_nms_outputs_keep_counted_rows_above_conf_normalized_boxes() -> None:
    outs: dict[str, np.ndarray] = {"num": np.array([[3], [1]], np.int64),
            "boxes": np.tile(np.array([[0.1, 0.2, 0.5, 0.6]], np.float32), (2, 4, 1)),
            "scores": np.array([[0.9, 0.2, 0.6, 0.95], [0.7, 0.8, 0.9, 0.9]], np.float32),
            "classes": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64)}
    fmt = det.detect_format({k: v.shape for k, v in outs.items()})
    assert fmt.tensors == ("boxes", "scores", "classes", "num")
    got = det.decode_detections(outs, fmt, input_size=(100, 200),
                                options=det.DetectionOptions(normalized=True))
    assert [(d.anchor, d.cls) for d in got[0]] == [(0, 1), (2, 3)]  # row 3 is past num=3
    assert [(d.anchor, d.cls) for d in got[1]] == [(0, 5)]
    np.testing.assert_allclose(got[0][0].box, (20, 20, 100, 60), rtol=1e-6)
    seed = det.detection_seed(outs, fmt, [got[0][1], got[1][0]])
    np.testing.assert_array_equal(seed.seed, [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(seed.image_index, [0, 1])


def test_end2end_single_tensor() -> None:
    out = np.array([[[5, 5, 15, 25, 0.8, 2], [0, 0, 1, 1, 0.1, 0]]], np.float32)
    fmt = det.detect_format({"output0": out.shape}, "end2end")
    (dets,) = det.decode_detections({"output0": out}, fmt, input_size=(32, 32))
    assert [(d.box, d.cls, d.anchor) for d in dets] == [((5.0, 5.0, 15.0, 25.0), 2, 0)]
    want = np.zeros((1, 2, 6), np.float32)
    want[0, 0, 4] = 1.0
    np.testing.assert_array_equal(det.detection_seed({"output0": out}, fmt, dets).seed, want)


def test_pick_detection_rules_and_errors() -> None:
    dets = (det.Detection(0, (0, 0, 10, 10), 1, 0.9, 5), det.Detection(0, (20, 20, 40, 40), 2,
            0.8, 7), det.Detection(0, (22, 22, 40, 40), 1, 0.7, 9))
    assert det.pick_detection(dets, index=-1).anchor == 9
    assert det.pick_detection(dets, cls=1).anchor == 5
    assert det.pick_detection(dets, box=(21, 21, 40, 40)).anchor == 7  # IoU 361/400 > 324/361
    with pytest.raises(InputError, match="exactly one"):
        det.pick_detection(dets, index=0, cls=1)
    with pytest.raises(InputError, match=r"classes detected: \[1, 2\]"):
        det.pick_detection(dets, cls=3)
    with pytest.raises(InputError, match="overlaps"):
        det.pick_detection(dets, box=(100, 100, 110, 110))
    with pytest.raises(InputError, match="no detection"):
        det.pick_detection((), index=0)


def test_missing_output_named() -> None:
    fmt = det.DetectionFormat("boxes-scores", ("boxes", "scores"), 3)
    with pytest.raises(InputError, match=r"\['scores'\]"):
        det.decode_detections({"boxes": np.zeros((1, 2, 4))}, fmt, input_size=(8, 8))
