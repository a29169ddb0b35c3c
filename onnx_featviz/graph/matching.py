"""Pair the tensors of two models that compute the same thing (pure: ModelProtos in, names out).

Model B is usually a deployment form of model A: the same file on another execution provider,
a float16 conversion, or an int8 quantization in QDQ or QOperator (QLinearConv) format. A tensor
of A is paired with a tensor of B in this order:

1. **By name.** The same tensor name exists in B (shapes, when both are known, must agree). When
   B's tensor only feeds a QuantizeLinear -> DequantizeLinear pair (QDQ format), the
   DequantizeLinear output is taken instead: that is the value B's next layer really reads.
   A float16 tensor is compared cast to float32 (``how="fp16"``); an int8 tensor made by
   QuantizeLinear or a QLinear op is compared dequantized with its own scale / zero point
   (``how="qlinear"``).
2. **By structure.** The conv layers of both models are paired (same node name and weight shape
   first, then in graph order by weight shape), and a conv's output or activation is paired with
   the corresponding tensor of B's conv: the DequantizeLinear output after a QDQ conv
   (``how="qdq"``), the int8 output of a QLinearConv (``how="qlinear"``), or a float16 conv
   output (``how="fp16"``). Quantizers remove a Relu/Clip that follows a conv (the quantized
   range clamps instead); then B's conv output is paired with A's *activation* and A's
   pre-activation output is reported unmatched, with the reason.

Everything that could not be paired is listed in ``Matching.unmatched`` with a reason.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
import onnx.numpy_helper

from onnx_featviz.graph import catalog as catalog
from onnx_featviz.structs import ACTIVATION_OPS, Layer, ModelInfo, Shape

#: How a pair was found (``TensorPair.how``).
MATCH_KINDS = ("name", "qdq", "qlinear", "fp16", "conv-order", "position")
#: Numeric precision classes ``model_precision`` returns, least to most lossy.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
    "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
})
_INT_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int4", "uint4"})
_HALF_DTYPES = frozenset({"float16", "bfloat16"})
#: onnxruntime's QOperator quantizer names the int8 form of tensor T ``T_quantized``.
_QOP_SUFFIX = "_quantized"


@dataclass(frozen=True, slots=True)
class TensorPair:
    """A tensor of model A and its counterpart in model B.

    ``b`` is the tensor's name in B's graph; an int8 one is compared dequantized and a float16
    one cast to float32. ``layer`` is the A-side layer (node) name; ``how`` one of
    ``MATCH_KINDS``; ``note`` says what else the reader should know (e.g. a fused activation).
    """

    a: str
    b: str
    layer: str
    how: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A tensor (``model`` ``"a"`` or ``"b"``) without a counterpart, and why."""

    model: str
    tensor: str
    layer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Matching:
    """Result of ``match_models``: pairs in A's graph order, graph outputs, unmatched tensors."""

    pairs: tuple[TensorPair, ...]
    outputs: tuple[TensorPair, ...]
    unmatched: tuple[Unmatched, ...]


@dataclass(frozen=True, slots=True)
class _Side:
    """Lookup tables of one model."""

    info: ModelInfo
    types: Mapping[str, tuple[str, Shape | None]]
    producers: Mapping[str, onnx.NodeProto]
    consumers: Mapping[str, tuple[onnx.NodeProto, ...]]
    order: Mapping[str, int]
    layer_of: Mapping[str, str]
    known: frozenset[str]


def match_models(
    model_a: onnx.ModelProto,
    model_b: onnx.ModelProto,
    *,
    conv_layers: Sequence[str] | None = None,
    tensors: Sequence[str] = (),
    info_a: ModelInfo | None = None,
    info_b: ModelInfo | None = None,
) -> Matching:
    """Pair tensors of ``model_a`` with tensors of ``model_b`` (see the module docstring).

    Args:
        model_a: the reference model (not modified).
        model_b: the model compared with it (not modified).
        conv_layers: node names of A's conv layers to pair, one tensor each: the conv output,
            or its activation where B fused the activation into the conv. None: every
            exposable conv layer of A; ``()``: none.
        tensors: A-side tensor names to pair exactly as named.
        info_a: ``catalog.read_catalog(model_a)`` when the caller has it (saves a pass).
        info_b: likewise for ``model_b``.

    Returns:
        ``Matching`` with pairs in A's graph order (each A tensor once), A's graph outputs
        paired by name (else by position), and the unmatched tensors of A (and, when pairing
        every conv layer, the conv layers of B nothing was paired with).
    """
    side_a, side_b = _side(model_a, info_a), _side(model_b, info_b)
    convs = _pair_convs(side_a, side_b)
    wanted = (side_a.info.conv_layers if conv_layers is None
              else [_conv_layer(side_a, name) for name in conv_layers])
    found: list[TensorPair | Unmatched] = [
        _match_conv(layer, convs.get(layer.name), side_a, side_b) for layer in wanted]
    found += [_match_tensor(t, convs, side_a, side_b) for t in tensors]
    pairs = _unique_pairs([f for f in found if isinstance(f, TensorPair)], side_a)
    unmatched = [f for f in found if isinstance(f, Unmatched)]
    if conv_layers is None:
        unmatched += _unpaired_b_convs(side_b, convs, pairs)
    return Matching(tuple(pairs), _match_outputs(side_a, side_b), tuple(unmatched))


