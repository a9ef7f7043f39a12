"""Lowering rules: one function per ATen op family on secret data, each emitting IR nodes.

A rule is called as ``rule(lw, node, *args, **kwargs)`` with the ``Lowerer`` (its ``Builder`` is
``lw.b``), the ATen node and its resolved arguments (``Secret`` for secret values); it returns
the result's ``Secret``. Linear ops map one to one; nonlinear ops become range-aware recipes
(``recipes.py``), built for their calibrated input ranges, widened by a margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf as np_erf

from ..core.errors import UserError
from . import recipes
from .calibrate import MASK_VALUE, Range
from .walk import TOKENS, aten_name

aten = torch.ops.aten


@dataclass
class Secret:
    id: int
    keep: torch.Tensor | None = None  # public 0/1 (bool) of entries that are not structurally -inf

RANGE_MARGIN = 0.25  # widen calibrated intervals by this fraction of their span on each side
POSITIVE_MARGIN = 4.0  # positive ranges (rsqrt, reciprocal inputs): lo / 4, hi * 4


def _widen(r: Range) -> tuple[float, float]:
    pad = RANGE_MARGIN * max(r.hi - r.lo, 1e-3)
    return r.lo - pad, r.hi + pad


def _positive(r: Range, name: str) -> tuple[float, float]:
    if r.lo <= 0:
        raise UserError(f"{name} input was not strictly positive in calibration (min {r.lo:.4g})")
    return r.lo / POSITIVE_MARGIN, r.hi * POSITIVE_MARGIN


def on_embedding(lw, node, weight, indices, *rest, **kw) -> Secret:
    if indices is not TOKENS or not isinstance(weight, Secret):
        raise UserError("aten.embedding is supported only as (secret table, client token ids)")
    vocab = lw.b.shape(weight.id)[0]
    onehot = lw.b.input("tokens", (lw.captured.batch, lw.captured.seq_len, vocab), integer=True)
    return Secret(lw.b.matmul(onehot, weight.id))


def on_add(lw, node, a, b, alpha=1) -> Secret:
    if not isinstance(a, Secret):
        a, b = b, a
        if alpha != 1:
            raise UserError("aten.add with alpha on a public first operand is not supported")
    elif alpha != 1:
        b = _scaled_by(lw, b, alpha)
    if isinstance(b, Secret):
        keep = _and_keep(a.keep, b.keep)
        return Secret(lw.b.add(a.id, b.id), keep)
    public = torch.as_tensor(b, dtype=torch.float64)
    structural = public <= MASK_VALUE
    keep = a.keep
    if structural.any():
        keep = _and_keep(keep, ~structural)
        public = public.masked_fill(structural, 0.0)
    out = lw.b.add_public(a.id, public)
    if keep is not None:
        keep = torch.broadcast_to(keep, lw.b.shape(out))
    return Secret(out, keep)


def _scaled_by(lw, v, factor):
    if isinstance(v, Secret):
        return Secret(lw.b.mul_public(lw.plain(v, "a scaled sum"), factor))
    return v * factor


def on_sub(lw, node, a, b, alpha=1) -> Secret:
    neg_b = Secret(lw.b.neg(lw.plain(b, "aten.sub"))) if isinstance(b, Secret) else -b
    return on_add(lw, node, a, neg_b, alpha)


def on_neg(lw, node, a) -> Secret:
    return Secret(lw.b.neg(lw.plain(a, "aten.neg")))


def on_mul(lw, node, a, b) -> Secret:
    if isinstance(a, Secret) and isinstance(b, Secret):
        out = lw.b.mul(lw.plain(a, "aten.mul"), lw.plain(b, "aten.mul"))
        for x, r in ((a.id, b.id), (b.id, a.id)):
            if lw.rms_of.get(r, (None,))[0] == x:  # x / sqrt(mean(x^2)): rows have l2 norm sqrt(n)
                norm = math.sqrt(lw.rms_of[r][1]) * recipes.NORM_SLACK
                lw.b.declare(out, norm)
                lw.b.program[out].facts.row_l2 = norm
        return Secret(out)
    s, p = (a, b) if isinstance(a, Secret) else (b, a)
    p = torch.as_tensor(p, dtype=torch.float64)
    if s.keep is not None and bool((p <= 0).any()):
        raise UserError("a -inf mask is multiplied by a non-positive public value")
    out = lw.b.mul_public(s.id, p)
    keep = None if s.keep is None else torch.broadcast_to(s.keep, lw.b.shape(out))
    return Secret(out, keep)


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


def on_mean(lw, node, x, dims, keepdim=False, **kw) -> Secret:
    x_id = lw.plain(x, "aten.mean")
    shape = lw.b.shape(x_id)
    count = math.prod(shape[d] for d in dims)
    return Secret(lw.b.mul_public(lw.b.sum(x_id, list(dims), keepdim), 1.0 / count))


def on_sum(lw, node, x, dims, keepdim=False, **kw) -> Secret:
    return Secret(lw.b.sum(lw.plain(x, "aten.sum"), list(dims), keepdim))


def on_matmul(lw, node, a, b) -> Secret:
    if not (isinstance(a, Secret) and isinstance(b, Secret)):
        raise UserError(f"{aten_name(node.target)} with a public operand is not supported (node {node.name})")
    return Secret(lw.b.matmul(lw.plain(a, "a matmul"), lw.plain(b, "a matmul")))


def on_addmm(lw, node, bias, a, b, beta=1, alpha=1) -> Secret:
    if beta != 1 or alpha != 1:
        raise UserError("aten.addmm with alpha/beta != 1 is not supported")
    return on_add(lw, node, on_matmul(lw, node, a, b), bias)


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


def on_to_copy(lw, node, x, **kwargs) -> Secret:
    dtype = kwargs.get("dtype")
    if dtype is not None and not dtype.is_floating_point:
        raise UserError(f"cast of a secret value to {dtype} is not supported (node {node.name})")
    return x


def _chebyshev_rule(name: str, fn):
    """A rule for an elementwise function approximated by a Chebyshev fit on its input range."""
    def rule(lw, node, x, *rest, **kw) -> Secret:
        lo, hi = _widen(lw.range_of(node.args[0]))
        return Secret(recipes.chebyshev(lw.b, lw.plain(x, name), fn, lo, hi, lw.tol, name))

    return rule


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


def _and_keep(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


UNARY_FUNCTIONS = {  # elementwise functions approximated by a Chebyshev fit on their input range
    aten.sigmoid.default: ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    aten.silu.default: ("silu", lambda x: x / (1 + np.exp(-x))),
    aten.tanh.default: ("tanh", np.tanh),
    aten.gelu.default: ("gelu", lambda x: 0.5 * x * (1 + np_erf(x / math.sqrt(2)))),
    aten.erf.default: ("erf", np_erf),
}


RULES = {
    aten.embedding.default: on_embedding,
    aten.add.Tensor: on_add, aten.sub.Tensor: on_sub, aten.mul.Tensor: on_mul, aten.div.Tensor: on_div,
    aten.neg.default: on_neg, aten.pow.Tensor_Scalar: on_pow, aten.mean.dim: on_mean, aten.sum.dim_IntList: on_sum,
    aten.mm.default: on_matmul, aten.bmm.default: on_matmul, aten.matmul.default: on_matmul, aten.addmm.default: on_addmm,
    aten.rsqrt.default: on_rsqrt, aten.sqrt.default: on_sqrt, aten.reciprocal.default: on_reciprocal,
    aten.exp.default: on_exp, aten._softmax.default: on_softmax, aten._to_copy.default: on_to_copy,
    **{target: _chebyshev_rule(name, fn) for target, (name, fn) in UNARY_FUNCTIONS.items()},
}
