"""The node emitter handed to every gradient rule: fresh names, constants, opset-aware helpers.

An :class:`Emitter` collects the backward nodes and initializers of one ``differentiate`` call.
Rules call it to add nodes; it never touches the forward graph. Every helper emits standard ONNX
ops valid at ``Emitter.opset`` (>= 11): ``ReduceSum``/``Squeeze``/``Unsqueeze`` take ``axes`` as
an attribute before opset 13 and as an input from 13.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.errors import ModelError
from onnx_featviz.structs import Shape

#: Float element types the transform differentiates through.
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                         TensorProto.BFLOAT16})
INT64_MAX = np.iinfo(np.int64).max


@dataclass
class Emitter:
    """Mutable builder of the backward graph of one ``differentiate`` call (never shared).

    ``types`` maps every known tensor to ``(elem_type, shape)`` (shape ``None`` when unknown);
    ``consts`` maps constant tensors (initializers, Constant outputs) to their values;
    ``active`` is the set of tensors that carry a gradient; ``dtype`` is the ONNX element type
    the backward runs in (FLOAT, or DOUBLE for float64 models).
    """

    opset: int
    dtype: int
    types: dict[str, tuple[int, Shape | None]]
    consts: dict[str, NDArray[Any]]
    active: frozenset[str]
    guided: bool = False
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[TensorProto] = field(default_factory=list)
    source: str = "seed"
    _count: int = 0
    _cache: dict[tuple[Any, ...], str] = field(default_factory=dict)

    # ----------------------------------------------------------------- naming, nodes
    def fresh(self, purpose: str) -> str:
        """Return a new deterministic tensor name derived from the current source tensor."""
        self._count += 1
        return f"featviz/grad/{self.source}/{purpose}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> str:
        """Emit one node and return its first output name."""
        return self.op_multi(op_type, inputs, outputs, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], outputs: int = 1,
                 **attrs: Any) -> list[str]:
        """Emit one node and return all its output names."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    # ----------------------------------------------------------------- constants
    def const(self, value: Any, dtype: Any = None) -> str:
        """Return an initializer holding ``value`` (compute dtype for floats unless ``dtype``)."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind == "f" or arr.dtype.kind == "b":
            arr = arr.astype(helper.tensor_dtype_to_np_dtype(self.dtype))
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        key = ("const", arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._cache:
            self._count += 1
            name = f"featviz/grad/const/{self._count}"
            self.inits.append(numpy_helper.from_array(arr, name))
            self._cache[key] = name
        return self._cache[key]

    def ints(self, values: Sequence[int]) -> str:
        """Return a 1-D int64 initializer."""
        return self.const(np.asarray(list(values), np.int64), np.int64)

    def value(self, name: str) -> NDArray[Any]:
        """Return the value of a constant tensor, or raise ModelError naming it."""
        if name not in self.consts:
            raise ModelError(
                f"tensor {name!r} must be a constant (initializer or Constant node) for its "
                "gradient rule; it is computed at run time; fold it into a constant first "
                "(for example with onnx-simplifier)"
            )
        return self.consts[name]

    # ----------------------------------------------------------------- types and shapes
    def shape(self, name: str) -> Shape | None:
        """Return the inferred shape of a tensor (``None`` when even the rank is unknown)."""
        return self.types.get(name, (0, None))[1]

    def rank(self, name: str) -> int:
        """Return the rank of a tensor, or raise ModelError when shape inference lost it."""
        shape = self.shape(name)
        if shape is None:
            raise ModelError(
                f"the rank of tensor {name!r} is unknown after shape inference; its gradient "
                "rule needs it; give the model's inputs fixed ranks"
            )
        return len(shape)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """Return the shape when every dimension is a known integer, else ``None``."""
        shape = self.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]

    def fwd(self, name: str) -> str:
        """Return the forward tensor ``name`` in the compute dtype (Cast once when needed)."""
        elem = self.types.get(name, (self.dtype, None))[0]
        if elem == self.dtype:
            return name
        key = ("fwd", name)
        if key not in self._cache:
            self._count += 1
            out = f"featviz/grad/cast/{name}"
            self.nodes.append(helper.make_node("Cast", [name], [out], name=out, to=self.dtype))
            self._cache[key] = out
        return self._cache[key]

    def shape_of(self, name: str) -> str:
        """Return a tensor holding ``Shape(name)`` (static constant when the shape is known)."""
        static = self.static_shape(name)
        if static is not None:
            return self.ints(static)
        key = ("shape", name)
        if key not in self._cache:
            self._cache[key] = self.op("Shape", [name])
        return self._cache[key]

    def reshape_like(self, grad: str, like: str) -> str:
        """Reshape ``grad`` to the shape of forward tensor ``like``."""
        return self.op("Reshape", [grad, self.shape_of(like)])

    def zeros_like(self, like: str) -> str:
        """Return a compute-dtype zero tensor shaped like forward tensor ``like``."""
        zero = helper.make_tensor("value", self.dtype, [1], [0])
        return self.op("ConstantOfShape", [self.shape_of(like)], value=zero)

    # ----------------------------------------------------------------- opset-aware ops
    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceSum over ``axes`` (non-empty)."""
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op("ReduceSum", [x], axes=list(axes), keepdims=int(keepdims))

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceMean over ``axes`` (non-empty); axes is an input from opset 18."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        """Unsqueeze ``axes`` (positions in the output)."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def where(self, cond: str, a: str, b: str) -> str:
        """Elementwise select."""
        return self.op("Where", [cond, a, b])

    def mul(self, a: str, b: str) -> str:
        """Elementwise product."""
        return self.op("Mul", [a, b])

    def unbroadcast(self, grad: str, out: str, target: str) -> str:
        """Sum ``grad`` (shaped like the broadcast result ``out``) back to ``target``'s shape.

        Axes are reduced when they are leading extra axes or when ``target`` has a static 1 where
        ``out`` does not; symbolic target dims are taken as not broadcast.
        """
        tshape, oshape = self.shape(target), self.shape(out)
        if tshape is None or oshape is None:
            raise ModelError(
                f"cannot reduce the gradient of broadcast {out!r} to {target!r}: ranks unknown "
                "after shape inference; give the model's inputs fixed ranks"
            )
        if tuple(tshape) == tuple(oshape):
            return grad
        lead = len(oshape) - len(tshape)
        axes = list(range(lead)) + [
            lead + i for i, d in enumerate(tshape) if d == 1 and oshape[lead + i] != 1
        ]
        if axes:
            grad = self.reduce_sum(grad, axes, keepdims=True)
        return self.reshape_like(grad, target)


def add_initializers(model: onnx.ModelProto, inits: Sequence[TensorProto]) -> None:
    """Append initializers to a work copy; IR < 4 also lists them as graph inputs (required)."""
    model.graph.initializer.extend(inits)
    if model.ir_version < 4:
        model.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Return attribute ``name`` of ``node`` (strings decoded), or ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