def model_precision(model: onnx.ModelProto) -> str:
    """Return the lossiest numeric format the model computes in (one of ``PRECISIONS``).

    ``"int8"`` when it has quantization ops (QuantizeLinear, QLinear*, ConvInteger...),
    ``"fp16"``/``"bf16"`` when any initializer, graph input or Cast target is float16/bfloat16,
    else ``"fp32"``.
    """
    graph = model.graph
    if any(n.op_type in _QUANT_OPS or n.op_type.startswith("QLinear") for n in graph.node):
        return "int8"
    elems = {int(t.data_type) for t in graph.initializer}
    elems |= {int(v.type.tensor_type.elem_type) for v in graph.input}
    elems |= {int(a.i) for n in graph.node if n.op_type == "Cast"
              for a in n.attribute if a.name == "to"}
    if onnx.TensorProto.FLOAT16 in elems:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in elems:
        return "bf16"
    return "fp32"


#: Weight input index of each integer op that onnxruntime runs as a u8 x s8 GEMM on x86.
_INT8_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1,
                      "MatMulInteger": 1}
#: Float ops whose weight (input 1) a QDQ model feeds from a DequantizeLinear; onnxruntime fuses
#: the pair into the integer kernel.
_QDQ_WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: Largest |int8 weight| whose pairwise u8 x s8 sums fit int16: 255 * (64 + 64) <= 32767.
_INT16_SAFE = 64


def int8_saturating_weights(model: onnx.ModelProto) -> tuple[str, ...]:
    """Return the int8 weight tensors that overflow int16 pair sums in non-VNNI u8 x s8 kernels.

    On x86 CPUs without VNNI, onnxruntime's U8S8 GEMM multiplies uint8 activations by int8
    weights with ``vpmaddubsw``, which adds two products in saturating int16. Weights quantized
    to the full int8 range (|w| > 64) overflow it; ``reduce_range=True`` (7-bit weights) or
    uint8 weights do not. Weights stored in external data that is not loaded are skipped.

    Args:
        model: any ONNX model (QDQ or QOperator format, or float: then nothing is returned).

    Returns:
        Initializer names in graph order, each read as int8 with some |value| > 64.
    """
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    for node in model.graph.node:
        weight = _int8_weight_name(node, producers)
        if weight is None or weight in names or weight not in inits:
            continue
        tensor = inits[weight]
        if tensor.data_type != onnx.TensorProto.INT8 or _is_external(tensor):
            continue
        values = onnx.numpy_helper.to_array(tensor)
        if values.size and int(abs(values.astype("int16")).max()) > _INT16_SAFE:
            names.append(weight)
    return tuple(names)


def _int8_weight_name(node: onnx.NodeProto,
                      producers: Mapping[str, onnx.NodeProto]) -> str | None:
    """The int8 weight a GEMM-like node reads, through a DequantizeLinear in QDQ form."""
    if node.op_type in _INT8_WEIGHT_INPUT:
        index = _INT8_WEIGHT_INPUT[node.op_type]
        return str(node.input[index]) if len(node.input) > index else None
    if node.op_type in _QDQ_WEIGHT_OPS and len(node.input) > 1:
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            return str(dq.input[0])
    return None


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data


