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


# ---------------------------------------------------------------------- torch autograd references
def onnx_grads(model: onnx.ModelProto, feeds: dict[str, NDArray[Any]], seed: NDArray[Any],
               wrt: Sequence[str], of: str = "y") -> list[NDArray[Any]]:
    """Gradients of ``sum(seed * of)`` for ``wrt`` from the differentiated ONNX model."""
    grad = differentiate(model, of, wrt)
    _, bwd = _sessions(model, grad.model)
    return list(bwd.run([grad.gradient(w) for w in wrt], {**feeds, grad.seed: seed}))


def torch_grads(fn: Any, inputs: Sequence[NDArray[Any]], seed: NDArray[Any]
                ) -> list[NDArray[Any]]:
    """Gradients of ``sum(seed * fn(*inputs))`` from torch autograd."""
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    (fn(*ts) * torch.tensor(seed)).sum().backward()
    return [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_split_like_torch(op: str) -> None:
    """Tied operands each get g/2, as torch.maximum/minimum give (broadcast b too)."""
    torch = pytest.importorskip("torch")
    a = np.asarray([[1.0, 2.0, 3.0], [0.5, 2.0, -1.0]])
    b = np.asarray([1.0, 2.0, 0.0])
    model, feeds, wrt = op_case(op, {"a": a, "b": b})(np.float64)
    seed = np.random.default_rng(0).standard_normal((2, 3))
    fn = torch.maximum if op == "Max" else torch.minimum
    for got, want in zip(onnx_grads(model, feeds, seed, wrt), torch_grads(fn, [a, b], seed),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("opset", [18, 21])
def test_groupnorm_opsets_match_torch(opset: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opset 18 scales per group (expanded to channels for torch), opset 21 per channel."""
    torch = pytest.importorskip("torch")
    allow_deprecated_ops(monkeypatch)
    x = grid((2, 6, 3, 2))
    per = np.asarray([0.5, -1.5, 2.0]) if opset == 18 else np.linspace(-1.0, 1.5, 6)
    bias = np.zeros_like(per)
    extra: dict[str, Any] = {"stash_type": 11} if opset == 21 else {}
    case = op_case("GroupNormalization", {"x": x}, {"s": per, "b": bias}, num_groups=3,
                   epsilon=1e-4, opset=opset, **extra)
    model, feeds, wrt = (at_ir10(case) if opset == 21 else case)(np.float64)
    weight = np.repeat(per, 2) if opset == 18 else per
    seed = np.random.default_rng(0).standard_normal(x.shape)
    want = torch_grads(lambda t: torch.nn.functional.group_norm(
        t, 3, torch.tensor(weight), torch.tensor(np.zeros(6)), eps=1e-4), [x], seed)
    np.testing.assert_allclose(onnx_grads(model, feeds, seed, wrt)[0], want[0], atol=1e-10)


def test_instancenorm_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    model, feeds, wrt = CASES_MORE["InstanceNormalization"](np.float32)  # no float64 kernel
    x = feeds["x"]
    seed = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    want = torch_grads(lambda t: torch.nn.functional.instance_norm(
        t, weight=torch.tensor(_f(0.5, 1.0, 2.0), dtype=torch.float32),
        bias=torch.tensor(_f(0.1, 0.0, -0.1), dtype=torch.float32), eps=1e-3), [x], seed)
    np.testing.assert_allclose(onnx_grads(model, feeds, seed, wrt)[0], want[0], atol=1e-5)


@pytest.mark.parametrize("variant", ["Einsum_attention", "Einsum_channel_mix",
                                     "Einsum_ellipsis_broadcast", "Einsum_summed_only_in_a"])
def test_einsum_matches_torch(variant: str) -> None:
    torch = pytest.importorskip("torch")
    model, feeds, wrt = VARIANTS_MORE[variant](np.float32)
    node = model.graph.node[0]
    equation = helper.get_attribute_value(node.attribute[0]).decode()
    y = torch.einsum(equation, *[torch.tensor(feeds[w]) for w in wrt])
    seed = np.random.default_rng(0).standard_normal(tuple(y.shape)).astype(np.float32)
    want = torch_grads(lambda *ts: torch.einsum(equation, *ts), [feeds[w] for w in wrt], seed)
    for got, ref in zip(onnx_grads(model, feeds, seed, wrt), want, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("hw", [(3, 4), (5, 2)])
def test_resize_cubic_matches_torch_bicubic(hw: tuple[int, int]) -> None:
    """ONNX cubic (A=-0.75, pytorch_half_pixel, edge taps) is torch's bicubic interpolate."""
    torch = pytest.importorskip("torch")
    case = op_case("Resize", {"x": grid((1, 2, *hw))}, {"r": np.zeros(0),
                                                        "sc": _f(1.0, 1.0, 2.0, 1.5)},
                   order=["x", "r", "sc"], mode="cubic",
                   coordinate_transformation_mode="pytorch_half_pixel")
    model, feeds, wrt = symbolic(case, {2: "H", 3: "W"})(np.float32)
    out = (1, 2, 2 * hw[0], int(np.floor(1.5 * hw[1])))
    seed = np.random.default_rng(0).standard_normal(out).astype(np.float32)
    want = torch_grads(lambda t: torch.nn.functional.interpolate(
        t, size=out[2:], mode="bicubic", align_corners=False), [feeds["x"]], seed)
    np.testing.assert_allclose(onnx_grads(model, feeds, seed, wrt)[0], want[0], atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_exported_module_with_new_ops_matches_torch(dynamo: bool, tmp_path: Any) -> None:
    """GroupNorm, Mish, pixel_shuffle, InstanceNorm, bilinear resize of dynamic H/W, maximum,
    Einsum and logsumexp, exported by both exporters and run at a size other than the export's.
    """
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    net = _NewOpsNet(torch).eval()
    path = tmp_path / "net.onnx"
    if dynamo:
        dim = torch.export.Dim
        shapes = {"x": {0: dim("N"), 2: dim("H", min=2, max=64), 3: dim("W", min=2, max=64)}}
        torch.onnx.export(net, (torch.zeros(1, 3, 6, 8),), str(path), dynamo=True,
                          input_names=["x"], output_names=["y"], dynamic_shapes=shapes)
    else:
        torch.onnx.export(net, (torch.zeros(1, 3, 6, 8),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=18,
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    model = onnx.load(str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 10)).astype(np.float32)
    seed = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnx_grads(model, {"x": x}, seed, ["x"])[0]
    want = torch_grads(net, [x], seed)[0]
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def _NewOpsNet(torch: Any) -> Any:  # noqa: N802 - builds a torch class lazily (torch optional)
    """A module whose export uses the ops this file adds rules for; weights from seed 0."""
    nn, fn = torch.nn, torch.nn.functional

    class NewOpsNet(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.gn = nn.GroupNorm(2, 8)
            self.inorm = nn.InstanceNorm2d(2, affine=True)
            self.mix = nn.Parameter(torch.randn(4, 2))

        def forward(self, x: Any) -> Any:
            h = fn.pixel_shuffle(fn.mish(self.gn(self.conv(x))), 2)
            h = fn.interpolate(self.inorm(h), scale_factor=0.5, mode="bilinear")
            h = torch.maximum(h, fn.softplus(h) - 0.5)
            return torch.einsum("nchw,kc->nkhw", h, self.mix).flatten(2).logsumexp(-1)

    return NewOpsNet()
