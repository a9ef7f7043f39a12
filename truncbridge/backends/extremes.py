"""Outer bounds on a value's integers from its inputs' extremes, without a pass over the data.

``--check`` needs every value's extremes; most ops are monotone or interval arithmetic on their
inputs' (a truncation, a shift, a negation, a product with a public scalar, a data movement), so
(lo, hi) follows from the inputs' in O(1). The result is an *outer* bound: if it keeps the
promise the value does; if not, the executor measures the value itself. A derivation that might
wrap in the field (leave [-2^(l-1), 2^(l-1))) is refused, since a wrap is not monotone.
"""
from __future__ import annotations

from ..core.ops import Public, spec

Extremes = tuple[int | float, int | float]


def derive(node, ins: list[Extremes | None], field_bits: int, const: Extremes | None,
           exact_truncation: bool) -> Extremes | None:
    """(lo, hi) enclosing every integer of ``node``'s value, or None where it must be measured.
    ``ins``: the inputs' extremes (None: unknown); ``const``: a public operand's extremes."""
    if not ins or any(x is None for x in ins):
        return None
    a, op = ins[0], spec(node)
    if op.affine is not None:
        found = _affine(a, *op.affine(node), const)
        if found is None:
            return None
    elif node.op == "output":
        found = a
    elif node.op == "move":  # data movement only rearranges, repeats or drops elements
        found = (min(x[0] for x in ins), max(x[1] for x in ins))
    elif node.op == "trunc" and exact_truncation:
        k = node.attrs["shift"]
        half = (1 << (k - 1)) if k and node.attrs.get("rounding", "nearest") == "nearest" else 0
        if not _fits((a[0] + half, a[1] + half), field_bits):
            return None
        found = (_floor_div(a[0] + half, k), _floor_div(a[1] + half, k))
    elif node.op == "add":
        found = (ins[0][0] + ins[1][0], ins[0][1] + ins[1][1])
    elif node.op == "mul":
        found = _product(a, ins[1])
    elif node.op == "nonneg":
        found = (0, 1)
    else:
        return None
    return found if _fits(found, field_bits) else None


def _affine(a: Extremes, alpha, beta, const: Extremes | None) -> Extremes | None:
    """α·a + β over the interval a; a ``Public`` coefficient is the constant's extremes (None: unknown)."""
    def interval(c):
        return const if isinstance(c, Public) else (c, c)

    if const is None and (isinstance(alpha, Public) or isinstance(beta, Public)):
        return None
    found = a if alpha == 1 else _product(a, interval(alpha))
    if beta != 0:
        b = interval(beta)
        found = (found[0] + b[0], found[1] + b[1])
    return found


def _product(a: Extremes, b: Extremes) -> Extremes:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


def _floor_div(x, k: int):
    return x >> k if isinstance(x, int) else x // 2**k


def _fits(x: Extremes, field_bits: int) -> bool:
    half = 2 ** (field_bits - 1)
    return -half <= x[0] and x[1] < half
