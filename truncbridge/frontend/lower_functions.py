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
from . import recipes, recipes_compressed, recipes_even, recipes_wide
from .calibrate import SCORE_RANGE_MARGIN, positive_range, widened
from .lower_comparisons import COMPARISON_RULES
from .lower_rules import Secret, on_add, on_mul
from .walk import aten_name

aten = torch.ops.aten

def on_div(lw, node, a, b) -> Secret:
    if isinstance(b, (int, float)) and abs(b) >= 2 and _feeds_scaled_pointwise(node):
        # soft-capping's x / cap: computed as (x 2^j / cap) relabelled by 2^-j (free), j more
        # fraction bits, which the error cap * f(x / cap) would otherwise multiply by cap
        j = int(math.floor(math.log2(abs(b))))
        return Secret(lw.b.pow2(lw.b.mul_public(lw.plain(a, "aten.div"), 2.0**j / b), -j))
    if not isinstance(b, Secret):
        return on_mul(lw, node, a, 1.0 / torch.as_tensor(b, dtype=torch.float64))
    inv = on_reciprocal(lw, node, b, range_node=node.args[1])
    return on_mul(lw, node, a, inv)


def on_pow(lw, node, x, exponent) -> Secret:
    x_id = lw.plain(x, "aten.pow")
    if exponent == 2:
        return Secret(square(lw, node.args[0], x_id))
    if exponent == 0.5:
        return on_sqrt(lw, node, x)
    if exponent == -0.5:
        return on_rsqrt(lw, node, x)
    if exponent == -1:
        return on_reciprocal(lw, node, x)
    if float(exponent).is_integer() and 1 <= exponent <= 64:
        return Secret(recipes.power(x_id, int(exponent), lw.b.mul))
    raise UserError(f"aten.pow with exponent {exponent} on secret data is not supported")


MAX_SQUARE_GAIN_BITS = 8


def square(lw, arg, x_id: int) -> int:
    """x^2 with as many fraction bits as |x| <= B leaves unused: (2^s x)^2 2^-2s with 2^s B <= 1,
    both rescales free relabellings. A plain x * x truncated to frac_bits keeps only ~log2(B^2)
    + frac_bits significant bits: RMSNorm's mean(x^2) of a small sublayer output (Gemma2's post-norms,
    rms ~0.02: x^2 ~ 2^-11) loses 1-2 % to that rounding, and the norm passes it to every element."""
    lo, hi = lw.range_of(arg).lo, lw.range_of(arg).hi
    bound = max(abs(lo), abs(hi))
    s = min(MAX_SQUARE_GAIN_BITS, int(math.floor(-math.log2(bound)))) if 0 < bound < 0.5 else 0
    if s <= 0:
        return lw.b.mul(x_id, x_id)
    y = lw.b.pow2(x_id, s)
    return lw.b.pow2(lw.b.mul(y, y), -2 * s)


def on_rsqrt(lw, node, x) -> Secret:
    lo, hi = positive_range(lw.range_of(node.args[0]), "rsqrt")
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
    lo, hi = positive_range(lw.range_of(range_node or node.args[0]), "reciprocal")
    return Secret(recipes.reciprocal(lw.b, lw.plain(x, "reciprocal"), lo, hi, lw.tol))


def on_exp(lw, node, x) -> Secret:
    lo, hi = widened(lw.range_of(node.args[0]))
    return Secret(recipes.exp(lw.b, lw.plain(x, "exp"), lo, hi))


def on_softmax(lw, node, x, dim, half_to_float=False) -> Secret:
    zlo, zhi = widened(lw.range_of(node), SCORE_RANGE_MARGIN)  # ranged by its scores minus their row mean
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
    lo, hi = positive_range(lw.range_of(node), "layer norm's variance")
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


