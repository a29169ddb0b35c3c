"""The objective head appended to a model and its gradient session: channel, neuron and layer
objectives, diversity and inversion losses as ONNX nodes, the input dequantized where needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

import onnx_featviz.autodiff as autodiff
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.inspector as inspection
import onnx_featviz.synthesis.maths as syn
from onnx_featviz.errors import InputError, ModelError

PREFIX = "featviz/synth"

LOG = logging.getLogger(__name__)
F32 = NDArray[np.float32]


OBJECTIVE_OUT = f"{PREFIX}/objective"


UNIT_OUT = f"{PREFIX}/unit"  # the objective without the diversity term


SELECT_IN = f"{PREFIX}/select"


POSITION_IN = f"{PREFIX}/position"


TARGET_IN = f"{PREFIX}/target"


WEIGHT_IN = f"{PREFIX}/weight"


# -- the objective head and its gradient model ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Head:
    """Which objective the head computes: ``kind`` in OBJECTIVES or ``"invert"``; ``channels``
    of the layer tensor; ``group`` consecutive rows share a unit (for ``diversity``);
    ``channels_last``: the rank of a channels-last (``NHWC``) layer tensor, moved to
    channels-first before the objective, 0 for a channels-first one."""

    kind: str
    channels: int
    group: int = 1
    diversity: float = 0.0
    channels_last: int = 0


class _Nodes:
    """Collects the head's nodes, constants and inputs, named ``featviz/synth/<purpose>/...``."""

    def __init__(self, tensor: str, opset: int) -> None:
        self.tensor, self.opset = tensor, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0

    def name(self, purpose: str) -> str:
        self.count += 1
        return f"{PREFIX}/{purpose}_{self.count}/{self.tensor}"

    def op(self, op_type: str, inputs: Sequence[str], purpose: str, **attrs: Any) -> str:
        out = self.name(purpose)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, purpose: str, value: NDArray[np.generic]) -> str:
        name = self.name(purpose)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int) -> str:
        """ReduceSum/ReduceMean with axes as an attribute or an input, as the opset wants."""
        since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= since:
            axes_in = self.const("axes", np.asarray(list(axes), np.int64))
            return self.op(op_type, [x, axes_in], op_type.lower(), keepdims=keepdims)
        return self.op(op_type, [x], op_type.lower(), axes=list(axes), keepdims=keepdims)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.const("shape", np.asarray(shape, np.int64))],
                       "reshape")

    def scalar(self, value: float) -> str:
        return self.const("scalar", np.asarray(value, np.float32))


def _head_nodes(b: _Nodes, head: _Head) -> str:
    """Emit the objective of each row as a ``(rows,)`` float32 tensor; return its name."""
    f = b.op("Cast", [b.tensor], "float", to=TensorProto.FLOAT)
    if head.channels_last:
        rank = head.channels_last
        f = b.op("Transpose", [f], "nchw", perm=[0, rank - 1, *range(1, rank - 1)])
    flat = b.reshape(f, [0, head.channels, -1])
    if head.kind == "layer":
        obj = b.reduce("ReduceMean", b.op("Mul", [flat, flat], "square"), [1, 2], 0)
    elif head.kind == "invert":
        diff = b.op("Sub", [flat, TARGET_IN], "diff")
        mse = b.reduce("ReduceMean", b.op("Mul", [diff, diff], "square"), [1, 2], 0)
        obj = b.op("Mul", [mse, WEIGHT_IN], "relative")
    else:
        if head.kind == "neuron":
            pooled = b.reshape(b.op("MatMul", [flat, POSITION_IN], "neuron"), [0, -1])
        else:
            pooled = b.reduce("ReduceMean", flat, [2], 0)
        obj = b.reduce("ReduceMean", b.op("Mul", [pooled, SELECT_IN], "select"), [1], 0)
    if head.diversity:
        b.nodes.append(helper.make_node("Identity", [obj], [UNIT_OUT], name=UNIT_OUT))
        term = b.op("Mul", [_diversity_nodes(b, flat, head), b.scalar(head.diversity)], "weight")
        obj = b.op("Sub", [obj, term], "diverse")
    b.nodes.append(helper.make_node("Identity", [obj], [OBJECTIVE_OUT], name=OBJECTIVE_OUT))
    return OBJECTIVE_OUT


