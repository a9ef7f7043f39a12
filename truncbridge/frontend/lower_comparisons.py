"""Lowering rules that need a comparison — ReLU, max, min, clamp, >, >=, <, <=, where on a secret
condition, a max over a dim — built on the ``nonneg`` op (1 where x >= 0: a counted, costed
comparison). With ``--relu smooth``, ReLU and max / min / clamp against a value of known range
instead use ``smooth_relu``: additions, products and truncations only, off by at most its
recorded ``max_error``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Builder
from . import recipes
from .calibrate import MASK_VALUE, Range, widened
from .lower_rules import Secret, on_add, on_mul, on_sub

aten = torch.ops.aten


SMOOTH_RELU_BITS = 8  # eps = max|x| / 2^8: rsqrt then spans a dynamic range of about 2^16


def smooth_relu(b: Builder, x: int, lo: float, hi: float, tol: float) -> int:
    """max(x, 0) without a comparison: (x + sqrt(y)) / 2, y = x^2 + eps^2, sqrt(y) = y rsqrt(y).
    sqrt(x^2 + eps^2) - |x| lies in [0, eps], so the smoothing is off by at most eps / 2 (at x = 0);
    rsqrt's relative error tol adds tol sqrt(B^2 + eps^2) / 2 (B = max|x|). eps is at least
    2 sqrt(tol), so eps^2 is many units of the last fixed-point place. [lo, hi] is first rounded
    out to the public grid (``recipes.public_range``)."""
    lo, hi = recipes.public_range(lo, hi)
    bound = max(-lo, hi, 0.0)
    eps = max(bound * 2.0**-SMOOTH_RELU_BITS, 2 * math.sqrt(tol))
    y_hi = bound * bound + eps * eps
    max_error = eps / 2 + tol * math.sqrt(y_hi) / 2
    b.declare(x, bound, "range")
    first = len(b.program.nodes)
    with recipes.recipe(b, "smooth_relu", method="smooth-abs", eps=eps, lo=lo, hi=hi, max_error=max_error):
        y = b.add_public(b.mul(x, x), eps * eps)
        root = b.mul(y, recipes.rsqrt(b, y, eps * eps, y_hi, tol))
        out = b.pow2(b.add(x, root), -1)
    recipes.declare_by_grid(b, first, x, np.linspace(lo, hi, recipes.GRID_POINTS))
    return out


Span = tuple[float, float] | None  # a calibrated (lo, hi), or None where none is known


def _span(lw, arg) -> Span:
    """The calibrated range of an fx argument, or a public scalar's value."""
    if isinstance(arg, torch.fx.Node):
        r = lw.ranges.get(arg.name)
        return (r.lo, r.hi) if r is not None else None
    return (float(arg), float(arg)) if isinstance(arg, int | float) else None


def _relu(lw, d: int, span: Span) -> int:
    """max(d, 0): a counted comparison; with ``--relu smooth`` and a known range of d, the
    comparison-free recipe instead (smooth_relu, its error bound recorded)."""
    if lw.relu == "smooth" and span is not None:
        lo, hi = widened(Range(*span))
        return smooth_relu(lw.b, d, lo, hi, lw.tol)
    return lw.b.relu(d)


def _difference(sa: Span, sb: Span) -> Span:
    return None if sa is None or sb is None else (sa[0] - sb[1], sa[1] - sb[0])


def on_relu(lw, node, x) -> Secret:
    return Secret(_relu(lw, lw.plain(x, "relu"), _span(lw, node.args[0])))


def on_maximum(lw, node, a, b, spans: tuple[Span, Span] | None = None) -> Secret:
    """max(a, b) = b + relu(a - b) (either may be public)."""
    sa, sb = spans or (_span(lw, node.args[0]), _span(lw, node.args[1]))
    if not isinstance(a, Secret):
        a, b, sa, sb = b, a, sb, sa
    return on_add(lw, node, Secret(_relu(lw, on_sub(lw, node, a, b).id, _difference(sa, sb))), b)


def on_minimum(lw, node, a, b, spans: tuple[Span, Span] | None = None) -> Secret:
    """min(a, b) = a - relu(a - b)."""
    sa, sb = spans or (_span(lw, node.args[0]), _span(lw, node.args[1]))
    if not isinstance(a, Secret):
        a, b, sa, sb = b, a, sb, sa
    return on_sub(lw, node, a, Secret(_relu(lw, on_sub(lw, node, a, b).id, _difference(sa, sb))))


def on_clamp(lw, node, x, lo=None, hi=None) -> Secret:
    """clamp / clamp_min / hardtanh: a maximum with the lower and a minimum with the upper limit."""
    span = _span(lw, node.args[0])
    if lo is not None:
        x = on_maximum(lw, node, x, float(lo), (span, (lo, lo)))
        span = None if span is None else (max(span[0], lo), max(span[1], lo))
    return x if hi is None else on_minimum(lw, node, x, float(hi), (span, (hi, hi)))


