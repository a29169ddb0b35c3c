"""Vector-Jacobian rules of indexing and layout ops: gathers, scatters, TopK, depth/space
rearrangements, Expand, Tile, Trilu and CumSum.

Gathers scatter the gradient back with ``reduction="add"`` (opset 16) unless their indices are
constant and distinct; indices computed at run time are fine. Registered in
:data:`INDEX_RULES`; :func:`index_min_opset` gives the opset their backward nodes need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.vjp import Grads, Rule, dim_of, first
from onnx_featviz.errors import ModelError


def _distinct(consts: dict[str, Any], node: onnx.NodeProto) -> bool:
    """Whether the node's indices (input 1) are constant with no entry hit twice."""
    if len(node.input) < 2 or node.input[1] not in consts:
        return False
    idx = np.asarray(consts[node.input[1]])
    if node.op_type == "GatherND":
        rows = idx.reshape(-1, idx.shape[-1]) if idx.ndim else idx.reshape(1, 1)
        return len(np.unique(rows, axis=0)) == len(rows) and bool((rows >= 0).all())
    return False


def index_min_opset(node: onnx.NodeProto, consts: dict[str, Any]) -> int:
    """Return 16 for gathers whose gradient scatter must add duplicates, else 11."""
    if node.op_type == "GatherElements" or (node.op_type == "GatherND"
                                            and not _distinct(consts, node)):
        return 16
    return 11


def _add(ctx: Emitter, node: onnx.NodeProto) -> dict[str, Any]:
    """Scatter attributes that sum duplicate indices (from opset 16)."""
    if node.op_type == "GatherND" and _distinct(ctx.consts, node):
        return {}
    if ctx.opset < 16:
        raise ModelError(f"{node.op_type} node {node.name!r}: its gradient scatter needs opset "
                         f">= 16 (reduction='add'), the graph has {ctx.opset}")
    return {"reduction": "add"}


def gathernd_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """GatherND (batch_dims 0): ScatterND the gradient into zeros, adding repeated indices."""
    g = grads[0]
    assert g is not None
    if int(attr(node, "batch_dims", 0)):
        raise ModelError(f"GatherND node {node.name!r} uses batch_dims="
                         f"{attr(node, 'batch_dims')}; only batch_dims=0 has a gradient rule; "
                         "re-export with explicit batch indices or use a gradient-free method")
    zeros = ctx.zeros_like(node.input[0])
    return first(ctx, node, ctx.op("ScatterND", [zeros, node.input[1], g], **_add(ctx, node)))


def gatherelements_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """GatherElements: ScatterElements the gradient into zeros along ``axis``, adding repeats."""
    g = grads[0]
    assert g is not None
    axis = int(attr(node, "axis", 0))
    zeros = ctx.zeros_like(node.input[0])
    return first(ctx, node, ctx.op("ScatterElements", [zeros, node.input[1], g], axis=axis,
                                   **_add(ctx, node)))


def _scatter(ctx: Emitter, node: onnx.NodeProto, grads: Grads, gather: str,
             **attrs: Any) -> list[str | None]:
    """ScatterND / ScatterElements: data gets g off the written places, updates gather g."""
    g = grads[0]
    assert g is not None
    reduction = attr(node, "reduction", "none")
    if reduction not in ("none", "add"):
        raise ModelError(f"{node.op_type} node {node.name!r} uses reduction={reduction!r}; only "
                         "'none' and 'add' have a gradient rule; use a gradient-free method")
    data, idx, upd = node.input
    dd = du = None
    if data in ctx.active:
        dd = g if reduction == "add" else ctx.op(node.op_type, [g, idx, ctx.zeros_like(upd)],
                                                 **attrs)
    if upd in ctx.active:
        du = ctx.op(gather, [g, idx], **attrs)
    return [dd, None, du]


def scatternd_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ScatterND (reduction none or add): data g with written places zeroed; updates GatherND."""
    return _scatter(ctx, node, grads, "GatherND")


def scatterelements_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads
                        ) -> list[str | None]:
    """ScatterElements (reduction none or add): as ScatterND with GatherElements along axis."""
    return _scatter(ctx, node, grads, "GatherElements", axis=int(attr(node, "axis", 0)))


def topk_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """TopK: scatter the values' gradient to the chosen indices (distinct by construction)."""
    g = grads[0]
    if g is None:
        return [None] * len(node.input)
    axis = int(attr(node, "axis", -1))
    zeros = ctx.zeros_like(node.input[0])
    return first(ctx, node, ctx.op("ScatterElements", [zeros, node.output[1], g], axis=axis))


