"""Detect whether onnxruntime's CUDA provider really runs (not only whether it is listed)."""

from __future__ import annotations

import functools


@functools.cache
def cuda_available() -> bool:
    """Return True when a session created with CUDA keeps the CUDA provider."""
    from onnx_featviz.runtime import cuda_runs

    return cuda_runs()