def _bit_not(lw, bit: int) -> int:
    return lw.b.add_public(lw.b.neg(bit), 1.0)


def comparison_rule(kind: str):
    """a >= b, a > b, a <= b, a < b (either may be public) as a secret 0/1 at scale 0, from the
    sign of a - b: ge = [a - b >= 0], gt = not [b - a >= 0], and so on."""
    def rule(lw, node, a, b) -> Secret:
        d = on_sub(lw, node, a, b) if isinstance(a, Secret) else Secret(lw.b.neg(on_sub(lw, node, b, a).id))
        if kind == "ge":
            return Secret(lw.b.nonneg(d.id))
        if kind == "lt":
            return Secret(_bit_not(lw, lw.b.nonneg(d.id)))
        flipped = lw.b.nonneg(lw.b.neg(d.id))
        return Secret(flipped if kind == "le" else _bit_not(lw, flipped))
    return rule


def on_where(lw, node, cond, a, b) -> Secret:
    """A secret condition: b + cond (a - b), one product. A public one: a select by public 0/1
    factors, or a structural -inf mask kept beside a (as additive masks are)."""
    if isinstance(cond, Secret):
        return on_add(lw, node, on_mul(lw, node, cond, on_sub(lw, node, a, b)), b)
    keep = torch.as_tensor(cond, dtype=torch.bool)
    if not isinstance(a, Secret):  # where(c, a, b) = where(not c, b, a)
        keep, a, b = ~keep, b, a
    if bool(keep.all()) and lw.b.shape(a.id) == tuple(node.meta["val"].shape):
        return a  # a picked everywhere (e.g. SDPA's guard against rows masked whole)
    if not isinstance(b, Secret) and float(torch.as_tensor(b).max()) <= MASK_VALUE:
        keep = torch.broadcast_to(keep, lw.b.shape(a.id))
        return Secret(a.id, keep if a.keep is None else a.keep & keep)
    weight = keep.to(torch.float64)
    picked = on_mul(lw, node, a, weight)
    other = on_mul(lw, node, b, 1.0 - weight) if isinstance(b, Secret) else torch.as_tensor(b) * (1.0 - weight)
    return on_add(lw, node, picked, other)


def on_eq_scalar(lw, node, x, value):
    """x == +-inf (SDPA's test for rows masked whole): a fixed-point secret is never infinite, so
    the answer is public — the structural -inf mask where x carries one, else all False."""
    if not math.isinf(value):
        raise UserError(f"aten.eq of secret data and {value} is not supported (node {node.name})")
    shape = lw.b.shape(x.id)
    if value < 0 and x.keep is not None:
        return ~torch.broadcast_to(x.keep, shape)
    return torch.zeros(shape, dtype=torch.bool)


def on_amax(lw, node, x, dims=(), keepdim=False) -> Secret:
    """max over one dim by a tree of pairwise maxima: ceil(log2 n) comparison rounds."""
    x_id = lw.plain(x, "a max")
    if len(dims) != 1:
        raise UserError(f"aten.amax over {len(dims)} dims on secret data is not supported (node {node.name})")
    dim = dims[0] % len(lw.b.shape(x_id))
    span = _span(lw, node.args[0])  # both halves of every pair lie in x's range
    while lw.b.shape(x_id)[dim] > 1:
        n = lw.b.shape(x_id)[dim]
        half = n // 2
        lo, hi = (lw.b.move("aten.slice.Tensor", [x_id], ["$0", dim, s, s + half]) for s in (0, half))
        pair = on_maximum(lw, node, Secret(lo), Secret(hi), (span, span)).id
        if n % 2:
            rest = lw.b.move("aten.slice.Tensor", [x_id], ["$0", dim, 2 * half, n])
            pair = lw.b.move("aten.cat.default", [pair, rest], [["$0", "$1"], dim])
        x_id = pair
    return Secret(x_id if keepdim else lw.b.move("aten.squeeze.dims", [x_id], ["$0", [dim]]))


def on_max_dim(lw, node, x, dim, keepdim=False) -> tuple:
    """(values, indices): the values only — an argmax on secret data is not supported."""
    return on_amax(lw, node, x, [dim], keepdim), None


COMPARISON_RULES = {
    aten.relu.default: on_relu, aten.maximum.default: on_maximum, aten.minimum.default: on_minimum,
    aten.clamp.default: on_clamp, aten.clamp_min.default: on_clamp, aten.hardtanh.default: on_clamp,
    aten.where.self: on_where, aten.amax.default: on_amax, aten.max.dim: on_max_dim, aten.eq.Scalar: on_eq_scalar,
    **{getattr(aten, kind).Scalar: comparison_rule(kind) for kind in ("ge", "gt", "le", "lt")},
    **{getattr(aten, kind).Tensor: comparison_rule(kind) for kind in ("ge", "gt", "le", "lt")},
}
