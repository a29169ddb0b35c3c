"""autodiff rules beyond the first set: normalizations, indexing, layout, Einsum, maths,
reductions and Resize (cubic, run-time sizes) against central differences and torch autograd.

Each case is a tiny graph checked with ``check_finite_differences`` (float64 where onnxruntime
has the kernels); inputs sit on the 0.05-offset grid so no step crosses a kink. The torch tests
pin conventions finite differences cannot (ties of Max/Min) and check whole exported modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import helper

from onnx_featviz.autodiff import LIMITS, RULES, differentiate
from onnx_featviz.errors import ModelError
from tests.test_autodiff_rules import (
    Builder,
    Case,
    _i64,
    _sessions,
    check_finite_differences,
    grid,
    nodes_case,
    op_case,
    positive,
    unary,
)

#: Op types this file adds a rule for (the coverage test keeps it in sync with RULES).
NEW_OPS = (
    "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "MeanVarianceNormalization", "LRN", "GatherND", "GatherElements", "ScatterND",
    "ScatterElements", "TopK", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Trilu",
    "CumSum", "Einsum", "Mish", "Softsign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos", "Sinh",
    "Cosh", "Celu", "ThresholdedRelu", "Shrink", "CastLike", "Hardmax", "Max", "Min", "Mean",
    "Where", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceLogSum",
    "ReduceMin", "ReduceProd",
)


def at_ir10(builder: Builder) -> Builder:
    """The case with IR version 10 (opset 21 needs it)."""
    def build(dt: Any) -> Case:
        model, feeds, wrt = builder(dt)
        model.ir_version = 10
        return model, feeds, wrt
    return build


def symbolic(builder: Builder, dims: dict[int, str], name: str = "x") -> Builder:
    """The case with input ``name``'s axes ``dims`` made symbolic (dim_param)."""
    def build(dt: Any) -> Case:
        model, feeds, wrt = builder(dt)
        vi = next(v for v in model.graph.input if v.name == name)
        for axis, param in dims.items():
            vi.type.tensor_type.shape.dim[axis].dim_param = param
        return model, feeds, wrt
    return build


def float32(builder: Builder) -> Builder:
    """The case in float32 only (onnxruntime's float64 kernel computes in float32)."""
    return lambda dt: builder(np.float32)


def _f(*values: float) -> NDArray[np.float64]:
    return np.asarray(values, np.float64)


