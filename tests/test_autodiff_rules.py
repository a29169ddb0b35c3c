"""autodiff rules: every rule in the registry against central finite differences on a tiny graph.

Each case builds a one-op (or few-op) graph in float64 where onnxruntime has float64 kernels for
every forward and backward op, else in float32 (then with a larger step and tolerance). Inputs sit
on a grid offset by 0.05 from every multiple of 0.1, so no finite-difference step crosses a kink
(Relu at 0, Clip bounds, HardSwish at +-3, ties of max pools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.autodiff import RULES, differentiate

Case = tuple[onnx.ModelProto, dict[str, NDArray[Any]], list[str]]
Builder = Callable[[Any], Case]

#: The op types the issue requires a rule for.
REQUIRED = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu",
    "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Clip",
    "Erf", "Gelu", "Exp", "Log", "Sqrt", "Pow", "Reciprocal", "Neg", "Abs", "MaxPool",
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
    "ReduceMax", "BatchNormalization", "LayerNormalization", "Softmax", "LogSoftmax", "Flatten",
    "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Pad", "Gather",
    "Resize", "Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear", "Upsample",
)


def grid(shape: Sequence[int], scale: float = 0.1, seed: int = 0) -> NDArray[np.float64]:
    """Distinct values k*scale + scale/2 (k centered on 0) in random order."""
    n = int(np.prod(shape))
    k = np.random.default_rng(seed).permutation(n) - n // 2
    return (k * scale + scale / 2).reshape(shape)


def positive(shape: Sequence[int], seed: int = 0) -> NDArray[np.float64]:
    """Distinct values in [0.55, ...) in random order."""
    n = int(np.prod(shape))
    return (0.55 + np.random.default_rng(seed).permutation(n) * 0.1).reshape(shape)


def model_of(nodes: Sequence[onnx.NodeProto], data: dict[str, NDArray[Any]],
             consts: dict[str, NDArray[Any]], dt: Any, opset: int = 17,
             out_dtype: Any = None) -> Case:
    """Wrap nodes (output ``y``) in a model; data arrays become inputs cast to ``dt``."""
    feeds = {k: v.astype(dt) for k, v in data.items()}
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape) for k, v in feeds.items()]
    inits = [numpy_helper.from_array(v.astype(dt) if v.dtype.kind == "f" else v, k)
             for k, v in consts.items()]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype or dt))
    graph = helper.make_graph(list(nodes), "case", inputs,
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    ir = 9 if opset >= 19 else 8
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir)
    return model, feeds, list(feeds)


def unary(op: str, x: NDArray[Any], opset: int = 17, **attrs: Any) -> Builder:
    """One-input op ``y = op(x)``."""
    return lambda dt: model_of([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, {}, dt,
                               opset)


def op_case(op: str, data: dict[str, NDArray[Any]], consts: dict[str, NDArray[Any]] | None
            = None, order: Sequence[str] | None = None, opset: int = 17, **attrs: Any
            ) -> Builder:
    """``y = op(*inputs)`` with inputs in ``order`` (data or constant; "" for absent)."""
    consts = consts or {}
    names = list(order or list(data) + list(consts))
    return lambda dt: model_of([helper.make_node(op, names, ["y"], **attrs)], data, consts, dt,
                               opset)


def nodes_case(nodes: Sequence[onnx.NodeProto], data: dict[str, NDArray[Any]],
               consts: dict[str, NDArray[Any]] | None = None, opset: int = 17) -> Builder:
    """Several nodes ending in ``y``."""
    return lambda dt: model_of(nodes, data, consts or {}, dt, opset)


def _i64(*values: int) -> NDArray[np.int64]:
    return np.asarray(values, np.int64)


X4 = grid((2, 3, 4, 4))
CASES: dict[str, Builder] = {
    "Identity": unary("Identity", grid((2, 3))),
    "Dropout": unary("Dropout", grid((2, 3))),
    "Flatten": unary("Flatten", grid((2, 3, 2)), axis=2),
    "Reshape": op_case("Reshape", {"x": grid((2, 6))}, {"s": _i64(3, -1, 2)}),
    "Squeeze": op_case("Squeeze", {"x": grid((2, 1, 3))}, {"a": _i64(1)}),
    "Unsqueeze": op_case("Unsqueeze", {"x": grid((2, 3))}, {"a": _i64(0, -1)}),
    "Transpose": unary("Transpose", grid((2, 3, 4)), perm=[2, 0, 1]),
    "Concat": op_case("Concat", {"a": grid((2, 2)), "b": grid((2, 3), seed=1)},
                      {"c": np.ones((2, 1))}, order=["a", "c", "b"], axis=-1),
    "Slice": op_case("Slice", {"x": grid((3, 5, 4))},
                     {"s": _i64(1, -4), "e": _i64(3, -1), "a": _i64(1, 2)}),
    "Pad": op_case("Pad", {"x": grid((2, 3, 4))}, {"p": _i64(0, 1, -1, 0, -1, 2)}),
    "Gather": op_case("Gather", {"x": grid((2, 4, 3))},
                      {"i": np.asarray([[0, 2], [2, -1]], np.int64)}, axis=1),
    "Add": op_case("Add", {"a": grid((2, 3, 4)), "b": grid((3, 1), seed=1)}),
    "Sub": op_case("Sub", {"a": grid((3, 1)), "b": grid((2, 3, 4), seed=1)}),
    "Mul": op_case("Mul", {"a": grid((2, 3, 4)), "b": grid((1, 4), seed=1)}),
    "Div": op_case("Div", {"a": grid((2, 3, 4)), "b": positive((3, 1))}),
    "Sum": op_case("Sum", {"a": grid((2, 3)), "b": grid((3,), seed=1), "c": grid((2, 1))}),
    "Pow": op_case("Pow", {"x": positive((2, 3))}, {"e": np.asarray(2.5)}),
    "MatMul": op_case("MatMul", {"a": grid((2, 1, 3, 4)), "b": grid((3, 4, 2), seed=1)}),
    "Gemm": op_case("Gemm", {"a": grid((4, 2)), "b": grid((3, 4), seed=1),
                             "c": grid((3,), seed=2)}, alpha=0.5, beta=2.0, transA=1, transB=1),
    "Relu": unary("Relu", grid((2, 3, 4))),
    "LeakyRelu": unary("LeakyRelu", grid((2, 3, 4)), alpha=0.1),
    "PRelu": op_case("PRelu", {"x": grid((2, 3, 4))}, {"s": np.asarray([[0.1], [0.2], [-0.3]])}),
    "Elu": unary("Elu", grid((2, 3, 4)), alpha=0.7),
    "Selu": unary("Selu", grid((2, 3, 4))),
    "Sigmoid": unary("Sigmoid", grid((2, 3, 4))),
    "HardSigmoid": unary("HardSigmoid", grid((2, 3, 5), scale=0.3)),
    "HardSwish": unary("HardSwish", grid((2, 3, 6), scale=0.2), opset=14),
    "Tanh": unary("Tanh", grid((2, 3, 4))),
    "Softplus": unary("Softplus", grid((2, 3, 4))),
    "Clip": op_case("Clip", {"x": grid((2, 3, 4))}, {"lo": np.asarray(-0.5),
                                                     "hi": np.asarray(0.7)}),
    "Erf": unary("Erf", grid((2, 3, 4))),
    "Gelu": unary("Gelu", grid((2, 3, 4)), opset=20),
    "Exp": unary("Exp", grid((2, 3, 4))),
    "Log": unary("Log", positive((2, 3))),
    "Sqrt": unary("Sqrt", positive((2, 3))),
    "Reciprocal": unary("Reciprocal", positive((2, 3))),
    "Neg": unary("Neg", grid((2, 3))),
    "Abs": unary("Abs", grid((2, 3, 4))),
    "Floor": unary("Floor", grid((2, 3))),
    "Ceil": unary("Ceil", grid((2, 3))),
    "Round": unary("Round", grid((2, 3))),
    "Sign": unary("Sign", grid((2, 3))),
    "ReduceSum": op_case("ReduceSum", {"x": grid((2, 3, 4))}, {"a": _i64(0, -1)}, keepdims=0),
    "ReduceMean": unary("ReduceMean", grid((2, 3, 4)), axes=[1], keepdims=1),
    "ReduceMax": unary("ReduceMax", grid((2, 3, 4)), axes=[0, 2], keepdims=0),
    "GlobalMaxPool": unary("GlobalMaxPool", grid((2, 3, 3, 3))),
    "GlobalAveragePool": unary("GlobalAveragePool", grid((2, 3, 3, 3))),
    "BatchNormalization": op_case(
        "BatchNormalization", {"x": grid((2, 3, 2, 2))},
        {"s": np.asarray([0.5, 1.0, 2.0]), "b": np.asarray([0.1, 0.0, -0.1]),
         "m": np.asarray([0.2, -0.1, 0.0]), "v": np.asarray([1.0, 0.5, 2.0])}, epsilon=1e-3),
    "LayerNormalization": op_case(
        "LayerNormalization", {"x": grid((2, 3, 4))},
        {"s": grid((3, 4), seed=3) + 1.0, "b": grid((3, 4), seed=4)}, axis=-2),
    "Softmax": unary("Softmax", grid((2, 3, 4)), axis=1),
    "LogSoftmax": unary("LogSoftmax", grid((2, 3, 4))),
    "Conv": op_case("Conv", {"x": grid((1, 4, 7, 6))}, {"w": grid((6, 2, 3, 2), seed=1)},
                    group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
    "ConvTranspose": op_case("ConvTranspose", {"x": grid((1, 4, 3, 3))},
                             {"w": grid((4, 1, 3, 3), seed=1)}, group=2, strides=[2, 2],
                             pads=[1, 0, 1, 1], output_padding=[1, 0]),
    "MaxPool": unary("MaxPool", grid((1, 2, 7, 7)), kernel_shape=[3, 3], strides=[2, 2],
                     pads=[1, 1, 0, 0], ceil_mode=1),
    "AveragePool": unary("AveragePool", grid((1, 2, 7, 6)), kernel_shape=[3, 2],
                         strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1, count_include_pad=1),
    "Resize": op_case("Resize", {"x": grid((1, 2, 3, 4))},
                      {"r": np.zeros(0), "sc": np.asarray([1.0, 1.0, 2.0, 2.0])},
                      order=["x", "r", "sc"], mode="linear"),
    "Upsample": op_case("Upsample", {"x": grid((1, 2, 3, 3))},
                        {"sc": np.asarray([1.0, 1.0, 2.0, 3.0], np.float32)}, opset=9,
                        mode="nearest"),
    "Split": nodes_case([
        helper.make_node("Split", ["x", "sp"], ["p", "q", "r"], axis=1),
        helper.make_node("Concat", ["r", "p"], ["y"], axis=1),
    ], {"x": grid((2, 4, 2))}, {"sp": _i64(1, 2, 1)}),
    "Cast": lambda dt: model_of([
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["h", "h"], ["y"]),
    ], {"x": grid((2, 3))}, {}, np.float32, out_dtype=np.float64),
}
# Variants beyond one case per op type (attribute forms, modes, old opsets).
VARIANTS: dict[str, Builder] = {
    "Conv_same_upper": op_case("Conv", {"x": grid((1, 2, 5, 6))}, {"w": grid((3, 2, 3, 3))},
                               auto_pad="SAME_UPPER", strides=[2, 2]),
    # stride 1, >= 8 input channels: the adjoint is a Conv with flipped weights
    "Conv_stride1_direct": op_case("Conv", {"x": grid((2, 8, 6, 7))},
                                   {"w": grid((6, 4, 3, 2), seed=1)}, group=2,
                                   pads=[1, 0, 2, 1], dilations=[1, 2]),
    "Conv_stride1_1d_direct": op_case("Conv", {"x": grid((2, 8, 7))}, {"w": grid((3, 8, 3))},
                                      pads=[2, 1]),
    # a begin pad wider than the kernel reach keeps ConvTranspose (cropped)
    "Conv_stride1_wide_pad": op_case("Conv", {"x": grid((1, 8, 5, 5))},
                                     {"w": grid((2, 8, 3, 3))}, pads=[3, 0, 1, 1]),
    "Conv_bias_1d": op_case("Conv", {"x": grid((2, 3, 7))}, {"w": grid((2, 3, 3)),
                                                               "b": np.asarray([0.1, -0.2])},
                            strides=[2], pads=[1, 1]),
    "MaxPool_nonoverlap_storage1": unary("MaxPool", grid((1, 2, 5, 5)), kernel_shape=[2, 2],
                                         strides=[2, 2], storage_order=1, opset=11),
    "MaxPool_ceil_dropped_window": unary("MaxPool", grid((1, 2, 7, 6)), kernel_shape=[3, 2],
                                         strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1),
    "MaxPool_dilated": unary("MaxPool", grid((1, 1, 7, 7)), kernel_shape=[2, 2],
                             dilations=[2, 2], strides=[1, 2]),
    "AveragePool_exclude_pad": unary("AveragePool", grid((1, 2, 7, 6)), kernel_shape=[3, 3],
                                     strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "AveragePool_same_lower": unary("AveragePool", grid((1, 1, 5, 5)), kernel_shape=[2, 2],
                                    auto_pad="SAME_LOWER"),
    "Resize_nearest_sizes": op_case(
        "Resize", {"x": grid((1, 2, 3, 4))}, {"r": np.zeros(0), "sc": np.zeros(0),
                                              "sz": _i64(1, 2, 7, 5)},
        order=["x", "r", "sc", "sz"], mode="nearest"),
    "Resize_linear_align_corners": op_case(
        "Resize", {"x": grid((1, 2, 3, 4))}, {"r": np.zeros(0), "sc": np.zeros(0),
                                              "sz": _i64(1, 2, 5, 7)},
        order=["x", "r", "sc", "sz"], mode="linear",
        coordinate_transformation_mode="align_corners"),
    "Resize_nearest_asymmetric_x2": op_case(
        "Resize", {"x": grid((1, 2, 3, 3))}, {"r": np.zeros(0),
                                              "sc": np.asarray([1.0, 1.0, 2.0, 2.0])},
        order=["x", "r", "sc"], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"),
    "Gelu_tanh": unary("Gelu", grid((2, 3, 4)), opset=20, approximate="tanh"),
    "Softmax_opset11_coerced": unary("Softmax", grid((2, 3, 4)), opset=11, axis=1),
    "LogSoftmax_opset11_coerced": unary("LogSoftmax", grid((2, 3, 4)), opset=11, axis=1),
    "Clip_opset7_attrs": unary("Clip", grid((2, 3, 4)), opset=7, min=-0.5, max=0.7),
    "Clip_min_only": op_case("Clip", {"x": grid((2, 3, 4))}, {"lo": np.asarray(-0.5)}),
    "ReduceSum_opset11_attr": unary("ReduceSum", grid((2, 3, 4)), opset=11, axes=[1]),
    "ReduceMean_all": unary("ReduceMean", grid((2, 3, 4)), keepdims=0),
    "Pow_exponent_input": op_case("Pow", {"x": positive((2, 3)), "e": grid((3,), seed=2)}),
    "MatMul_vector_left": op_case("MatMul", {"a": grid((4,)), "b": grid((2, 4, 3), seed=1)}),
    "MatMul_vector_right": op_case("MatMul", {"a": grid((2, 3, 4)), "b": grid((4,), seed=1)}),
    "Gemm_plain": op_case("Gemm", {"a": grid((2, 4)), "b": grid((4, 3), seed=1)},
                          {"c": np.ones((1, 3))}),
    "Gather_scalar_axis0": op_case("Gather", {"x": grid((3, 4))}, {"i": np.asarray(1)}),
    "Pad_axes": op_case("Pad", {"x": grid((2, 3, 4))}, {"p": _i64(1, 2, 0, 1), "v": np.asarray(
        0.0), "ax": _i64(0, 2)}, opset=18, order=["x", "p", "v", "ax"]),
    "Upsample_linear_opset7": unary("Upsample", grid((1, 1, 3, 3)), opset=7, mode="linear",
                                    scales=[1.0, 1.0, 2.0, 2.0]),
    "Slice_opset9_attrs": unary("Slice", grid((3, 5)), opset=9, starts=[1, 0], ends=[3, -2],
                                axes=[0, 1]),
}


def _sessions(model: onnx.ModelProto, grad_model: onnx.ModelProto
              ) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return tuple(ort.InferenceSession(m.SerializeToString(), opts,  # type: ignore[return-value]
                                      providers=["CPUExecutionProvider"])
                 for m in (model, grad_model))


def _prepare(builder: Builder) -> tuple[Case, Any, tuple[Any, Any], float]:
    """Build the case in float64 when onnxruntime runs it, else in float32."""
    error: Exception | None = None
    for dt in (np.float64, np.float32):
        case = builder(dt)
        model, feeds, wrt = case
        eps = 1e-6 if feeds[wrt[0]].dtype == np.float64 else 1e-2
        grad = differentiate(model, "y", wrt)
        try:
            return case, grad, _sessions(model, grad.model), eps
        except Exception as err:  # noqa: BLE001 - no float64 kernel: use float32
            error = err
            continue
    raise AssertionError(f"no dtype runs: {error}")


def check_finite_differences(builder: Builder) -> None:
    """Analytic gradients of sum(seed * y) equal central finite differences."""
    (model, feeds, wrt), grad, (fwd, bwd), eps = _prepare(builder)
    before = model.SerializeToString()
    y = fwd.run(["y"], feeds)[0]
    seed = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    outs = bwd.run([g for _, g in grad.gradients], {**feeds, grad.seed: seed})
    assert model.SerializeToString() == before
    onnx.checker.check_model(grad.model)
    for name, analytic in zip(wrt, outs, strict=True):
        base = feeds[name]
        numeric = np.zeros(base.shape)
        for i in range(base.size):
            f = []
            for sign in (1, -1):
                x = base.copy()
                x.reshape(-1)[i] += sign * eps
                out = fwd.run(["y"], {**feeds, name: x})[0].astype(np.float64)
                f.append(float((out * seed).sum()))
            numeric.reshape(-1)[i] = (f[0] - f[1]) / (2 * eps)
        tol = 1e-6 if eps < 1e-3 else 3e-3
        scale = max(np.abs(numeric).max(), 1.0)
        assert analytic.shape == base.shape, name
        np.testing.assert_allclose(analytic, numeric, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("op", sorted(CASES))
def test_rule_matches_finite_differences(op: str) -> None:
    check_finite_differences(CASES[op])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rule_variant_matches_finite_differences(variant: str) -> None:
    check_finite_differences(VARIANTS[variant])


@pytest.mark.parametrize("op", ["QuantizeLinear", "DequantizeLinear"])
def test_qdq_is_straight_through(op: str) -> None:
    x = grid((2, 3, 4)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    consts = {"s": np.asarray(0.05, np.float32), "z": np.asarray(0, np.int8)}
    model, feeds, wrt = model_of(nodes, {"x": x}, consts, np.float32, opset=13)
    grad = differentiate(model, "y", wrt)
    seed = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    _, bwd = _sessions(model, grad.model)
    np.testing.assert_array_equal(bwd.run([grad.gradient("x")], {**feeds, grad.seed: seed})[0],
                                  seed)


def test_every_required_op_has_a_rule_and_a_case() -> None:
    from tests.test_autodiff_rules_more import CASES_MORE  # the rules added later

    covered = set(CASES) | set(CASES_MORE) | {"QuantizeLinear", "DequantizeLinear"}
    assert [op for op in REQUIRED if op not in RULES] == []
    assert [op for op in REQUIRED if op not in covered] == []
    assert [op for op in RULES if op not in covered] == []


@pytest.mark.parametrize(("variant", "adjoint"), [
    ("Conv_stride1_direct", "Conv"), ("Conv_stride1_1d_direct", "Conv"),
    ("Conv_stride1_wide_pad", "ConvTranspose"), ("Conv_bias_1d", "ConvTranspose"),
])
def test_conv_adjoint_kind(variant: str, adjoint: str) -> None:
    """Stride-1 convs with >= 8 input channels backpropagate through a flipped-weight Conv."""
    model, _, wrt = VARIANTS[variant](np.float32)
    grad = differentiate(model, "y", wrt)
    added = [n.op_type for n in grad.model.graph.node[len(model.graph.node):]]
    assert adjoint in added
    assert ("ConvTranspose" in added) == (adjoint == "ConvTranspose")


def test_relu_backward_reads_the_output() -> None:
    """The Relu mask reads y (so the runtime can fuse Conv+Relu) and multiplies, no Where."""
    model, _, wrt = CASES["Relu"](np.float32)
    grad = differentiate(model, "y", wrt)
    added = grad.model.graph.node[len(model.graph.node):]
    assert [n.op_type for n in added if n.op_type in ("Greater", "Where")] == ["Greater"]
    assert next(n for n in added if n.op_type == "Greater").input[0] == "y"
