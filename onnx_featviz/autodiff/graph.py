"""Reverse-mode differentiation of an ONNX graph as a graph transform.

``differentiate`` returns a copy of a model that, besides the forward tensors asked for, computes
the vector-Jacobian product ``seed^T . d(of)/d(wrt)`` for each ``wrt`` tensor, with ``seed`` a new
graph input shaped like ``of``. One session on the result serves any seed (any target class) and
any batch size. Gradients are standard ONNX nodes, so onnxruntime's inference build runs them.

Opset policy: the backward graph needs default-domain opset >= 11 (ScatterElements, Pad and Slice
with inputs), and >= 16 when a scatter must add duplicates (overlapping MaxPool windows, Gather
with repeated indices). A model already at that opset keeps it. Otherwise its opset is raised to
the needed one by ``opset.upgrade_opset``, which keeps every node's meaning (ops whose semantics
changed are rewritten exactly, e.g. pre-13 Softmax, Dropout, legacy BatchNormalization
attributes, Upsample) or raises ModelError. The IR version is always kept.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from onnx_featviz.autodiff.emit import FLOAT_TYPES, Emitter, add_initializers
from onnx_featviz.autodiff.opset import default_opset, upgrade_opset
from onnx_featviz.autodiff.rules import RULES, min_opset
from onnx_featviz.autodiff.shapes import Types, constants, infer_types
from onnx_featviz.errors import LayerNotFoundError, ModelError
from onnx_featviz.graph.modules import node_modules
from onnx_featviz.structs import Shape

LOG = logging.getLogger(__name__)
GRAD_PREFIX = "featviz/grad/"
#: Ops whose outputs never carry a gradient even when their inputs do.
NON_DIFFERENTIABLE = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "TopK_indices",
                                "ConstantOfShape", "EyeLike", "RandomNormalLike",
                                "RandomUniformLike", "Multinomial"})
#: Checker message of a forward op deprecated at the model's opset; the backward emits none.
DEPRECATED = "is deprecated in domain_version"
GRADIENT_FREE = "Score-CAM, Ablation-CAM, Eigen-CAM or occlusion sensitivity"


@dataclass(frozen=True, slots=True)
class GradModel:
    """A model that also computes gradients.

    ``model`` takes the original inputs plus ``seed`` (same dtype and shape as the ``of``
    tensor) and outputs the forward tensors in ``outputs`` (``of`` first, then the requested
    ``keep_outputs``), then one float32 (float64 for float64 models) gradient per ``wrt`` tensor,
    shaped like it; ``gradients`` maps each wrt tensor to its output name ``featviz/grad/<wrt>``.
    """

    model: onnx.ModelProto
    seed: str
    gradients: tuple[tuple[str, str], ...]
    outputs: tuple[str, ...]

    def gradient(self, wrt: str) -> str:
        """Return the output name holding the gradient with respect to ``wrt``."""
        for name, out in self.gradients:
            if name == wrt:
                return out
        raise LayerNotFoundError(f"no gradient for {wrt!r}; gradients exist for "
                                 f"{[name for name, _ in self.gradients]}")


def grad_name(wrt: str) -> str:
    """Return the graph output name of the gradient with respect to ``wrt``."""
    return f"{GRAD_PREFIX}{wrt}"


def differentiate(model: onnx.ModelProto, of: str, wrt: Sequence[str], *,
                  seed_name: str = "featviz/seed", guided: bool = False,
                  keep_outputs: Sequence[str] = ()) -> GradModel:
    """Return a copy of ``model`` that also computes ``seed^T . d(of)/d(wrt)``.

    Args:
        model: the model (not modified).
        of: the tensor to differentiate (e.g. logits ``(N, K)`` or a conv output ``(N, C, H, W)``).
        wrt: tensors to differentiate with respect to (graph inputs or activations, not weights).
        seed_name: name of the new graph input, same dtype/shape as ``of`` (dynamic dims kept).
        guided: guided backprop: ReLU-family rules pass only positive gradients through
            positive inputs (grad_in = (x > 0) * (g > 0) * g).
        keep_outputs: further forward tensors to expose as outputs (after ``of``).

    Returns:
        GradModel with the transformed model; the caller's model is byte-identical afterwards.

    Raises:
        LayerNotFoundError: ``of``, a ``wrt`` or a ``keep_outputs`` tensor does not exist.
        ModelError: an op on the path has no gradient rule (each op and node is listed), a wrt
            is a weight or not on a path to ``of``, or the opset cannot be raised exactly.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    wrt = list(dict.fromkeys(wrt))
    if not wrt:
        raise ModelError("wrt is empty; name at least one tensor to differentiate with respect "
                         "to (the image input or a conv output)")
    types = infer_types(work)
    _check_names(work, types, of, wrt, keep_outputs, seed_name)
    path = plan(work, types, of, wrt)
    needed = max([11] + [min_opset(n, constants(work)) for n in path])
    opset = default_opset(work)
    if opset < needed:
        LOG.info("raising the default opset from %d to %d for the backward graph", opset, needed)
        work = upgrade_opset(work, needed, types)
        types = infer_types(work)
        path = plan(work, types, of, wrt)
        opset = needed
    return _build(work, types, path, of, wrt, opset=opset, seed_name=seed_name, guided=guided,
                  keep_outputs=keep_outputs)