# -- lookup tables ------------------------------------------------------------------------------
def _side(model: onnx.ModelProto, info: ModelInfo | None) -> _Side:
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(i for i in node.input if i):
            consumers.setdefault(name, []).append(node)
    names = catalog.model_names(model)
    order = {v.name: -1 for v in graph.input}
    layer_of = {v.name: v.name for v in graph.input}
    for index, (node, name) in enumerate(zip(graph.node, names, strict=True)):
        for out in (o for o in node.output if o):
            order[out], layer_of[out] = index, name
    return _Side(
        info=info if info is not None else catalog.read_catalog(model),
        types=catalog.tensor_types(model),
        producers={o: n for n in graph.node for o in n.output if o},
        consumers={k: tuple(v) for k, v in consumers.items()},
        order=order,
        layer_of=layer_of,
        known=frozenset(order),
    )


def _conv_layer(side: _Side, name: str) -> Layer:
    layer = side.info.layer(name)
    assert layer.is_conv, f"{name!r} is not a conv layer"  # the caller passes conv names only
    return layer


# -- conv pairing -------------------------------------------------------------------------------
def _signature(layer: Layer, side: _Side) -> Shape | None:
    """The conv's weight shape (O, I/groups, kH, ...) when known, else None."""
    if layer.weight is None:
        return None
    return side.types.get(layer.weight, ("", None))[1]


def _pair_convs(side_a: _Side, side_b: _Side) -> dict[str, Layer]:
    """A conv node name -> B conv layer: same name and weight shape first, then graph order."""
    convs_a, convs_b = side_a.info.conv_layers, side_b.info.conv_layers
    sig_a = [_signature(lay, side_a) for lay in convs_a]
    sig_b = [_signature(lay, side_b) for lay in convs_b]
    pairs: dict[str, Layer] = {}
    by_name = {lay.name: (i, lay) for i, lay in enumerate(convs_b)}
    used: set[int] = set()
    for i, lay in enumerate(convs_a):
        hit = by_name.get(lay.name)
        if hit is not None and sig_a[i] == sig_b[hit[0]]:
            pairs[lay.name] = hit[1]
            used.add(hit[0])
    rest_a = [i for i, lay in enumerate(convs_a) if lay.name not in pairs]
    rest_b = [j for j in range(len(convs_b)) if j not in used]
    keys_a = [str(sig_a[i]) for i in rest_a]
    keys_b = [str(sig_b[j]) for j in rest_b]
    blocks = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False).get_matching_blocks()
    for block in blocks:
        for k in range(block.size):
            pairs[convs_a[rest_a[block.a + k]].name] = convs_b[rest_b[block.b + k]]
    return pairs


def _conv_how(layer_b: Layer) -> str:
    if layer_b.op_type == "QLinearConv":
        return "qlinear"
    if layer_b.raw_output is not None:
        return "qdq"
    if layer_b.dtype in _HALF_DTYPES:
        return "fp16"
    return "conv-order"


def _structural(tensor: str, layer_a: Layer, layer_b: Layer) -> TensorPair | str:
    """Pair an A conv's output or activation with B's conv (``str``: why not)."""
    fused_in_b = layer_a.activation is not None and layer_b.activation is None
    fused_in_a = layer_b.activation is not None and layer_a.activation is None
    how = _conv_how(layer_b)
    if tensor == layer_a.output:
        if fused_in_b:
            return (f"model B fuses the {layer_a.activation_op} after conv {layer_a.name!r} into "
                    f"its conv {layer_b.name!r}, so B has no pre-activation tensor; compare "
                    f"the activation {layer_a.activation!r} instead")
        target = layer_b.activation if fused_in_a else layer_b.output
        note = f"{layer_b.activation_op} applied in B only" if fused_in_a else ""
        return TensorPair(tensor, str(target), layer_a.name, how, note)
    if layer_b.activation is not None:
        return TensorPair(tensor, layer_b.activation, layer_a.name, how)
    note = f"B's conv {layer_b.name!r} includes the {layer_a.activation_op}" if fused_in_b else ""
    return TensorPair(tensor, layer_b.output, layer_a.name, how, note)


def _match_conv(layer: Layer, layer_b: Layer | None, side_a: _Side,
                side_b: _Side) -> TensorPair | Unmatched:
    """One tensor for an A conv layer: its output, else its activation (fused in B)."""
    found = _by_name(layer.output, side_a, side_b)
    if isinstance(found, str) and layer_b is not None:
        found = _structural(layer.output, layer, layer_b)
        if isinstance(found, str) and layer.activation is not None:
            found = _structural(layer.activation, layer, layer_b)
    elif isinstance(found, str) and layer.activation is not None:
        by_activation = _by_name(layer.activation, side_a, side_b)
        if isinstance(by_activation, TensorPair):
            found = by_activation
    if isinstance(found, TensorPair):
        return found
    if layer_b is None:
        found = (f"no conv layer of model B has the name {layer.name!r} or the weight shape "
                 f"{_signature(layer, side_a)} at this position, and {found}")
    return Unmatched("a", layer.output, layer.name, found)


