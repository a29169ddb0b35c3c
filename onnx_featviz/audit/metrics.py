"""Pure-numpy layer statistics: merging per-batch channel statistics (more in the audit issue)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError
from onnx_featviz.structs import ChannelStats


def batch_channel_stats(reduced: Mapping[str, NDArray[np.generic]]) -> ChannelStats:
    """Build ``ChannelStats`` for one batch from the per-sample reductions of one tensor.

    The per-sample sums are added in float64; mean = K + S1 / n and the variance
    (S2 - S1^2 / n) / n come from sums of the values shifted by K, a value of the channel, so
    a large mean with a small spread loses no precision to cancellation.

    Args:
        reduced: stat name -> array, as ``reductions.append_channel_stats`` outputs them:
            ``shift`` (1, C, 1...), ``sum``, ``sumsq``, ``min``, ``max``, ``zeros`` (N, C),
            ``count`` (scalar, N * C * positions); optional ``nonfinite``, ``at_low``,
            ``at_high`` counts (N, C).

    Returns:
        Statistics over the N samples (``count`` = N * positions values per channel).
    """
    sums = np.asarray(reduced["sum"], np.float64)
    channels = sums.shape[1]
    n = int(np.asarray(reduced["count"]).reshape(())) // max(channels, 1)
    s1 = sums.sum(axis=0)
    s2 = np.asarray(reduced["sumsq"], np.float64).sum(axis=0)
    shift = np.asarray(reduced["shift"], np.float64).reshape(channels)
    per = float(n) if n else math.nan  # divide (not multiply by 1/n): 0 and 1 stay exact

    def total(name: str) -> NDArray[np.float64] | None:
        value = reduced.get(name)
        return None if value is None else np.asarray(value, np.float64).sum(axis=0)

    nonfinite = total("nonfinite")
    at_low, at_high = total("at_low"), total("at_high")
    return ChannelStats(
        count=n,
        mean=shift + s1 / per,
        var=np.maximum((s2 - s1 * s1 / per) / per, 0.0),
        min=np.asarray(reduced["min"], np.float64).min(axis=0),
        max=np.asarray(reduced["max"], np.float64).max(axis=0),
        zeros=np.asarray(total("zeros")) / per,
        nonfinite=(np.zeros(channels, np.int64) if nonfinite is None
                   else np.rint(nonfinite).astype(np.int64)),
        at_low=None if at_low is None else at_low / per,
        at_high=None if at_high is None else at_high / per,
    )


def merge_channel_stats(a: ChannelStats, b: ChannelStats) -> ChannelStats:
    """Merge two disjoint sets' statistics (Chan et al. parallel variance, stable for any sizes).

    Returns:
        Statistics of the union, equal to computing them over all values at once.
    """
    n = a.count + b.count
    if n == 0:
        return a
    wa, wb = a.count / n, b.count / n
    delta = b.mean - a.mean

    def weighted(x: NDArray[np.float64] | None, y: NDArray[np.float64] | None
                 ) -> NDArray[np.float64] | None:
        # counts re-formed then divided once: a fraction of exactly 0 or 1 stays exact
        return None if x is None or y is None else (x * a.count + y * b.count) / n

    return ChannelStats(
        count=n,
        mean=a.mean + delta * wb,
        var=a.var * wa + b.var * wb + delta * delta * wa * wb,
        min=np.minimum(a.min, b.min),
        max=np.maximum(a.max, b.max),
        zeros=(a.zeros * a.count + b.zeros * b.count) / n,
        nonfinite=a.nonfinite + b.nonfinite,
        at_low=weighted(a.at_low, b.at_low),
        at_high=weighted(a.at_high, b.at_high),
    )


# == compare: layer drift between two runs (owner: compare) =====================================
#: Default (min cosine, min SNR dB) per comparison class; see ``default_thresholds``.
DRIFT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "fp32": (0.9999, 40.0),
    "fp16": (0.999, 30.0),
    "bf16": (0.995, 20.0),
    "int8": (0.98, 15.0),
}
_LOSS_ORDER = ("fp32", "fp16", "bf16", "int8")
#: Elements converted to float64 at a time. 64 KiB temporaries stay below malloc's mmap
#: threshold (128 KiB), so they are reused instead of page-faulted in: about 9x faster than
#: converting a whole batch, and the extra memory is bounded.
_CHUNK = 1 << 13


@dataclass(frozen=True, slots=True)
class DriftSums:
    """Running float64 sums of one tensor pair (A reference, B compared) over the inputs so far.

    Constant size whatever the number of inputs. Over the elements where both values are finite:
    ``dot`` = sum a*b, ``sq_a`` = sum a^2, ``sq_b`` = sum b^2, ``sq_err`` = sum (a - b)^2,
    ``max_abs`` = max |a - b|. ``count``: elements seen; ``finite``: elements summed;
    ``nonfinite``: elements where a or b is NaN/Inf and they differ (the same NaN/Inf in both
    is not a difference).
    """

    count: int = 0
    finite: int = 0
    nonfinite: int = 0
    dot: float = 0.0
    sq_a: float = 0.0
    sq_b: float = 0.0
    sq_err: float = 0.0
    max_abs: float = 0.0


@dataclass(frozen=True, slots=True)
class Drift:
    """How far B's tensor is from A's over all inputs (definitions in ``drift_metrics``)."""

    cosine: float
    snr_db: float
    max_abs: float
    rel_l2: float
    count: int
    nonfinite: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A tensor pair passes when cosine >= ``min_cosine`` and SNR >= ``min_snr_db``.

    ``kind`` is the comparison class the defaults came from (``"fp32"``, ``"fp16"``,
    ``"bf16"``, ``"int8"``), with ``"+custom"`` appended when the caller overrode a value.
    """

    min_cosine: float
    min_snr_db: float
    kind: str