# ---------------------------------------------------------------------- layout
def _group_channels(ctx: Emitter, t: str, like: str, first_dim: int, second_dim: int) -> str:
    """Reorder channels (N, A*B, *spatial) viewed as (A, B) to (B, A); A = ``first_dim``."""
    view = ctx.op("Reshape", [t, ctx.ints([0, first_dim, second_dim, -1])])
    return ctx.reshape_like(ctx.op("Transpose", [view], perm=[0, 2, 1, 3]), like)


def _crd_dims(ctx: Emitter, node: onnx.NodeProto, channels_of: str, block: int
              ) -> tuple[int, int]:
    """Return (C/b^2, b^2) for a CRD rearrangement (needs a static channel count)."""
    c = (ctx.shape(channels_of) or (None, None))[1]
    if not isinstance(c, int):
        raise ModelError(f"DepthToSpace node {node.name!r} (CRD) needs a static channel count, "
                         f"got {c!r}; give the model's input a fixed channel count")
    return c // (block * block), block * block


def depthtospace_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """DepthToSpace: SpaceToDepth of the gradient (DCR); CRD also undoes its channel order.

    CRD(x) = DCR(P x) with P reordering channels (C', b^2) -> (b^2, C'), so the VJP is
    P^T SpaceToDepth(g).
    """
    g = grads[0]
    assert g is not None
    block = int(attr(node, "blocksize"))
    back = ctx.op("SpaceToDepth", [g], blocksize=block)
    if attr(node, "mode", "DCR") == "CRD":
        cp, bb = _crd_dims(ctx, node, node.input[0], block)
        back = _group_channels(ctx, back, node.input[0], bb, cp)
    return first(ctx, node, back)


def spacetodepth_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """SpaceToDepth: DepthToSpace (DCR, its exact inverse) of the gradient."""
    g = grads[0]
    assert g is not None
    block = int(attr(node, "blocksize"))
    return first(ctx, node, ctx.op("DepthToSpace", [g], blocksize=block, mode="DCR"))


def expand_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Expand: sum the gradient over the broadcast axes."""
    g = grads[0]
    assert g is not None
    return first(ctx, node, ctx.unbroadcast(g, node.output[0], node.input[0]))


def tile_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Tile: view g as (r0, d0, r1, d1, ...) and sum over the repeat axes.

    Repeats and dims may be known only at run time.
    """
    g = grads[0]
    assert g is not None
    x, reps = node.input[0], node.input[1]
    rank = ctx.rank(x)
    parts: list[str] = []
    for axis in range(rank):
        rep = (ctx.ints([int(ctx.consts[reps][axis])]) if reps in ctx.consts
               else ctx.op("Slice", [reps, ctx.ints([axis]), ctx.ints([axis + 1])]))
        parts += [rep, dim_of(ctx, x, axis)]
    view = ctx.op("Reshape", [g, ctx.op("Concat", parts, axis=0)])
    summed = ctx.reduce_sum(view, list(range(0, 2 * rank, 2)), keepdims=False)
    return first(ctx, node, summed)


def trilu_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Trilu: the same triangle (same k and upper) of the gradient."""
    g = grads[0]
    assert g is not None
    return first(ctx, node, ctx.op("Trilu", [g, *node.input[1:]],
                                   upper=int(attr(node, "upper", 1))))


def cumsum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """CumSum: CumSum of the gradient in the other direction (same exclusive flag)."""
    g = grads[0]
    assert g is not None
    back = ctx.op("CumSum", [g, node.input[1]], exclusive=int(attr(node, "exclusive", 0)),
                  reverse=1 - int(attr(node, "reverse", 0)))
    return first(ctx, node, back)


INDEX_RULES: dict[str, Rule] = {
    "GatherND": gathernd_vjp, "GatherElements": gatherelements_vjp,
    "ScatterND": scatternd_vjp, "ScatterElements": scatterelements_vjp, "TopK": topk_vjp,
    "DepthToSpace": depthtospace_vjp, "SpaceToDepth": spacetodepth_vjp,
    "Expand": expand_vjp, "Tile": tile_vjp, "Trilu": trilu_vjp, "CumSum": cumsum_vjp,
}
"""Op type -> rule for the indexing and layout ops of this module."""