def on_pointwise(lw, node, x, *rest, **kw) -> Secret:
    """The automatic recipe: an elementwise op of one secret tensor (and public scalars) as a
    Chebyshev fit of the op itself, evaluated with torch over the calibrated, widened range; the
    tanh family (tanh, sigmoid, SiLU, GELU, erf) by ``recipes_wide.saturating``, which holds on
    any finite range, or SiLU and GELU by a series in x^2 (``recipes_even``), whichever has the
    fewest products. Its tolerance shrinks by the public factor its output is scaled by next
    (soft-capping's cap * tanh(x / cap)), so the error the model sees stays within tol."""
    name = aten_name(node.target).split(".")[-2]
    lo, hi = widened(lw.range_of(node.args[0]))
    scale, x_id = output_scale(node), lw.plain(x, name)
    tol, gain = lw.tol / scale, int(math.floor(math.log2(scale)))  # the output keeps `gain` more fraction bits
    family = recipes_wide.family_name(name, kw) if not rest else None
    try:
        fn = torch_function(node.target, rest, kw)
        fits = _family_fits(family, fn, lo, hi, tol, name)
        best = min(fits, key=fits.get, default=None)
        if best is not None and fits[best] < _plain_products(fn, lo, hi, tol, name):
            if best == "even":
                c = recipes_wide.odd_slope(family)
                return Secret(recipes_even.even_linear(lw.b, x_id, fn, c, lo, hi, tol, name, gain))
            return Secret(recipes_wide.saturating(lw.b, x_id, family, lo, hi, tol, gain))
        if family in ("erf", "gelu") and not fits:  # erf's own argument outgrows the doublings: compress it through tanh
            return Secret(recipes_compressed.erf_family(lw.b, x_id, family, lo, hi, tol))
        try:
            return Secret(recipes.chebyshev(lw.b, x_id, fn, lo, hi, tol, name, gain))
        except UserError:  # a function that flattens out may still fit through tanh; if not, one line
            if name == "softplus" and all(float(a) == d for a, d in zip(rest, (1.0, 20.0))):
                return Secret(recipes_compressed.softplus(lw.b, x_id, lo, hi, tol))
            return Secret(recipes_compressed.auto_compressed(lw.b, x_id, fn, lo, hi, tol, name))
    except UserError as e:
        raise UserError(f"{e} (node {node.name})") from None


def _family_fits(family: str | None, fn, lo: float, hi: float, tol: float, name: str) -> dict[str, int]:
    """The tanh family's candidates that fit, with their secret products: the tanh doublings
    ("saturating"; not for erf's forms past ERF_PLAIN_REACH, whose argument outgrows them) and, for
    a member whose odd part is linear (SiLU, GELU), the series in x^2 ("even", ``recipes_even``)."""
    fits: dict[str, int] = {}
    if family is None:
        return fits
    candidates, c = {}, recipes_wide.odd_slope(family)
    if c is not None:
        candidates["even"] = lambda: recipes_even.products(fn, c, lo, hi, tol, name)
    if not (family in ("erf", "gelu") and max(abs(lo), abs(hi)) > recipes_compressed.ERF_PLAIN_REACH):
        candidates["saturating"] = lambda: recipes_wide.products(family, lo, hi, tol)
    for kind, count in candidates.items():
        try:
            fits[kind] = count()
        except UserError:
            pass
    return fits


def _plain_products(fn, lo: float, hi: float, tol: float, name: str) -> float:
    """Secret products of the plain Chebyshev fit (degree - 1), infinite where none fits."""
    try:
        coef = recipes.chebyshev_fit(fn, *recipes.public_range(lo, hi), tol, name)[2]
    except UserError:
        return math.inf
    return max(int(np.max(np.nonzero(coef)[0])) - 1, 0) if np.any(coef) else 0


def _feeds_scaled_pointwise(node) -> bool:
    """Every use of ``node`` is an elementwise op whose output a public factor >= 2 scales up next."""
    return bool(node.users) and all(torch.Tag.pointwise in getattr(u.target, "tags", ()) and output_scale(u) >= 2
                                    for u in node.users)


def output_scale(node) -> float:
    """The largest public factor (> 1) the op's output is multiplied by where it is used: its error
    is scaled by as much. 1 when any use is something else."""
    scales = []
    for user in node.users:
        other = [a for a in user.args if a is not node]
        if len(other) != 1 or not isinstance(other[0], (int, float)):
            return 1.0
        if user.target == aten.mul.Tensor:
            scales.append(abs(other[0]))
        elif user.target == aten.div.Tensor and user.args[0] is node and other[0]:
            scales.append(1.0 / abs(other[0]))
        else:
            return 1.0
    return max([1.0, *scales])


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
        lo, hi = widened(lw.range_of(node.args[0]))  # on the public grid: the user's constants are too
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
    **COMPARISON_RULES,
}