def add_drift(sums: DriftSums, a: NDArray[np.generic], b: NDArray[np.generic]) -> DriftSums:
    """Return ``sums`` plus one batch of a tensor pair (float64 accumulation).

    Args:
        sums: the running sums (``DriftSums()`` to start).
        a: reference values, any shape and real dtype (e.g. (N, C, H, W) float32).
        b: compared values of the same shape (float16 / dequantized int8 cast beforehand).

    Returns:
        New sums; the arrays are not kept.

    Raises:
        InputError: ``a`` and ``b`` have different shapes.
    """
    if a.shape != b.shape:
        raise InputError(f"tensor shapes differ: A {a.shape} vs B {b.shape}; the paired tensors "
                         "must hold the same values in the same layout")
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, _CHUNK):
        sums = _add_chunk(sums, flat_a[start:start + _CHUNK], flat_b[start:start + _CHUNK])
    return sums


def _add_chunk(sums: DriftSums, a: NDArray[np.generic], b: NDArray[np.generic]) -> DriftSums:
    """``add_drift`` on 1-D slices short enough that their float64 copies stay small."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    bad = 0
    if not finite.all():
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        bad = int(np.count_nonzero(~finite & ~same))
        x, y = x[finite], y[finite]
    diff = x - y
    return DriftSums(
        count=sums.count + finite.size,
        finite=sums.finite + x.size,
        nonfinite=sums.nonfinite + bad,
        dot=sums.dot + float(x @ y),
        sq_a=sums.sq_a + float(x @ x),
        sq_b=sums.sq_b + float(y @ y),
        sq_err=sums.sq_err + float(diff @ diff),
        max_abs=max(sums.max_abs, float(np.abs(diff).max(initial=0.0))),
    )


def merge_drift(a: DriftSums, b: DriftSums) -> DriftSums:
    """Return the sums over two disjoint sets of inputs (``a`` first: the order is fixed)."""
    return DriftSums(count=a.count + b.count, finite=a.finite + b.finite,
                     nonfinite=a.nonfinite + b.nonfinite, dot=a.dot + b.dot,
                     sq_a=a.sq_a + b.sq_a, sq_b=a.sq_b + b.sq_b, sq_err=a.sq_err + b.sq_err,
                     max_abs=max(a.max_abs, b.max_abs))


def drift_metrics(sums: DriftSums) -> Drift:
    """Return the drift metrics of accumulated sums.

    Each metric is taken over every element of every input at once (not averaged per input):

    - cosine = sum(a*b) / sqrt(sum(a^2) * sum(b^2)); 1.0 when both are all zero, 0.0 when only
      one is.
    - snr_db (SNR, or SQNR for a quantized B) = 10 * log10(sum(a^2) / sum((a - b)^2)); +inf when
      B equals A exactly, -inf when A is all zero but B is not.
    - max_abs = max |a - b|.
    - rel_l2 = sqrt(sum((a - b)^2) / sum(a^2)) = 10 ** (-snr_db / 20); 0.0 when B equals A,
      +inf when A is all zero but B is not.

    All four are NaN when no finite element pair was seen.
    """
    if sums.finite == 0:
        nan = math.nan
        return Drift(nan, nan, nan, nan, sums.count, sums.nonfinite)
    norm = math.sqrt(sums.sq_a * sums.sq_b)
    if norm > 0:
        cosine = min(1.0, max(-1.0, sums.dot / norm))
    else:
        cosine = 1.0 if sums.sq_a == sums.sq_b == 0 else 0.0
    if sums.sq_err == 0:
        snr, rel = math.inf, 0.0
    elif sums.sq_a == 0:
        snr, rel = -math.inf, math.inf
    else:
        snr = 10.0 * math.log10(sums.sq_a / sums.sq_err)
        rel = math.sqrt(sums.sq_err / sums.sq_a)
    return Drift(cosine, snr, sums.max_abs, rel, sums.count, sums.nonfinite)


def default_thresholds(precision_a: str, precision_b: str) -> Thresholds:
    """Return the default thresholds for comparing models of two precisions.

    The lossier precision decides (int8 > bf16 > fp16 > fp32). One strict tolerance would fail
    every healthy fp16 model, so each class gets its own:

    ========  ==========  =======  ==========================================================
    class     min cosine  min SNR  why
    ========  ==========  =======  ==========================================================
    ``fp32``  0.9999      40 dB    same precision: another provider (CUDA, TF32 convs) or
                                   exporter; only summation order differs (CPU vs CPU: inf)
    ``fp16``  0.999       30 dB    11-bit mantissa: about 66 dB per op, 40-75 dB after many
                                   layers (the MNIST CNN: about 72 dB)
    ``bf16``  0.995       20 dB    8-bit mantissa
    ``int8``  0.98        15 dB    8-bit activations: 25-45 dB per layer when well calibrated
                                   (the MNIST CNN: about 40 dB); 15 dB is an error of 18 %
    ========  ==========  =======  ==========================================================

    A real fault (a wrong weight, a broken op) typically lands below 10 dB.

    Args:
        precision_a: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        precision_b: likewise.

    Raises:
        InputError: an unknown precision.
    """
    for precision in (precision_a, precision_b):
        if precision not in DRIFT_THRESHOLDS:
            raise InputError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(_LOSS_ORDER)}")
    kind = max(precision_a, precision_b, key=_LOSS_ORDER.index)
    cosine, snr = DRIFT_THRESHOLDS[kind]
    return Thresholds(cosine, snr, kind)


def check_drift(drift: Drift, thresholds: Thresholds) -> str | None:
    """Return why ``drift`` breaks ``thresholds`` (None when it passes).

    Differing NaN/Inf values and NaN metrics always break.
    """
    if drift.nonfinite:
        return f"{drift.nonfinite} values are NaN/Inf in one model only"
    if drift.count == 0 or math.isnan(drift.cosine):
        return "no values were compared"
    reasons = []
    if not drift.cosine >= thresholds.min_cosine:
        reasons.append(f"cosine {drift.cosine:.6f} < {thresholds.min_cosine:g}")
    if not drift.snr_db >= thresholds.min_snr_db:
        reasons.append(f"SNR {drift.snr_db:.2f} dB < {thresholds.min_snr_db:g} dB")
    return "; ".join(reasons) or None


def first_divergent(drifts: Sequence[Drift], thresholds: Thresholds) -> int | None:
    """Return the index of the first drift (in graph order) that breaks ``thresholds``."""
    return next((i for i, d in enumerate(drifts) if check_drift(d, thresholds) is not None),
                None)


@dataclass(frozen=True, slots=True)
class AgreementSums:
    """Running sums for a classifier output: inputs seen, top-1 agreements, |delta prob|."""

    count: int = 0
    agree: int = 0
    dprob_sum: float = 0.0
    dprob_max: float = 0.0


@dataclass(frozen=True, slots=True)
class Agreement:
    """How often B predicts A's class, and how much the probability of A's class moves.

    ``top1_agreement`` in [0, 1]: fraction of inputs whose top-1 class is the same;
    ``mean_abs_dprob``/``max_abs_dprob``: mean / max over inputs of |p_A(c) - p_B(c)| with c
    A's top-1 class (probabilities in [0, 1]); NaN without inputs.
    """

    top1_agreement: float
    mean_abs_dprob: float
    max_abs_dprob: float
    count: int


def add_agreement(sums: AgreementSums, a: NDArray[np.generic],
                  b: NDArray[np.generic]) -> AgreementSums:
    """Return ``sums`` plus one batch of classifier scores.

    Args:
        sums: the running sums (``AgreementSums()`` to start).
        a: (N, K) scores of A: logits, or probabilities (rows >= 0 summing to 1).
        b: (N, K) scores of B. Softmax is applied to both unless both are probabilities.
            A row with NaN/Inf never agrees, and its probability change counts as 1.

    Raises:
        InputError: the shapes differ or are not (N, K).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"classifier scores must be two (N, K) arrays of one shape; got A "
                         f"{a.shape}, B {b.shape}")
    pa, pb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (_are_probabilities(pa) and _are_probabilities(pb)):
        pa, pb = _softmax(pa), _softmax(pb)
    rows = np.arange(len(pa))
    valid = np.isfinite(pa).all(axis=1) & np.isfinite(pb).all(axis=1)
    top_a = np.argmax(np.nan_to_num(pa), axis=1)
    agree = valid & (top_a == np.argmax(np.nan_to_num(pb), axis=1))
    delta = np.abs(pa[rows, top_a] - pb[rows, top_a])
    delta[~np.isfinite(delta)] = 1.0
    return AgreementSums(
        count=sums.count + len(pa),
        agree=sums.agree + int(np.count_nonzero(agree)),
        dprob_sum=sums.dprob_sum + float(delta.sum()),
        dprob_max=max(sums.dprob_max, float(delta.max(initial=0.0))),
    )