X4 = grid((2, 4, 3, 3))
_RESIZE_SCALES = {"r": np.zeros(0), "sc": _f(1.0, 1.0, 2.0, 2.0)}
CASES_MORE: dict[str, Builder] = {
    "InstanceNormalization": op_case("InstanceNormalization", {"x": grid((2, 3, 3, 4))},
                                     {"s": _f(0.5, 1.0, 2.0), "b": _f(0.1, 0.0, -0.1)},
                                     epsilon=1e-3),
    "GroupNormalization": op_case("GroupNormalization", {"x": X4},
                                  {"s": _f(0.5, 2.0), "b": _f(0.1, -0.2)}, num_groups=2,
                                  epsilon=1e-3, opset=18),
    "LpNormalization": unary("LpNormalization", grid((2, 3, 4)), axis=1, p=2),
    "MeanVarianceNormalization": unary("MeanVarianceNormalization", grid((2, 3, 2, 2))),
    "LRN": unary("LRN", grid((2, 5, 2, 3)), size=3, alpha=0.5, beta=0.75, bias=1.5),
    "GatherND": op_case("GatherND", {"x": grid((3, 4, 2))},
                        {"i": np.asarray([[0, 1], [2, 3], [0, 1]], np.int64)}),
    "GatherElements": op_case("GatherElements", {"x": grid((2, 4))},
                              {"i": np.asarray([[0, 3, 3], [1, -1, 0]], np.int64)}, axis=1),
    "ScatterND": op_case("ScatterND", {"x": grid((4, 3)), "u": grid((2, 3), seed=1)},
                         {"i": np.asarray([[1], [3]], np.int64)}, order=["x", "i", "u"]),
    "ScatterElements": op_case("ScatterElements", {"x": grid((2, 4)), "u": grid((2, 2), seed=1)},
                               {"i": np.asarray([[1, 3], [0, 2]], np.int64)},
                               order=["x", "i", "u"], axis=1),
    "TopK": nodes_case([helper.make_node("TopK", ["x", "k"], ["y", "idx"], axis=1)],
                       {"x": grid((2, 5, 2))}, {"k": _i64(3)}),
    "DepthToSpace": unary("DepthToSpace", grid((1, 8, 2, 3)), blocksize=2),
    "SpaceToDepth": unary("SpaceToDepth", grid((1, 2, 4, 6)), blocksize=2),
    "Expand": op_case("Expand", {"x": grid((3, 1))}, {"s": _i64(2, 1, 4)}),
    "Tile": op_case("Tile", {"x": grid((2, 3))}, {"r": _i64(2, 3)}),
    "Trilu": op_case("Trilu", {"x": grid((2, 3, 4))}, {"k": np.asarray(1, np.int64)}, opset=14,
                     upper=0),
    "CumSum": op_case("CumSum", {"x": grid((2, 5))}, {"a": np.asarray(1, np.int64)},
                      exclusive=1),
    "Einsum": op_case("Einsum", {"a": grid((2, 3, 4)), "b": grid((2, 4, 5), seed=1)},
                      equation="bij,bjk->bik"),
    "Mish": unary("Mish", grid((2, 3, 4)), opset=18),
    "Softsign": unary("Softsign", grid((2, 3, 4))),
    "Sin": unary("Sin", grid((2, 3, 4))),
    "Cos": unary("Cos", grid((2, 3, 4))),
    "Tan": unary("Tan", grid((2, 3, 4))),
    "Atan": unary("Atan", grid((2, 3, 4))),
    "Asin": unary("Asin", grid((2, 3))),
    "Acos": unary("Acos", grid((2, 3))),
    "Sinh": unary("Sinh", grid((2, 3, 4))),
    "Cosh": unary("Cosh", grid((2, 3, 4))),
    "Celu": unary("Celu", grid((2, 3, 4)), alpha=0.7),
    "ThresholdedRelu": unary("ThresholdedRelu", grid((2, 3, 4)), alpha=0.3),
    "Shrink": float32(unary("Shrink", grid((2, 3, 4)), lambd=0.3, bias=0.1)),
    "CastLike": nodes_case([helper.make_node("CastLike", ["x", "t"], ["h"]),
                            helper.make_node("Mul", ["h", "h"], ["y"])],
                           {"x": grid((2, 3))}, {"t": np.zeros(1)}),
    "Hardmax": unary("Hardmax", grid((2, 3, 4))),
    "Max": op_case("Max", {"a": grid((2, 3, 4)), "b": grid((3, 1), seed=1),
                           "c": grid((4,), seed=2)}),
    "Min": op_case("Min", {"a": grid((2, 3, 4)), "b": grid((3, 1), seed=1)}),
    "Mean": op_case("Mean", {"a": grid((2, 3, 4)), "b": grid((3, 1), seed=1),
                             "c": grid((4,), seed=2)}),
    "Where": op_case("Where", {"a": grid((2, 3, 4)), "b": grid((3, 1), seed=1)},
                     {"c": np.asarray([[True, False, False, True]])}, order=["c", "a", "b"]),
    "ReduceSumSquare": unary("ReduceSumSquare", grid((2, 3, 4)), axes=[1], keepdims=0),
    "ReduceL1": unary("ReduceL1", grid((2, 3, 4)), axes=[0, 2], keepdims=1),
    "ReduceL2": unary("ReduceL2", grid((2, 3, 4)), axes=[2], keepdims=0),
    "ReduceLogSumExp": unary("ReduceLogSumExp", grid((2, 3, 4)), axes=[1], keepdims=0),
    "ReduceLogSum": unary("ReduceLogSum", positive((2, 3, 4)), axes=[1, 2], keepdims=1),
    "ReduceMin": unary("ReduceMin", grid((2, 3, 4)), axes=[0, 2], keepdims=0),
    "ReduceProd": unary("ReduceProd", positive((2, 3, 2)), axes=[1], keepdims=0),
}
_ZEROS = grid((2, 3, 4))
_ZEROS[0, 0, 1] = 0.0  # one zero in slice (0, :, 1)
_ZEROS[1, :2, 2] = 0.0  # two zeros in slice (1, :, 2)
VARIANTS_MORE: dict[str, Builder] = {
    "GroupNormalization_opset21_per_channel": at_ir10(op_case(
        "GroupNormalization", {"x": X4}, {"s": _f(0.5, 2.0, 1.0, -1.5),
                                          "b": _f(0.1, -0.2, 0.0, 0.3)},
        num_groups=2, epsilon=1e-3, opset=21, stash_type=11)),
    "InstanceNormalization_1d_symbolic": symbolic(op_case(
        "InstanceNormalization", {"x": grid((2, 3, 5))}, {"s": _f(0.5, 1.0, 2.0),
                                                          "b": _f(0.0, 0.0, 0.0)}),
        {0: "N", 2: "L"}),
    "LpNormalization_p1": unary("LpNormalization", grid((2, 3, 4)), axis=-1, p=1),
    "LRN_size5": unary("LRN", grid((1, 6, 2, 2)), size=5, alpha=0.3, beta=0.5, bias=2.0),
    "GatherND_distinct": op_case("GatherND", {"x": grid((3, 4))},
                                 {"i": np.asarray([[2], [0]], np.int64)}),
    "GatherElements_argmax_indices": nodes_case([
        helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=1),
        helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1),
    ], {"x": grid((3, 5))}),
    "ScatterND_add": op_case("ScatterND", {"x": grid((4, 3)), "u": grid((2, 3), seed=1)},
                             {"i": np.asarray([[1], [1]], np.int64)}, order=["x", "i", "u"],
                             reduction="add"),
    "ScatterElements_add": op_case("ScatterElements", {"x": grid((2, 4)),
                                                       "u": grid((2, 2), seed=1)},
                                   {"i": np.asarray([[1, 1], [0, 2]], np.int64)},
                                   order=["x", "i", "u"], axis=1, reduction="add"),
    "DepthToSpace_CRD": unary("DepthToSpace", grid((2, 8, 2, 3)), blocksize=2, mode="CRD"),
    "DepthToSpace_CRD_symbolic_hw": symbolic(unary("DepthToSpace", grid((1, 12, 2, 3)),
                                                   blocksize=2, mode="CRD"), {2: "H", 3: "W"}),
    "SpaceToDepth_symbolic": symbolic(unary("SpaceToDepth", grid((2, 2, 4, 6)), blocksize=2),
                                      {0: "N", 2: "H", 3: "W"}),
    "Expand_bidirectional": op_case("Expand", {"x": grid((1, 3, 1))}, {"s": _i64(2, 1, 4)}),
    "Tile_runtime_repeats": nodes_case([helper.make_node("Shape", ["x"], ["r"]),
                                        helper.make_node("Tile", ["x", "r"], ["y"])],
                                       {"x": grid((2, 3))}),
    "CumSum_reverse": op_case("CumSum", {"x": grid((2, 5))}, {"a": np.asarray(-1, np.int64)},
                              reverse=1),
    "Einsum_attention": op_case("Einsum", {"q": grid((2, 2, 3, 4)), "k": grid((2, 2, 5, 4),
                                                                              seed=1)},
                                equation="bhqd,bhkd->bhqk"),
    "Einsum_channel_mix": op_case("Einsum", {"x": grid((2, 3, 2, 2)), "w": grid((4, 3), seed=1)},
                                  equation="nchw,kc->nkhw"),
    "Einsum_ellipsis_broadcast": op_case("Einsum", {"a": grid((2, 1, 3, 4)),
                                                    "b": grid((1, 5, 4, 2), seed=1)},
                                         equation="...ij,...jk->...ik"),
    "Einsum_summed_only_in_a": op_case("Einsum", {"a": grid((2, 3, 4)), "b": grid((3, 2),
                                                                                  seed=1)},
                                       equation="ijk,jl->il"),
    "Einsum_implicit_output": op_case("Einsum", {"a": grid((2, 3)), "b": grid((3, 4), seed=1)},
                                      equation="ij,jk"),
    "Max_single": op_case("Max", {"a": grid((2, 3))}),
    "ReduceL2_opset18_axes_input": op_case("ReduceL2", {"x": grid((2, 3, 4))},
                                           {"a": _i64(-1)}, opset=18, keepdims=1),
    "ReduceProd_zeros": unary("ReduceProd", _ZEROS, axes=[1], keepdims=1),
    "ReduceMin_all": unary("ReduceMin", grid((2, 3)), keepdims=0),
    "Resize_cubic_scales": op_case("Resize", {"x": grid((1, 2, 3, 4))}, _RESIZE_SCALES,
                                   order=["x", "r", "sc"], mode="cubic"),
    "Resize_cubic_exclude_outside_sizes": op_case(
        "Resize", {"x": grid((1, 2, 4, 5))}, {"r": np.zeros(0), "sc": np.zeros(0),
                                              "sz": _i64(1, 2, 7, 3)},
        order=["x", "r", "sc", "sz"], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
    "Resize_linear_symbolic_hw": symbolic(op_case(
        "Resize", {"x": grid((1, 2, 3, 4))}, _RESIZE_SCALES, order=["x", "r", "sc"],
        mode="linear"), {0: "N", 2: "H", 3: "W"}),
    "Resize_cubic_symbolic_hw": symbolic(op_case(
        "Resize", {"x": grid((1, 2, 3, 4))}, {"r": np.zeros(0), "sc": _f(1.0, 1.0, 1.5, 2.5)},
        order=["x", "r", "sc"], mode="cubic", exclude_outside=1), {2: "H", 3: "W"}),
    "Resize_nearest_runtime_sizes": symbolic(nodes_case([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "z", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sz"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest"),
    ], {"x": grid((2, 2, 3, 4))}, {"z": _i64(0), "two": _i64(2), "hw": _i64(7, 5)}),
        {0: "N", 2: "H", 3: "W"}),
    "Resize_linear_align_corners_runtime_scales": nodes_case([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Div", ["sf", "sf"], ["ones"]),
        helper.make_node("Mul", ["ones", "k"], ["sc"]),
        helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear",
                         coordinate_transformation_mode="align_corners"),
    ], {"x": grid((1, 2, 3, 4))}, {"k": np.asarray([1.0, 1.0, 2.0, 1.5], np.float32)}),
}


