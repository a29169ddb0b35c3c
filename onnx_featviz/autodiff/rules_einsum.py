"""Vector-Jacobian rule of Einsum: each operand's gradient is another Einsum.

For ``A, B -> C`` the gradient of ``A`` is ``einsum("C, B -> A'")`` where ``A'`` drops the letters
only ``A`` has (they were summed out); those axes are then restored by Unsqueeze + Expand, and
broadcast ``...`` axes are summed back to ``A``'s shape. Any number of operands works this way.
Repeated letters within one term (diagonals, traces) and a ``...`` that some terms lack raise
ModelError.
"""

from __future__ import annotations

import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.vjp import Grads, Rule
from onnx_featviz.errors import ModelError

ELLIPSIS = "..."


def parse_equation(equation: str, operands: int) -> tuple[list[str], str, bool]:
    """Split an einsum equation into input letter strings, the output letters and ``...`` use.

    The implicit form (no ``->``) outputs the letters seen once, sorted, after any ``...``.

    Raises:
        ModelError: repeated letters in a term, a ``...`` missing from some term, or a wrong
            number of terms.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != operands:
        raise ModelError(f"Einsum equation {equation!r} has {len(terms)} input terms for "
                         f"{operands} operands; fix the model")
    dots = [t.count(ELLIPSIS) for t in terms]
    if not arrow:
        letters = "".join(t.replace(ELLIPSIS, "") for t in terms)
        rhs = (ELLIPSIS if any(dots) else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    all_terms = [*terms, rhs]
    has_dots = any(t.startswith(ELLIPSIS) for t in all_terms)
    for term in all_terms:
        body = term.replace(ELLIPSIS, "")
        if len(set(body)) != len(body) or not body.isalpha() and body:
            raise ModelError(f"Einsum equation {equation!r}: term {term!r} repeats a letter "
                             "(diagonal or trace); only terms of distinct letters have a "
                             "gradient rule; use a gradient-free method")
        if has_dots and not term.startswith(ELLIPSIS) or term.count(ELLIPSIS) > 1 or (
                ELLIPSIS in term and not term.startswith(ELLIPSIS)):
            raise ModelError(f"Einsum equation {equation!r}: '...' must lead every term when "
                             "one term uses it; only that form has a gradient rule; rewrite "
                             "the equation with explicit letters")
    strip = [t.replace(ELLIPSIS, "") for t in all_terms]
    return strip[:-1], strip[-1], has_dots


def _restore_summed(ctx: Emitter, grad: str, target: str, term: str, kept: str,
                    offset: int) -> str:
    """Unsqueeze the axes of letters only ``target`` had and Expand them to its shape."""
    missing = [offset + i for i, c in enumerate(term) if c not in kept]
    if not missing:
        return grad
    return ctx.op("Expand", [ctx.unsqueeze(grad, missing), ctx.shape_of(target)])


def _dots_shape(ctx: Emitter, node: onnx.NodeProto, terms: list[str]) -> list[int | None]:
    """Broadcast shape of the operands' ``...`` axes (``None`` where not a static 1)."""
    parts = [list((ctx.shape(n) or ())[:ctx.rank(n) - len(t)]) for n, t in zip(
        node.input, terms, strict=True)]
    width = max(len(p) for p in parts)
    out: list[int | None] = []
    for i in range(width):
        dims = [p[i - width + len(p)] for p in parts if i - width + len(p) >= 0]
        out.append(1 if all(d == 1 for d in dims) else None)
    return out


def _sum_broadcast_dots(ctx: Emitter, grad: str, target: str, dots: list[int | None],
                        dots_t: int) -> str:
    """Sum a gradient whose leading ``...`` axes have the output's size back to ``target``'s."""
    tshape = ctx.shape(target) or ()
    lead = len(dots) - dots_t
    if lead:
        grad = ctx.reduce_sum(grad, list(range(lead)), keepdims=False)
    ones = [i for i in range(dots_t) if tshape[i] == 1 and dots[lead + i] != 1]
    return ctx.reduce_sum(grad, ones, keepdims=True) if ones else grad


def einsum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Einsum (distinct letters per term, optional leading ``...``)."""
    g = grads[0]
    assert g is not None
    terms, out, dots = parse_equation(str(attr(node, "equation")), len(node.input))
    prefix = ELLIPSIS if dots else ""
    dots_shape = _dots_shape(ctx, node, terms) if dots else []
    result: list[str | None] = []
    for k, (name, term) in enumerate(zip(node.input, terms, strict=True)):
        if name not in ctx.active:
            result.append(None)
            continue
        others = [(n, t) for j, (n, t) in enumerate(zip(node.input, terms, strict=True))
                  if j != k]
        seen = out + "".join(t for _, t in others)
        kept = "".join(c for c in term if c in seen)
        lhs = ",".join(prefix + t for t in [out] + [t for _, t in others])
        grad = ctx.op("Einsum", [g] + [ctx.fwd(n) for n, _ in others],
                      equation=f"{lhs}->{prefix}{kept}")
        dots_t = ctx.rank(name) - len(term) if dots else 0
        if dots:
            grad = _sum_broadcast_dots(ctx, grad, name, dots_shape, dots_t)
        result.append(_restore_summed(ctx, grad, name, term, kept, dots_t))
    return result


EINSUM_RULES: dict[str, Rule] = {"Einsum": einsum_vjp}
"""Op type -> rule for Einsum."""