def _diversity_nodes(b: _Nodes, flat: str, head: _Head) -> str:
    """Lucid's diversity per row (see ``synthesis.diversity``), from ``flat`` (R, C, S)."""
    c, group = head.channels, head.group
    gram = b.op("MatMul", [flat, b.op("Transpose", [flat], "t", perm=[0, 2, 1])], "gram")
    power = b.reduce("ReduceSum", b.op("Mul", [gram, gram], "g2"), [1, 2], 1)
    norm = b.op("Sqrt", [b.op("Add", [power, b.scalar(1e-12)], "eps")], "norm")
    unit = b.reshape(b.op("Div", [gram, norm], "unit"), [-1, group, c * c])
    total = b.reduce("ReduceSum", unit, [1], 1)
    cross = b.reduce("ReduceSum", b.op("Mul", [unit, total], "cross"), [2], 0)
    own = b.reduce("ReduceSum", b.op("Mul", [unit, unit], "own"), [2], 0)
    value = b.op("Div", [b.op("Sub", [cross, own], "others"), b.scalar(float(group))], "mean")
    return b.reshape(value, [-1])


def _head_inputs(head: _Head, rows: int | str) -> list[onnx.ValueInfoProto]:
    c = head.channels
    if head.kind == "invert":
        return [helper.make_tensor_value_info(TARGET_IN, TensorProto.FLOAT, [rows, c, None]),
                helper.make_tensor_value_info(WEIGHT_IN, TensorProto.FLOAT, [rows])]
    if head.kind == "layer":
        return []
    out = [helper.make_tensor_value_info(SELECT_IN, TensorProto.FLOAT, [rows, c])]
    if head.kind == "neuron":
        out.append(helper.make_tensor_value_info(POSITION_IN, TensorProto.FLOAT, [rows, None, 1]))
    return out


def _objective_model(model: onnx.ModelProto, image_input: str, tensor: str, head: _Head, *,
                     integer: bool, free_batch: bool) -> onnx.ModelProto:
    """Return a copy of ``model`` whose only output is the head's objective per row."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if integer:
        _float_input(graph, image_input)
    rows = _free_batch(graph, image_input) if free_batch else _batch_dim(graph, image_input)
    opset = max([i.version for i in out.opset_import if i.domain in ("", "ai.onnx")] or [1])
    builder = _Nodes(tensor, opset)
    _head_nodes(builder, head)
    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.inits)
    if out.ir_version < 4:  # IR 3 lists every initializer as a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in builder.inits)
    graph.input.extend(_head_inputs(head, rows))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows])
                        for name in _head_outputs(head))
    rewrite.prune_graph(graph)
    return out


def _head_outputs(head: _Head) -> list[str]:
    """The objective, then (with diversity) the objective without the diversity term."""
    return [OBJECTIVE_OUT] + ([UNIT_OUT] if head.diversity else [])


def _batch_dim(graph: onnx.GraphProto, name: str) -> int | str:
    for value in graph.input:
        if value.name == name and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[0]
            return int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "N")
    return "N"


def _free_batch(graph: onnx.GraphProto, name: str) -> str:
    """Make the batch axis of input ``name`` symbolic; drop value_info inferred for batch 1."""
    for value in graph.input:
        if value.name == name and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "featviz_rows"
    del graph.value_info[:]
    return "featviz_rows"


def _float_input(graph: onnx.GraphProto, name: str) -> None:
    """Turn an integer image input into float32 (its values stay integers 0..255 when fed).

    Consumers may be Cast (kept: float to float) or DequantizeLinear (rewritten exactly as
    ``(x - zero_point) * scale``, per tensor or per channel); anything else has no float path
    for gradients.
    """
    rank = 0
    for value in graph.input:
        if value.name == name:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            rank = len(value.type.tensor_type.shape.dim)
    nodes: list[onnx.NodeProto] = []
    shapes: list[TensorProto] = []
    for node in graph.node:
        if name not in node.input or node.op_type == "Cast":
            nodes.append(node)
        elif (node.op_type == "DequantizeLinear" and node.input[0] == name
              and not any(a.name == "block_size" and a.i for a in node.attribute)):
            nodes += _dequantize_nodes(node, rank, shapes)
        else:
            raise ModelError(f"the integer image input {name!r} feeds a {node.op_type} node "
                             f"({node.name!r}); optimizing an image needs a float path from the "
                             "input (a Cast or DequantizeLinear right after it)")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(shapes)


def _dequantize_nodes(node: onnx.NodeProto, rank: int, inits: list[TensorProto]
                      ) -> list[onnx.NodeProto]:
    """``(x - zero_point) * scale`` for a DequantizeLinear fed a float ``x``, with the scale
    and zero point (scalar or 1-D along ``axis``) reshaped to broadcast over ``x``."""
    out = node.output[0]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(rank, 1)
    shape = [1] * rank
    shape[axis] = -1
    shape_name = f"{PREFIX}/dequantize_shape/{out}"
    inits.append(numpy_helper.from_array(np.asarray(shape, np.int64), shape_name))
    scale = f"{PREFIX}/dequantize_scale/{out}"
    nodes = [helper.make_node("Reshape", [node.input[1], shape_name], [scale], name=scale)]
    if len(node.input) < 3 or not node.input[2]:  # the zero point defaults to 0
        return [*nodes, helper.make_node("Mul", [node.input[0], scale], [out], name=out)]
    zero, cast, centred = (f"{PREFIX}/dequantize_{p}/{out}" for p in ("zero", "cast", "centred"))
    return [*nodes,
            helper.make_node("Cast", [node.input[2]], [cast], name=cast, to=TensorProto.FLOAT),
            helper.make_node("Reshape", [cast, shape_name], [zero], name=zero),
            helper.make_node("Sub", [node.input[0], zero], [centred], name=centred),
            helper.make_node("Mul", [centred, scale], [out], name=out)]


def _gradient_problem(err: ModelError) -> str:
    """What ``autodiff`` refused, without its advice (CAM methods, of/wrt tensors) or the
    head's internal output name, which do not apply to optimizing an image."""
    text = str(err).split("; use a gradient-free method")[0]
    return text.removeprefix(f"cannot differentiate {OBJECTIVE_OUT!r}: ")