def allow_deprecated_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the checker pass models whose only fault is a forward op deprecated at their opset.

    onnx 1.23 deprecates GroupNormalization-18; onnxruntime still runs it and models exported
    with it exist, so ``differentiate`` keeps them (with a warning) and the test does too.
    """
    check = onnx.checker.check_model

    def lenient(model: Any, *args: Any, **kwargs: Any) -> None:
        try:
            check(model, *args, **kwargs)
        except onnx.checker.ValidationError as err:
            if "is deprecated in domain_version" not in str(err):
                raise

    monkeypatch.setattr(onnx.checker, "check_model", lenient)


@pytest.mark.parametrize("op", sorted(CASES_MORE))
def test_new_rule_matches_finite_differences(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if op == "GroupNormalization":
        allow_deprecated_ops(monkeypatch)
    check_finite_differences(CASES_MORE[op])


@pytest.mark.parametrize("variant", sorted(VARIANTS_MORE))
def test_new_rule_variant_matches_finite_differences(variant: str) -> None:
    check_finite_differences(VARIANTS_MORE[variant])


def test_new_ops_are_registered_with_a_case() -> None:
    assert [op for op in NEW_OPS if op not in RULES] == []
    assert sorted(CASES_MORE) == sorted(NEW_OPS)
    assert len(RULES) >= 85


def test_limits_name_registered_ops_only() -> None:
    assert [op for op in LIMITS if op not in RULES] == []


@pytest.mark.parametrize(("equation", "shapes"), [
    ("ii->i", [(3, 3)]), ("ij,jk->...ik", [(2, 3), (3, 4)]),
])
def test_einsum_unsupported_forms_raise(equation: str, shapes: Sequence[tuple[int, ...]]
                                        ) -> None:
    names = [f"t{i}" for i in range(len(shapes))]
    case = op_case("Einsum", {n: grid(s) for n, s in zip(names, shapes, strict=True)},
                   equation=equation)
    model, _, wrt = case(np.float32)
    with pytest.raises(ModelError, match="Einsum"):
        differentiate(model, "y", wrt)


def test_resize_runtime_sizes_use_no_constant_matrix() -> None:
    """Run-time sizes build the matrix from Shape/Range, so other H/W run through one graph."""
    model, feeds, wrt = VARIANTS_MORE["Resize_nearest_runtime_sizes"](np.float32)
    grad = differentiate(model, "y", wrt)
    assert "Range" in [n.op_type for n in grad.model.graph.node]
    _, bwd = _sessions(model, grad.model)
    for shape in [(1, 2, 5, 3), (3, 2, 2, 6)]:
        x = grid(shape).astype(np.float32)
        seed = np.ones((shape[0], 2, 7, 5), np.float32)
        dx = bwd.run([grad.gradient("x")], {"x": x, grad.seed: seed})[0]
        assert dx.shape == shape
        np.testing.assert_allclose(dx.sum(), seed.sum())  # nearest: every output has one source
