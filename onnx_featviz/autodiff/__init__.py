"""Reverse-mode differentiation of ONNX models as a graph transform (no onnxruntime here).

``differentiate(model, of, wrt)`` returns a :class:`GradModel` whose model also outputs
``seed^T . d(of)/d(wrt)``; :data:`RULES` maps each supported op type to its vector-Jacobian rule.
"""

from __future__ import annotations

from onnx_featviz.autodiff.graph import GradModel, differentiate, grad_name, seed_top1
from onnx_featviz.autodiff.rules import LIMITS, RULES

__all__ = ["GradModel", "LIMITS", "RULES", "differentiate", "grad_name", "seed_top1"]
