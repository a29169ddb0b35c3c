"""Score-CAM runs one forward row per image and distinct normalised map (issue 16).

The reference runs every (image, channel) masked input through onnxruntime directly, with the
masks built by torch's bilinear interpolation (half-pixel centres), as the definition says.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from onnx_featviz import api
from onnx_featviz.attribution import perturbation
from onnx_featviz.attribution import run as attribution_run
from tests import graphs

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _session() -> ort.InferenceSession:
    return ort.InferenceSession(graphs.small_cnn().SerializeToString(),
                                providers=["CPUExecutionProvider"])


def _maps_with_duplicates() -> np.ndarray:
    """(2, 9, 4, 4) maps: one-hots of several sizes at one cell, copies, x2 scalings, dead maps."""
    rng = np.random.default_rng(0)
    acts = rng.random((2, 9, 4, 4)).astype(np.float32)
    acts[:, 0:3] = 0.0
    acts[0, 0, 1, 2], acts[0, 1, 1, 2], acts[0, 2, 1, 2] = 0.5, 3.0, 7.25  # one pattern
    acts[1, 0, 3, 3], acts[1, 1, 0, 0] = 2.0, 2.0  # two patterns (different cells)
    acts[1, 2] = 0.0  # dead: the shared all-zero row
    acts[0, 4] = acts[0, 3]  # an exact copy
    acts[0, 5] = 2.0 * acts[0, 3]  # a power-of-two scaling: the same normalised bytes
    acts[1, 5] = acts[0, 6]  # the same map in another image: a separate row (its own image)
    return acts


def _reference(acts: np.ndarray, x: np.ndarray, targets: np.ndarray,
               session: ort.InferenceSession) -> np.ndarray:
    """Score-CAM with every (image, channel) row run through onnxruntime."""
    out = []
    for n, target in enumerate(targets):
        up = F.interpolate(torch.from_numpy(acts[n][None]), size=x.shape[2:], mode="bilinear",
                           align_corners=False)[0].numpy()
        lo = up.min(axis=(1, 2), keepdims=True)
        masks = (up - lo) / (up.max(axis=(1, 2), keepdims=True) - lo + 1e-8)
        rows = (x[n][None] * masks[:, None]).astype(np.float32)
        s = np.array([session.run(None, {"x": r[None]})[0][0, target] for r in rows],
                     np.float64)
        w = np.exp(s - s.max())
        out.append(np.maximum(np.einsum("k,khw->hw", w / w.sum(), acts[n]), 0.0))
    return np.stack(out)


def _counting(fn: Callable[..., np.ndarray], rows: list[int]) -> Callable[..., np.ndarray]:
    def call(batch: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        rows.append(len(batch))
        return fn(batch, *rest)
    return call


def test_score_cam_runs_duplicate_normalised_maps_once_with_the_direct_result() -> None:
    acts = _maps_with_duplicates()
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    targets = np.array([2, 7])
    session = _session()
    rows: list[int] = []
    forward = _counting(lambda b: session.run(None, {"x": b})[0], rows)
    got = perturbation.score_cam(acts, x, targets=targets, forward=forward, batch_size=100)
    # image 0: 9 maps - 2 (one-hots join the first) - 2 (copy, x2) = 5; image 1: 9 - 1 dead = 8
    assert rows == [5 + 8, 1], "13 distinct live rows in one call, then the all-zero row"
    np.testing.assert_allclose(got, _reference(acts, x, targets, session), rtol=1e-5, atol=1e-7)


def test_score_cam_device_masked_path_dedupes_with_the_direct_result() -> None:
    """The session-masked path (``masking.mask_input``) gets the same distinct rows."""
    acts = _maps_with_duplicates()
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    targets = np.array([[4, 1], [0, 9]])  # two targets per image: the rows serve both
    rows: list[int] = []
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        masked = _counting(attribution_run._masked_forward_fn(inspector, "logits", x, (4, 4)),
                           rows)
        got = perturbation.score_cam(acts, x, targets=targets, batch_size=4,
                                     forward=attribution_run._forward_fn(inspector, "logits"),
                                     forward_masked=masked)
    assert rows == [4, 4, 4, 1], "13 distinct rows in chunks of 4"
    session = _session()
    want = np.stack([_reference(acts, x, targets[:, t], session) for t in range(2)], axis=1)
    np.testing.assert_allclose(got, want.reshape(4, 4, 4), rtol=1e-5, atol=1e-6)


def test_score_cam_with_every_map_constant_runs_only_the_zero_row() -> None:
    acts = np.zeros((1, 3, 2, 2), np.float32)
    acts[0, 2] = 5.0
    x = np.ones((1, 3, 16, 16), np.float32)
    session = _session()
    rows: list[int] = []
    forward = _counting(lambda b: session.run(None, {"x": b})[0], rows)
    got = perturbation.score_cam(acts, x, targets=np.array([3]), forward=forward)
    assert rows == [1]
    np.testing.assert_allclose(got, _reference(acts, x, np.array([3]), session), rtol=1e-5,
                               atol=1e-7)


def test_score_cam_on_a_fixed_batch_model_splits_rows_over_the_worker_sessions() -> None:
    """A model taking exactly one image per run (Caffe2 zoo style): rows go one per call,
    alternating between the worker sessions, and the scores come back in row order."""
    model = graphs.small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    acts = _maps_with_duplicates()[:1]
    x = np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with api.Inspector(model, "cpu") as inspector:
        masked = attribution_run._masked_forward_fn(inspector, "logits", x, (4, 4))
        got = perturbation.score_cam(acts, x, targets=np.array([5]), batch_size=3,
                                     forward=attribution_run._forward_fn(inspector, "logits"),
                                     forward_masked=masked)
    np.testing.assert_allclose(got, _reference(acts, x, np.array([5]), _session()), rtol=1e-5,
                               atol=1e-6)