def _unpaired_b_convs(side_b: _Side, convs: Mapping[str, Layer],
                      pairs: Sequence[TensorPair]) -> list[Unmatched]:
    used = {p.b for p in pairs}
    paired = {lay.name for lay in convs.values()}
    return [Unmatched("b", lay.output, lay.name,
                      "no conv layer of model A corresponds to this conv layer of model B")
            for lay in side_b.info.conv_layers
            if lay.name not in paired and lay.output not in used and lay.activation not in used]


# -- tensors ------------------------------------------------------------------------------------
def _match_tensor(tensor: str, convs: Mapping[str, Layer], side_a: _Side,
                  side_b: _Side) -> TensorPair | Unmatched:
    found = _by_name(tensor, side_a, side_b)
    if isinstance(found, TensorPair):
        return found
    fused_pair = _activation_fused_in_b(tensor, side_a, side_b)
    if fused_pair is not None:
        return fused_pair
    found = _fused_activation(tensor, side_a, side_b) or found
    for layer in side_a.info.conv_layers:
        layer_b = convs.get(layer.name)
        if layer_b is not None and tensor in (layer.output, layer.activation):
            structural = _structural(tensor, layer, layer_b)
            if isinstance(structural, TensorPair):
                return structural
            found = structural
    return Unmatched("a", tensor, side_a.layer_of.get(tensor, tensor), found)


def _fused_activation(tensor: str, side_a: _Side, side_b: _Side) -> str | None:
    """Why ``tensor`` is missing when B computes its activation inside the producing op.

    Quantizers remove a Relu/Clip after a Conv or Gemm and let the op write the activation's
    tensor name; recognized when ``tensor`` only feeds an activation whose output B makes with
    the op type that makes ``tensor`` in A.
    """
    users = side_a.consumers.get(tensor, ())
    producer = side_a.producers.get(tensor)
    if len(users) != 1 or users[0].op_type not in ACTIVATION_OPS or producer is None:
        return None
    activation = users[0].output[0]
    maker = side_b.producers.get(activation)
    if maker is None or maker.op_type != producer.op_type:
        return None
    return (f"model B fuses the {users[0].op_type} after {side_a.layer_of[tensor]!r} into its "
            f"{maker.op_type} {maker.name or activation!r}, so B has no pre-activation tensor; "
            f"compare the activation {activation!r} instead")


def _fused_into(tensor: str, side_a: _Side, side_b: _Side) -> onnx.NodeProto | None:
    """A's activation node after ``tensor`` when B (QOperator naming) computes it inside the op
    that writes ``<tensor>_quantized``: ``tensor`` feeds only that activation, and B has neither
    the activation's tensor nor its ``_quantized`` form (the quantized range clamps instead)."""
    users = side_a.consumers.get(tensor, ())
    if len(users) != 1 or users[0].op_type not in ACTIVATION_OPS or not users[0].output:
        return None
    out = users[0].output[0]
    if out in side_b.known or out + _QOP_SUFFIX in side_b.known:
        return None
    return users[0]


def _activation_fused_in_b(tensor: str, side_a: _Side, side_b: _Side) -> TensorPair | None:
    """Pair A's activation output with B's ``<input>_quantized`` when B fused the activation."""
    node = side_a.producers.get(tensor)
    if node is None or node.op_type not in ACTIVATION_OPS or not node.input:
        return None
    source = node.input[0]
    name = source + _QOP_SUFFIX
    if (name not in side_b.known or _fused_into(source, side_a, side_b) is not node
            or catalog.quant_params_node(name, side_b.producers) is None):
        return None
    maker = side_b.producers[name]
    return TensorPair(tensor, name, side_a.layer_of.get(tensor, tensor), "qlinear",
                      f"B's {maker.op_type} {maker.name or name!r} includes the "
                      f"{node.op_type}")