def merge_agreement(a: AgreementSums, b: AgreementSums) -> AgreementSums:
    """Return the sums over two disjoint sets of inputs (``a`` first: the order is fixed)."""
    return AgreementSums(count=a.count + b.count, agree=a.agree + b.agree,
                         dprob_sum=a.dprob_sum + b.dprob_sum,
                         dprob_max=max(a.dprob_max, b.dprob_max))


def agreement_metrics(sums: AgreementSums) -> Agreement:
    """Return top-1 agreement and |delta prob| of accumulated sums (see ``Agreement``)."""
    if sums.count == 0:
        return Agreement(math.nan, math.nan, math.nan, 0)
    return Agreement(sums.agree / sums.count, sums.dprob_sum / sums.count, sums.dprob_max,
                     sums.count)


def _are_probabilities(scores: NDArray[np.float64]) -> bool:
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-2))


def _softmax(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = np.exp(scores - np.max(scores, axis=1, keepdims=True))
    out: NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return out


# == stats: findings over dataset statistics (owner: stats helper) ============================
#: Activations after which a channel that is never positive is dead (ReLU-like gates).
RELU_FAMILY = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu",
                         "Clip", "HardSwish", "Gelu"})
#: Default share of values at a Clip bound from which a channel counts as saturated.
SATURATION_FRACTION = 0.5