def _all_tensors(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = [i.name for i in graph.input] + [o for n in graph.node for o in n.output]
    return list(dict.fromkeys(n for n in names if n))


def _missing(model: onnx.ModelProto, name: str, role: str) -> LayerNotFoundError:
    near = difflib.get_close_matches(name, _all_tensors(model), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(near)}" if near else "no close matches"
    return LayerNotFoundError(f"no tensor named {name!r} ({role}) in the model; {hint}; all "
                              "names are the graph inputs and node outputs (ModelInfo.layers)")


def _check_names(model: onnx.ModelProto, types: Types, of: str, wrt: Sequence[str],
                 keep: Sequence[str], seed_name: str) -> None:
    """Validate the tensor names given to ``differentiate``."""
    known = set(_all_tensors(model))
    weights = {i.name for i in model.graph.initializer} | set(constants(model))
    for name, role in [(of, "of")] + [(w, "wrt") for w in wrt] + [(k, "keep_outputs")
                                                                  for k in keep]:
        if name in weights and role == "wrt":
            raise ModelError(f"wrt tensor {name!r} is a weight (initializer or Constant); "
                             "weight gradients are not supported; differentiate with respect "
                             "to the image input or an activation such as a conv output")
        if name not in known:
            raise _missing(model, name, role)
    for name, role in [(of, "of")] + [(w, "wrt") for w in wrt]:
        if types.get(name, (0, None))[0] not in FLOAT_TYPES:
            raise ModelError(f"{role} tensor {name!r} is not a float tensor (element type "
                             f"{types.get(name, (0, None))[0]}); gradients need float tensors")
    if seed_name in known or seed_name in weights:
        raise ModelError(f"seed name {seed_name!r} already names a tensor in the model; "
                         "pass another seed_name")


def _active(model: onnx.ModelProto, types: Types, wrt: Sequence[str]) -> set[str]:
    """Tensors that depend on a wrt tensor through differentiable float values."""
    active = set(wrt)
    for node in model.graph.node:
        if node.op_type in NON_DIFFERENTIABLE or not any(i in active for i in node.input):
            continue
        for out in node.output:
            elem = types.get(out, (0, None))[0]
            if out and (elem in FLOAT_TYPES or elem == 0 or node.op_type == "QuantizeLinear"):
                active.add(out)
    return active


def plan(model: onnx.ModelProto, types: Types, of: str, wrt: Sequence[str]
         ) -> list[onnx.NodeProto]:
    """Return the nodes on a path from a wrt tensor to ``of``, in graph order.

    Raises:
        ModelError: a wrt tensor is not on a path to ``of``, or path nodes have no rule.
    """
    active = _active(model, types, wrt)
    needed = {of}
    path: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if not any(o in needed and o in active for o in node.output):
            continue
        inputs = [i for i in node.input if i in active]
        if inputs:
            path.append(node)
            needed.update(inputs)
    stray = [w for w in wrt if w not in needed]
    if stray:
        raise ModelError(f"{of!r} does not depend on wrt tensor(s) {stray}; pick tensors "
                         f"computed before {of!r} on its path (e.g. a conv output it uses)")
    _check_rules(model, path, of)
    return list(reversed(path))


def _check_rules(model: onnx.ModelProto, path: Sequence[onnx.NodeProto], of: str) -> None:
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    lacking = [n for n in path if n.domain not in ("", "ai.onnx") or n.op_type not in RULES]
    if not lacking:
        return
    modules = node_modules(model)  # where the exporter recorded module paths
    missing = []
    for n in lacking:
        name = n.name or f"{n.op_type}_{index[id(n)]}"
        module = modules.get(n.name) or next((modules[o] for o in n.output if o in modules), "")
        where = f", module {module!r}" if module else ""
        domain = (n.domain + ".") if n.domain not in ("", "ai.onnx") else ""
        missing.append(f"{domain}{n.op_type} (node {name!r}{where})")
    raise ModelError(
        f"cannot differentiate {of!r}: no gradient rule for {', '.join(missing)}; use a "
        f"gradient-free method ({GRADIENT_FREE}) or a layer after these ops")


def _value_info(name: str, elem: int, shape: Shape | None) -> onnx.ValueInfoProto:
    dims: list[int | str | None] | None = None if shape is None else [
        d if isinstance(d, int | str) else None for d in shape]
    return helper.make_tensor_value_info(name, elem, dims)


def _accumulate(ctx: Emitter, grads: dict[str, list[str]], name: str) -> str | None:
    """Return the total gradient of ``name`` (Sum of its contributions, emitted once)."""
    parts = grads.get(name)
    if not parts:
        return None
    if len(parts) > 1:
        ctx.source = name
        parts[:] = [ctx.op("Sum", parts)]
    return parts[0]


def _build(model: onnx.ModelProto, types: Types, path: Sequence[onnx.NodeProto], of: str,
           wrt: Sequence[str], *, opset: int, seed_name: str, guided: bool,
           keep_outputs: Sequence[str]) -> GradModel:
    """Emit the backward nodes and assemble the result model."""
    of_elem, of_shape = types[of]
    dtype = TensorProto.DOUBLE if of_elem == TensorProto.DOUBLE else TensorProto.FLOAT
    ctx = Emitter(opset=opset, dtype=dtype, types=types, consts=constants(model),
                  active=frozenset(_active(model, types, wrt)), guided=guided)
    seed = seed_name
    if of_elem != dtype:
        seed = ctx.op("Cast", [seed_name], to=dtype)
    grads: dict[str, list[str]] = {of: [seed]}
    fused = {} if guided else _relu_pools(path, of, wrt)
    for node in reversed(path):
        out_grads = [_accumulate(ctx, grads, o) for o in node.output]
        if all(g is None for g in out_grads):
            continue
        ctx.source = node.output[0]
        relu = fused.get(id(node))
        if relu is not None:
            node, in_grads = relu, _relu_pool_vjp(ctx, node, out_grads)
        else:
            in_grads = RULES[node.op_type](ctx, node, out_grads)
        for name, g in zip(node.input, in_grads, strict=False):
            if g is not None and name in ctx.active:
                grads.setdefault(name, []).append(g)
    outputs = tuple(dict.fromkeys([of, *keep_outputs]))
    pairs: list[tuple[str, str]] = []
    grad_infos = []
    for w in wrt:
        ctx.source = w
        total = _accumulate(ctx, grads, w) or ctx.zeros_like(w)
        ctx.nodes.append(helper.make_node("Identity", [total], [grad_name(w)],
                                          name=grad_name(w)))
        pairs.append((w, grad_name(w)))
        grad_infos.append(_value_info(grad_name(w), dtype, types[w][1]))
    return GradModel(_assemble(model, ctx, types, seed_name, of_elem, of_shape, outputs,
                               grad_infos), seed_name, tuple(pairs), outputs)


def _relu_pools(path: Sequence[onnx.NodeProto], of: str, wrt: Sequence[str]
                ) -> dict[int, onnx.NodeProto]:
    """Map ``id(MaxPool)`` to the Relu before it where the Relu's output feeds nothing else on
    the path (and is not ``of`` or a wrt): those pairs take one backward step together.

    Relu and max commute, so the Relu's mask can be applied to the pooled gradient: the window's
    argmax reads ``relu(x) = y_pool``, and ``x > 0`` there exactly when ``y_pool > 0``. The mask is
    then computed at the pooled size (a quarter of the pixels for 2x2 / 3x3 stride-2 pools)
    instead of the Relu's, with the same result as the two rules one after the other.
    """
    producers = {n.output[0]: n for n in path if n.op_type == "Relu" and n.output}
    readers: dict[str, int] = {}
    for node in path:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    pairs: dict[int, onnx.NodeProto] = {}
    for node in path:
        if node.op_type != "MaxPool" or not node.input:
            continue
        relu = producers.get(node.input[0])
        x = node.input[0]
        if relu is not None and readers.get(x) == 1 and x != of and x not in wrt:
            pairs[id(node)] = relu
    return pairs


def _relu_pool_vjp(ctx: Emitter, pool: onnx.NodeProto, grads: Sequence[str | None]
                   ) -> list[str | None]:
    """Gradient of ``MaxPool(Relu(x))`` for ``x``: the pooled gradient masked by ``y_pool > 0``,
    scattered to the argmax positions (see ``_relu_pools``)."""
    g = grads[0]
    assert g is not None
    mask = ctx.op("Greater", [ctx.fwd(pool.output[0]), ctx.const(0.0)])
    masked = ctx.mul(g, ctx.op("Cast", [mask], to=ctx.dtype))
    return RULES["MaxPool"](ctx, pool, [masked, *grads[1:]])[:1]


def _assemble(model: onnx.ModelProto, ctx: Emitter, types: Types, seed_name: str,
              of_elem: int, of_shape: Shape | None, outputs: Sequence[str],
              grad_infos: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """Add the backward nodes, the seed input and the new outputs to ``model`` (a work copy)."""
    graph = model.graph
    graph.node.extend(ctx.nodes)
    add_initializers(model, ctx.inits)
    graph.input.append(_value_info(seed_name, of_elem, of_shape))
    del graph.output[:]
    for name in outputs:
        elem, shape = types.get(name, (0, None))
        graph.output.append(_value_info(name, elem, shape))
    graph.output.extend(grad_infos)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        if DEPRECATED in str(err):  # a forward op (GroupNormalization-18): onnxruntime runs it
            LOG.warning("the gradient graph keeps a deprecated forward op: %s", err)
            return model
        if _EXTERNAL_FILE in str(err) and _has_external(model):
            # weights left on disk: the checker looks for their file beside the working folder,
            # onnxruntime reads them from the model's folder (runtime.Session external_folder)
            return model
        raise ModelError(f"the gradient graph failed the ONNX checker: {err}; please report "
                         "this model's op list") from err
    return model


_EXTERNAL_FILE = "should be stored in"


def _has_external(model: onnx.ModelProto) -> bool:
    """Return whether an initializer of the main graph keeps its data in an external file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


TOP1_PREFIX = "featviz/top1/"


def seed_top1(grad: GradModel, *, classes: str | None = None) -> GradModel:
    """Return a copy of ``grad`` whose seed is each row's one-hot arg-max of ``of`` (no input).

    Explaining every row's best class then needs one session call instead of a forward pass
    to pick the classes and a second one with the seed. The seed input is removed; an int64
    output ``featviz/top1/<of>`` (N,) holds the classes chosen (ties: the first index, as
    numpy's ``argmax``). ``of`` is flattened per row, so (N, K, 1, 1) heads work too.

    Args:
        grad: a ``differentiate`` result (not modified).
        classes: instead of the arg-max, a new int64 (N,) graph input of this name gives each
            row's class (OneHot's rules: an index outside ``-K..K-1`` gives an all-zero seed,
            a negative one counts from the end: check the classes).

    Returns:
        The new ``GradModel`` (``seed`` is empty: nothing to feed but ``classes``).
    """
    model = onnx.ModelProto()
    model.CopyFrom(grad.model)
    graph = model.graph
    of = grad.outputs[0]
    seed = next(v for v in graph.input if v.name == grad.seed)
    pre = f"{TOP1_PREFIX}{of}"
    nodes = _top1_seed_nodes(of, pre, grad.seed, seed.type.tensor_type.elem_type)
    if classes is not None:  # the given classes replace the arg-max
        at = next(i for i, n in enumerate(nodes) if n.op_type == "ArgMax")
        nodes[at] = helper.make_node("Identity", [classes], [pre], name=pre)
    first = next(i for i, n in enumerate(graph.node) if grad.seed in n.input)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend([*old[:first], *nodes, *old[first:]])
    kept = [v for v in graph.input if v.name != grad.seed]
    if classes is not None:
        kept.append(helper.make_tensor_value_info(classes, TensorProto.INT64, [None]))
    del graph.input[:]
    graph.input.extend(kept)
    graph.output.append(helper.make_tensor_value_info(pre, TensorProto.INT64, [None]))
    return GradModel(model, "", grad.gradients, (*grad.outputs, pre))


def _top1_seed_nodes(of: str, pre: str, seed: str, elem: int) -> list[onnx.NodeProto]:
    """Nodes computing ``seed`` = one-hot arg-max of ``of`` per row (``pre``: the classes)."""

    def const(key: str, value: list[int]) -> str:
        return _const_node(nodes, f"{pre}/{key}", value)

    nodes: list[onnx.NodeProto] = []
    flat = f"{pre}/flat"
    nodes.append(helper.make_node("Reshape", [of, const("flat_shape", [0, -1])], [flat],
                                  name=flat))
    nodes.append(helper.make_node("ArgMax", [flat], [pre], name=pre, axis=1, keepdims=0))
    shape = f"{pre}/shape"
    nodes.append(helper.make_node("Shape", [flat], [shape], name=shape))
    depth = f"{pre}/depth"
    nodes.append(helper.make_node("Gather", [shape, const("one", [1])], [depth], name=depth,
                                  axis=0))
    onehot = f"{pre}/onehot"
    values = f"{pre}/values"
    nodes.append(helper.make_node("Constant", [], [values], name=values,
                                  value=helper.make_tensor(values, TensorProto.FLOAT, [2],
                                                           [0.0, 1.0])))
    nodes.append(helper.make_node("OneHot", [pre, depth, values], [onehot], name=onehot,
                                  axis=-1))
    cast = f"{pre}/cast"
    nodes.append(helper.make_node("Cast", [onehot], [cast], name=cast, to=elem))
    full = f"{pre}/of_shape"
    nodes.append(helper.make_node("Shape", [of], [full], name=full))
    nodes.append(helper.make_node("Reshape", [cast, full], [seed], name=seed))
    return nodes


def _const_node(nodes: list[onnx.NodeProto], name: str, value: list[int]) -> str:
    tensor = helper.make_tensor(name, TensorProto.INT64, [len(value)], value)
    nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
    return name