def _by_name(tensor: str, side_a: _Side, side_b: _Side) -> TensorPair | str:
    """Pair ``tensor`` with B's tensor of the same (or pre-Q/DQ) name; ``str``: why not."""
    names = [tensor] + [n for n in [_before_qdq(tensor, side_a)] if n] + [tensor + _QOP_SUFFIX]
    name = next((n for n in names if n in side_b.known), None)
    layer = side_a.layer_of.get(tensor, tensor)
    if name == tensor + _QOP_SUFFIX:
        fused = _fused_into(tensor, side_a, side_b)
        if fused is not None:
            return (f"model B fuses the {fused.op_type} after {layer!r} into {name!r}, so B has "
                    f"no pre-activation tensor; compare the activation {fused.output[0]!r} "
                    "instead")
    if name is None:
        near = difflib.get_close_matches(tensor, sorted(side_b.known), n=3, cutoff=0.6)
        hint = f"close names in B: {', '.join(near)}" if near else "no close names in B"
        return f"no tensor named {tensor!r} in model B ({hint})"
    shape_a, shape_b = _shape(tensor, side_a), _shape(name, side_b)
    if not _same_shape(shape_a, shape_b):
        return (f"model B has a tensor named {name!r} but of shape {list(shape_b or ())}, not "
                f"{list(shape_a or ())}; the models differ here")
    after = _qdq_after(name, side_b)
    if after is not None:
        return TensorPair(tensor, after, layer, "qdq")
    dtype = side_b.types.get(name, ("", None))[0]
    producer = side_b.producers.get(name)
    if dtype in _INT_DTYPES or (not dtype and producer is not None
                                and catalog.quant_params_node(name, side_b.producers)):
        if catalog.quant_params_node(name, side_b.producers) is None:
            return (f"B's tensor {name!r} is {dtype} without a scale/zero point of its own, "
                    "so it cannot be dequantized for comparison")
        return TensorPair(tensor, name, layer, "qlinear")
    how = "fp16" if dtype in _HALF_DTYPES else "name" if name == tensor else "qdq"
    return TensorPair(tensor, name, layer, how)


def _shape(tensor: str, side: _Side) -> Shape | None:
    return side.types.get(tensor, ("", None))[1]


def _same_shape(a: Shape | None, b: Shape | None) -> bool:
    """False only when both ranks are known and differ, or a known non-batch dim differs."""
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int)) or x == y
               for x, y in zip(a[1:], b[1:], strict=True))


def _qdq_after(tensor: str, side: _Side) -> str | None:
    """The DequantizeLinear output when ``tensor`` only feeds a QuantizeLinear -> DQ pair."""
    users = side.consumers.get(tensor, ())
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].input[0] != tensor:
        return None
    quant = users[0].output[0]
    deqs = [n for n in side.consumers.get(quant, ()) if n.op_type == "DequantizeLinear"
            and n.input[0] == quant]
    return str(deqs[0].output[0]) if deqs else None


def _before_qdq(tensor: str, side: _Side) -> str | None:
    """T when ``tensor`` is DequantizeLinear(QuantizeLinear(T)), else None."""
    deq = side.producers.get(tensor)
    if deq is None or deq.op_type != "DequantizeLinear":
        return None
    quant = side.producers.get(deq.input[0])
    if quant is None or quant.op_type != "QuantizeLinear":
        return None
    return str(quant.input[0])


def _unique_pairs(pairs: Sequence[TensorPair], side_a: _Side) -> list[TensorPair]:
    """Each A tensor once, in A's graph order (stable for ties)."""
    seen: dict[str, TensorPair] = {}
    for pair in pairs:
        seen.setdefault(pair.a, pair)
    return sorted(seen.values(), key=lambda p: side_a.order.get(p.a, -1))


def _match_outputs(side_a: _Side, side_b: _Side) -> tuple[TensorPair, ...]:
    """A's graph outputs paired with B's by name, else by position when the counts agree."""
    outs_a = [o.name for o in side_a.info.outputs]
    outs_b = [o.name for o in side_b.info.outputs]
    found = []
    for index, name in enumerate(outs_a):
        if name in outs_b:
            target, how = name, "name"
        elif len(outs_a) == len(outs_b):
            target, how = outs_b[index], "position"
        else:
            continue
        dtype = side_b.types.get(target, ("", None))[0]
        found.append(TensorPair(name, target, side_a.layer_of.get(name, name),
                                "fp16" if dtype in _HALF_DTYPES else how))
    return tuple(found)
