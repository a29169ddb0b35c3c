"""Pure-numpy layer statistics: merging per-batch channel statistics (more in the audit issue)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.structs import ChannelStats


def batch_channel_stats(reduced: Mapping[str, NDArray[np.generic]], count: int) -> ChannelStats:
    """Build ``ChannelStats`` for one batch from the on-device reductions of one tensor.

    Args:
        reduced: stat name (``mean``, ``var``, ``min``, ``max``, ``zeros``, ``nonfinite``) ->
            (C,) array, as appended by ``rewrite.append_channel_stats``.
        count: number of values per channel in the batch (N * H * W).
    """
    return ChannelStats(
        count=count,
        mean=np.asarray(reduced["mean"], np.float64),
        var=np.maximum(np.asarray(reduced["var"], np.float64), 0.0),
        min=np.asarray(reduced["min"], np.float64),
        max=np.asarray(reduced["max"], np.float64),
        zeros=np.asarray(reduced["zeros"], np.float64),
        nonfinite=np.rint(np.asarray(reduced["nonfinite"], np.float64)).astype(np.int64),
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
    return ChannelStats(
        count=n,
        mean=a.mean + delta * wb,
        var=a.var * wa + b.var * wb + delta * delta * wa * wb,
        min=np.minimum(a.min, b.min),
        max=np.maximum(a.max, b.max),
        zeros=a.zeros * wa + b.zeros * wb,
        nonfinite=a.nonfinite + b.nonfinite,
    )