class _GradientSession:
    """The differentiated objective head of one layer and its session (close it when done).

    ``run(view, feeds)`` maps image-space views to the model input, runs forward and backward
    in one session call and returns each row's objective and d(objective)/d(view).
    """

    def __init__(self, inspector: inspection.Inspector, tensor: str, head: _Head) -> None:
        self.inspector, self.tensor, self.head = inspector, tensor, head
        self.imap = syn.input_map(inspector.spec, inspector.preprocessing)
        shape = inspector.spec.shape
        self.freed = bool(shape) and isinstance(shape[0], int)
        self._open(free_batch=self.freed)

    def _open(self, *, free_batch: bool) -> None:
        spec = self.inspector.spec
        model = _objective_model(self.inspector.model, spec.name, self.tensor, self.head,
                                 integer=self.imap.integer, free_batch=free_batch)
        try:
            grad = autodiff.differentiate(model, of=OBJECTIVE_OUT, wrt=[spec.name],
                                          keep_outputs=_head_outputs(self.head)[1:])
        except ModelError as err:
            raise ModelError(f"cannot optimize an input image for layer tensor "
                             f"{self.tensor!r}: {_gradient_problem(err)}; every op from the "
                             "input to the layer needs a gradient: pick a layer before the "
                             "op named") from err
        try:
            # the host maps images between calls: spinning threads would compete with it
            self.session = self.inspector.open_session(grad.model, spinning=False)
        except ModelError:
            if not free_batch:
                raise
            self._batch_fixed()  # e.g. a Reshape to a constant batch of 1 fails at load time
            return
        self.seed, self.gradient = grad.seed, grad.gradient(spec.name)
        self.dtype = self.session.input_types.get(spec.name, "float32")

    def _batch_fixed(self) -> None:
        """Reopen with the model's own fixed batch (one row per call)."""
        if self.head.diversity:
            raise InputError("the diversity term needs all images of a channel in one batch, "
                             "but this model's fixed batch axis cannot be freed; drop the "
                             "diversity")
        LOG.info("the model's batch axis cannot be freed; running one row per call")
        self.freed = False
        self._open(free_batch=False)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> _GradientSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, view: F32, feeds: dict[str, F32], *, unit: bool = False
            ) -> tuple[NDArray[np.float64], F32]:
        """Return the objective per row ``(R,)`` and its gradient w.r.t. ``view``."""
        values, grad = self.run_model(syn.to_model(self.imap, view), feeds, unit=unit)
        return values, syn.to_model_adjoint(self.imap, grad)

    def run_model(self, x: F32, feeds: dict[str, F32], *, unit: bool = False
                  ) -> tuple[NDArray[np.float64], F32]:
        """Return the objective per row and its gradient w.r.t. the float model input ``x``.

        With ``unit`` the values are the unit's objective without the diversity term (what the
        user asked to maximize); the gradient is always that of the full objective.
        """
        rows = len(x)
        inputs = {self.inspector.spec.name: x.astype(self.dtype, copy=False),
                  self.seed: np.ones(rows, np.float32), **feeds}
        names = _head_outputs(self.head)
        try:
            out = self.session.run(inputs, [*names, self.gradient])
        except (InputError, ModelError):
            if not self.freed or rows == 1:
                raise
            out = {}
        value = out.get(OBJECTIVE_OUT)
        if self.freed and (value is None or value.shape != (rows,)):
            self.close()
            self._batch_fixed()
            return self.run_model(x, feeds, unit=unit)
        grad = np.asarray(out[self.gradient], np.float32)
        return np.asarray(out[names[-1] if unit else OBJECTIVE_OUT], np.float64), grad