def dead_channels(stats: ChannelStats, op_type: str | None) -> tuple[int, ...]:
    """Return the channels never positive after a ReLU-family activation (max <= 0).

    Args:
        stats: statistics of the activation's output over the dataset.
        op_type: the op that made the tensor (``RELU_FAMILY`` members are checked; any other
            op, or None, gives no dead channels, since a pre-activation may well be <= 0).
    """
    if op_type not in RELU_FAMILY or stats.count == 0:
        return ()
    with np.errstate(invalid="ignore"):
        dead = stats.max <= 0.0  # NaN max (a channel holding NaN) is not dead, it is non-finite
    return tuple(int(c) for c in np.flatnonzero(dead))


def saturated_channels(stats: ChannelStats, *, low: float | None, high: float | None,
                       fraction: float = SATURATION_FRACTION) -> tuple[int, ...]:
    """Return the channels at a Clip bound for more than ``fraction`` of their values.

    A lower bound of 0 (ReLU6 and the like) is not checked: a channel resting at 0 is an
    inactive ReLU channel (``zeros``; ``dead`` when it never leaves 0), not a saturated one.

    Args:
        stats: statistics with ``at_low`` / ``at_high`` (fractions at the bounds).
        low, high: the Clip's constant bounds (None: no such bound).
        fraction: share of values, in (0, 1].

    Raises:
        InputError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"saturation fraction must be in (0, 1], got {fraction}")
    hit = np.zeros(len(stats.mean), bool)
    if high is not None and stats.at_high is not None:
        hit |= stats.at_high > fraction
    if low is not None and low != 0.0 and stats.at_low is not None:
        hit |= stats.at_low > fraction
    return tuple(int(c) for c in np.flatnonzero(hit))


def first_nonfinite(layers: Sequence[tuple[str, ChannelStats]]) -> str | None:
    """Return the first tensor (in the order given: graph order) holding NaN/Inf, or None."""
    return next((name for name, stats in layers if int(stats.nonfinite.sum()) > 0), None)
# == end of stats =============================================================================
