"""Tests for the compare metrics of ``audit``: streaming sums vs numpy on all data at once,
edge cases (equal, zero, NaN), precision-aware thresholds, output agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_featviz.audit import metrics as audit
from onnx_featviz.errors import InputError


def numpy_drift(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Reference: the documented definitions on the flattened arrays, in float64."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    err = x - y
    return {
        "cosine": float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))),
        "snr_db": float(10 * np.log10(np.sum(x**2) / np.sum(err**2))),
        "max_abs": float(np.max(np.abs(err))),
        "rel_l2": float(np.linalg.norm(err) / np.linalg.norm(x)),
    }


def streamed(a: np.ndarray, b: np.ndarray, step: int) -> audit.Drift:
    sums = audit.DriftSums()
    for start in range(0, len(a), step):
        sums = audit.add_drift(sums, a[start:start + step], b[start:start + step])
    return audit.drift_metrics(sums)


def test_hand_checked_values() -> None:
    a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 4.0]])
    drift = audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, b))
    # sum ab = 17, sum a^2 = 14, sum b^2 = 21, sum err^2 = 1
    assert drift.cosine == pytest.approx(17 / math.sqrt(14 * 21), abs=1e-15)
    assert drift.snr_db == pytest.approx(10 * math.log10(14), abs=1e-12)
    assert drift.max_abs == 1.0
    assert drift.rel_l2 == pytest.approx(math.sqrt(1 / 14), abs=1e-15)
    assert (drift.count, drift.nonfinite) == (3, 0)


@pytest.mark.parametrize("step", [1, 7, 64])
def test_streamed_sums_equal_numpy_on_all_data(step: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 4, 5, 5)).astype(np.float32)
    b = (a + 0.01 * rng.standard_normal(a.shape)).astype(np.float16).astype(np.float32)
    drift, ref = streamed(a, b, step), numpy_drift(a, b)
    assert drift.cosine == pytest.approx(ref["cosine"], rel=1e-12)
    assert drift.snr_db == pytest.approx(ref["snr_db"], rel=1e-10)
    assert drift.max_abs == pytest.approx(ref["max_abs"], rel=1e-12)
    assert drift.rel_l2 == pytest.approx(ref["rel_l2"], rel=1e-10)
    assert drift.rel_l2 == pytest.approx(10 ** (-drift.snr_db / 20), rel=1e-10)
    assert drift.count == a.size


def test_tensors_longer_than_one_float64_slice() -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 100_000)).astype(np.float32)  # 300 000 values: several slices
    b = a + np.float32(0.001) * rng.standard_normal(a.shape).astype(np.float32)
    b[2, 99_999] = np.nan
    drift = audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, b))
    ref = numpy_drift(a.ravel()[:-1], b.ravel()[:-1])
    assert (drift.count, drift.nonfinite) == (a.size, 1)
    assert drift.snr_db == pytest.approx(ref["snr_db"], rel=1e-12)
    assert drift.cosine == pytest.approx(ref["cosine"], rel=1e-14)
    assert drift.max_abs == ref["max_abs"]


def test_sums_are_constant_size_float64() -> None:
    sums = audit.add_drift(audit.DriftSums(), np.ones((3, 2), np.float16),
                           np.ones((3, 2), np.float16))
    assert all(isinstance(v, float) for v in (sums.dot, sums.sq_a, sums.sq_b, sums.sq_err))
    # float16 values whose squares overflow float16 are summed in float64
    big = np.full((4,), 60000.0, np.float16)
    sums = audit.add_drift(audit.DriftSums(), big, big)
    assert sums.sq_a == pytest.approx(4 * 60000.0**2)


def test_equal_tensors_give_infinite_snr() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    drift = audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, a.copy()))
    assert drift.snr_db == math.inf
    assert (drift.cosine, drift.max_abs, drift.rel_l2) == (1.0, 0.0, 0.0)
    assert audit.check_drift(drift, audit.default_thresholds("fp32", "fp32")) is None


def test_zero_tensors() -> None:
    zeros, ones = np.zeros((2, 3)), np.ones((2, 3))
    both = audit.drift_metrics(audit.add_drift(audit.DriftSums(), zeros, zeros))
    assert (both.cosine, both.snr_db, both.rel_l2) == (1.0, math.inf, 0.0)
    only_b = audit.drift_metrics(audit.add_drift(audit.DriftSums(), zeros, ones))
    assert (only_b.cosine, only_b.snr_db, only_b.rel_l2) == (0.0, -math.inf, math.inf)
    assert audit.check_drift(only_b, audit.default_thresholds("fp32", "fp32")) is not None
    empty = audit.drift_metrics(audit.DriftSums())
    assert math.isnan(empty.cosine) and math.isnan(empty.snr_db)
    assert audit.check_drift(empty, audit.default_thresholds("fp32", "fp32")) == (
        "no values were compared")


def test_nonfinite_values() -> None:
    a = np.array([1.0, np.nan, 3.0, np.inf, 5.0])
    same = audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, a.copy()))
    assert same.nonfinite == 0 and same.snr_db == math.inf  # the same NaN/Inf in both
    b = np.array([1.0, np.nan, np.nan, np.inf, 5.0])
    drift = audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, b))
    assert drift.nonfinite == 1 and drift.count == 5
    assert drift.snr_db == math.inf  # over the finite pairs (1, 1), (5, 5)
    reason = audit.check_drift(drift, audit.default_thresholds("fp16", "fp32"))
    assert reason == "1 values are NaN/Inf in one model only"


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"shapes differ: A \(2, 3\) vs B \(3, 2\)"):
        audit.add_drift(audit.DriftSums(), np.zeros((2, 3)), np.zeros((3, 2)))


def test_default_thresholds_per_precision() -> None:
    assert audit.default_thresholds("fp32", "fp32") == audit.Thresholds(0.9999, 40.0, "fp32")
    assert audit.default_thresholds("fp32", "fp16") == audit.Thresholds(0.999, 30.0, "fp16")
    assert audit.default_thresholds("int8", "fp16").kind == "int8"
    assert audit.default_thresholds("bf16", "fp32").kind == "bf16"
    with pytest.raises(InputError, match="unknown precision 'fp8'; choose one of fp32"):
        audit.default_thresholds("fp8", "fp32")


def drift_with_snr(snr_db: float) -> audit.Drift:
    """Noise at a given SNR added to a signal (cosine follows)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(100_000)
    noise = rng.standard_normal(a.size)
    noise *= np.linalg.norm(a) / np.linalg.norm(noise) * 10 ** (-snr_db / 20)
    return audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, a + noise))


