"""Lowering rules for nonlinear functions: range-aware recipes (``recipes.py``) built for their
calibrated input ranges, widened by a margin; comparisons where a function needs one (ReLU, max,
clamp); and the automatic recipe: any elementwise ATen op without a rule, and any op or module a
user registered (``registry.py``), becomes a Chebyshev fit of the function itself.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import UserError
from . import recipes
from .calibrate import MASK_VALUE, Range
from .lower_rules import Secret, on_add, on_mul, on_sub
from .walk import aten_name

aten = torch.ops.aten

RANGE_MARGIN = 0.25  # widen calibrated intervals by this fraction of their span on each side


POSITIVE_MARGIN = 4.0  # positive ranges (rsqrt, reciprocal inputs): lo / 4, hi * 4


def _widen(r: Range) -> tuple[float, float]:
    pad = RANGE_MARGIN * max(r.hi - r.lo, 1e-3)
    return r.lo - pad, r.hi + pad


def _positive(r: Range, name: str) -> tuple[float, float]:
    if r.lo <= 0:
        raise UserError(f"{name} input was not strictly positive in calibration (min {r.lo:.4g})")
    return r.lo / POSITIVE_MARGIN, r.hi * POSITIVE_MARGIN


def on_div(lw, node, a, b) -> Secret:
    if not isinstance(b, Secret):
        return on_mul(lw, node, a, 1.0 / torch.as_tensor(b, dtype=torch.float64))
    inv = on_reciprocal(lw, node, b, range_node=node.args[1])
    return on_mul(lw, node, a, inv)


def on_pow(lw, node, x, exponent) -> Secret:
    x_id = lw.plain(x, "aten.pow")
    if exponent == 2:
        return Secret(lw.b.mul(x_id, x_id))
    if exponent == 0.5:
        return on_sqrt(lw, node, x)
    if exponent == -0.5:
        return on_rsqrt(lw, node, x)
    if exponent == -1:
        return on_reciprocal(lw, node, x)
    if float(exponent).is_integer() and 1 <= exponent <= 64:
        return Secret(recipes.power(x_id, int(exponent), lw.b.mul))
    raise UserError(f"aten.pow with exponent {exponent} on secret data is not supported")


def on_rsqrt(lw, node, x) -> Secret:
    lo, hi = _positive(lw.range_of(node.args[0]), "rsqrt")
    out = recipes.rsqrt(lw.b, lw.plain(x, "rsqrt"), lo, hi, lw.tol)
    rms = _rms_source(node.args[0])
    if rms is not None and isinstance(lw.env.get(rms[0].name), Secret):
        x_id, n = lw.env[rms[0].name].id, rms[1]
        lw.rms_of[out] = (x_id, n)
        lw.b.declare(x_id, math.sqrt(n * hi), "range")  # mean(x^2) <= hi gives |x_i| <= sqrt(n hi)
    return Secret(out)


def on_sqrt(lw, node, x) -> Secret:
    r = on_rsqrt(lw, node, x)
    return Secret(lw.b.mul(x.id, r.id))


def on_reciprocal(lw, node, x, range_node=None) -> Secret:
    lo, hi = _positive(lw.range_of(range_node or node.args[0]), "reciprocal")
    return Secret(recipes.reciprocal(lw.b, lw.plain(x, "reciprocal"), lo, hi, lw.tol))


def on_exp(lw, node, x) -> Secret:
    lo, hi = _widen(lw.range_of(node.args[0]))
    return Secret(recipes.exp(lw.b, lw.plain(x, "exp"), lo, hi))


def on_softmax(lw, node, x, dim, half_to_float=False) -> Secret:
    zlo, zhi = _widen(lw.range_of(node))  # ranged by its scores minus their row mean
    return Secret(recipes.softmax(lw.b, x.id, dim, x.keep, zlo, zhi, lw.tol))


def on_layer_norm(lw, node, x, shape, weight=None, bias=None, eps=1e-5) -> tuple:
    """(x - mean) * rsqrt(var + eps) * weight + bias over the last len(shape) dims; the rsqrt's
    range is var + eps as calibrated. Rows of the normalised x have l2 norm sqrt(n), as in RMSNorm."""
    x_id = lw.plain(x, "layer norm")
    dims = list(range(-len(shape), 0))
    n = math.prod(shape)
    b = lw.b
    centred = b.sub(x_id, b.mul_public(b.sum(x_id, dims, True), 1.0 / n))
    var = b.mul_public(b.sum(b.mul(centred, centred), dims, True), 1.0 / n)
    lo, hi = _positive(lw.range_of(node), "layer norm's variance")
    r = recipes.rsqrt(b, b.add_public(var, float(eps)), lo, hi, lw.tol)
    if len(shape) == 1:  # rows of the last dim: their l2 norm and element bounds are known
        lw.rms_of[r] = (centred, n)
        b.declare(centred, math.sqrt(n * hi), "range")
    out = on_mul(lw, node, Secret(centred), Secret(r))
    if weight is not None:
        out = on_mul(lw, node, out, weight)
    if bias is not None:
        out = on_add(lw, node, out, bias)
    return out, None, None  # (output, mean, rstd): inference reads the output only


def _rms_source(arg: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """(x, n) if ``arg`` is mean(x^2) or mean(x^2) + a positive constant over x's last dim of n."""
    if arg.target == aten.add.Tensor and not isinstance(arg.args[1], torch.fx.Node) and arg.args[1] >= 0:
        arg = arg.args[0]
    if arg.target != aten.mean.dim:
        return None
    square = arg.args[0]
    if square.target == aten.pow.Tensor_Scalar and square.args[1] == 2:
        x = square.args[0]
    elif square.target == aten.mul.Tensor and square.args[0] is square.args[1]:
        x = square.args[0]
    else:
        return None
    shape = x.meta["val"].shape
    dims = [d % len(shape) for d in arg.args[1]]
    if dims != [len(shape) - 1]:  # normalisation over the last dim only: rows of length n
        return None
    return x, shape[-1]