def test_thresholds_pass_fp16_drift_and_fail_a_fault() -> None:
    fp16 = audit.default_thresholds("fp32", "fp16")
    int8 = audit.default_thresholds("fp32", "int8")
    assert audit.check_drift(drift_with_snr(45.0), fp16) is None  # deep-net fp16 drift
    assert audit.check_drift(drift_with_snr(20.0), int8) is None  # coarse int8
    fault = drift_with_snr(8.0)
    for thresholds in (fp16, int8, audit.default_thresholds("fp32", "fp32")):
        assert audit.check_drift(fault, thresholds) is not None
    reason = audit.check_drift(drift_with_snr(25.0), fp16)
    assert reason is not None and "SNR 25.00 dB < 30 dB" in reason
    # a strict tolerance like atol = rtol = 1e-5 would fail real fp16 rounding:
    a = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    half = a.astype(np.float16).astype(np.float32)
    assert not np.allclose(a, half, atol=1e-5, rtol=1e-5)
    assert audit.check_drift(
        audit.drift_metrics(audit.add_drift(audit.DriftSums(), a, half)), fp16) is None


def test_first_divergent_index() -> None:
    thresholds = audit.default_thresholds("fp32", "fp16")
    drifts = [drift_with_snr(60.0), drift_with_snr(50.0), drift_with_snr(10.0),
              drift_with_snr(60.0), drift_with_snr(5.0)]
    assert audit.first_divergent(drifts, thresholds) == 2
    assert audit.first_divergent(drifts[:2], thresholds) is None


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_agreement_on_logits_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 10)) * 3
    b = a + rng.standard_normal(a.shape) * 0.8
    sums = audit.AgreementSums()
    for start in range(0, 50, 16):
        sums = audit.add_agreement(sums, a[start:start + 16], b[start:start + 16])
    got = audit.agreement_metrics(sums)
    pa, pb = numpy_softmax(a), numpy_softmax(b)
    top = pa.argmax(axis=1)
    delta = np.abs(pa[np.arange(50), top] - pb[np.arange(50), top])
    assert got.top1_agreement == pytest.approx(np.mean(top == pb.argmax(axis=1)))
    assert 0 < got.top1_agreement < 1
    assert got.mean_abs_dprob == pytest.approx(delta.mean(), rel=1e-12)
    assert got.max_abs_dprob == pytest.approx(delta.max(), rel=1e-12)
    assert got.count == 50


def test_agreement_on_probabilities_is_not_softmaxed() -> None:
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4]])
    got = audit.agreement_metrics(audit.add_agreement(audit.AgreementSums(), a, b))
    assert got.top1_agreement == 0.5
    assert got.mean_abs_dprob == pytest.approx((0.1 + 0.4) / 2)
    assert got.max_abs_dprob == pytest.approx(0.4)


def test_agreement_nan_counts_as_full_change_and_bad_shapes() -> None:
    a = np.array([[2.0, 1.0], [0.0, 3.0]])
    b = np.array([[np.nan, np.nan], [0.0, 3.0]])
    got = audit.agreement_metrics(audit.add_agreement(audit.AgreementSums(), a, b))
    assert got.max_abs_dprob == 1.0 and got.top1_agreement == 0.5
    assert math.isnan(audit.agreement_metrics(audit.AgreementSums()).top1_agreement)
    with pytest.raises(InputError, match=r"\(N, K\)"):
        audit.add_agreement(audit.AgreementSums(), np.zeros((2, 3, 1)), np.zeros((2, 3, 1)))