Span = tuple[float, float] | None  # a calibrated (lo, hi), or None where none is known


def _span(lw, arg) -> Span:
    """The calibrated range of an fx argument, or a public scalar's value."""
    if isinstance(arg, torch.fx.Node):
        r = lw.ranges.get(arg.name)
        return (r.lo, r.hi) if r is not None else None
    return (float(arg), float(arg)) if isinstance(arg, int | float) else None


def _relu(lw, d: int, span: Span) -> int:
    """max(d, 0): a counted comparison; with ``--relu smooth`` and a known range of d, the
    comparison-free recipe instead (recipes.smooth_relu, its error bound recorded)."""
    if lw.relu == "smooth" and span is not None:
        lo, hi = _widen(Range(*span))
        return recipes.smooth_relu(lw.b, d, lo, hi, lw.tol)
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
    if not isinstance(b, Secret) and float(torch.as_tensor(b).max()) <= MASK_VALUE:
        keep = torch.broadcast_to(keep, lw.b.shape(a.id))
        return Secret(a.id, keep if a.keep is None else a.keep & keep)
    weight = keep.to(torch.float64)
    picked = on_mul(lw, node, a, weight)
    other = on_mul(lw, node, b, 1.0 - weight) if isinstance(b, Secret) else torch.as_tensor(b) * (1.0 - weight)
    return on_add(lw, node, picked, other)


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


def on_pointwise(lw, node, x, *rest, **kw) -> Secret:
    """The automatic recipe: an elementwise op of one secret tensor (and public scalars) as a
    Chebyshev fit of the op itself, evaluated with torch over the calibrated, widened range."""
    name = aten_name(node.target).split(".")[-2]
    lo, hi = _widen(lw.range_of(node.args[0]))
    return Secret(recipes.chebyshev(lw.b, lw.plain(x, name), torch_function(node.target, rest, kw), lo, hi, lw.tol, name))


def torch_function(target, rest, kw):
    """numpy float64 in, numpy out: the ATen op itself, with its public arguments."""
    def fn(values):
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        with torch.no_grad():
            return target(t, *rest, **kw).double().numpy()
    return fn


def registered_rule(recipe):
    """A rule for a registered op or module: the user's recipe, or the automatic fit (None)."""
    def rule(lw, node, x, *rest, **kw) -> Secret:
        if recipe is None:
            return on_pointwise(lw, node, x, *rest, **kw)
        name = aten_name(node.target).split(".")[-2]
        _check_elementwise(node.target, name)
        lo, hi = _widen(lw.range_of(node.args[0]))
        x_id = lw.plain(x, name)
        first = len(lw.b.program.nodes)
        with recipes.recipe(lw.b, name, method="user", lo=lo, hi=hi):
            out = recipe(lw.b, x_id, lo, hi, lw.tol)
        recipes.declare_by_grid(lw.b, first, x_id, np.linspace(lo, hi, recipes.GRID_POINTS))
        return Secret(out)
    return rule


def is_pointwise(node, args) -> bool:
    """An elementwise ATen op of exactly one secret tensor (its first argument) and otherwise
    public scalars, with a floating-point result (a comparison's boolean is not fitted)."""
    val = node.meta.get("val")
    if torch.Tag.pointwise not in getattr(node.target, "tags", ()) or not isinstance(args[0], Secret):
        return False
    if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        return False
    secrets = [a for a in args if isinstance(a, Secret)]
    others = [a for a in args if not isinstance(a, Secret)]
    return len(secrets) == 1 and all(not isinstance(a, torch.Tensor) or a.numel() == 1 for a in others)


def _check_elementwise(target, name: str) -> None:
    """A registered function must act elementwise: permuting its input permutes its output."""
    x = torch.linspace(-2.0, 2.0, 64, dtype=torch.float64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, y_perm = target(x), target(x[perm])
    if y.shape != x.shape or not torch.allclose(y[perm], y_perm, equal_nan=True):
        raise UserError(f"{name}: a registered recipe needs an elementwise function of one tensor")

FUNCTION_RULES = {
    aten.div.Tensor: on_div, aten.pow.Tensor_Scalar: on_pow,
    aten.rsqrt.default: on_rsqrt, aten.sqrt.default: on_sqrt, aten.reciprocal.default: on_reciprocal,
    aten.exp.default: on_exp, aten._softmax.default: on_softmax, aten.native_layer_norm.default: on_layer_norm,
    aten.relu.default: on_relu, aten.maximum.default: on_maximum, aten.minimum.default: on_minimum,
    aten.clamp.default: on_clamp, aten.clamp_min.default: on_clamp, aten.hardtanh.default: on_clamp,
    aten.where.self: on_where, aten.amax.default: on_amax, aten.max.dim: on_max_dim,
    **{getattr(aten, kind).Scalar: comparison_rule(kind) for kind in ("ge", "gt", "le", "lt")},
    **{getattr(aten, kind).Tensor: comparison_rule(kind) for kind in ("ge", "gt", "le", "lt")},
}
