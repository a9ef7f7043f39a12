"""Lowering rules for linear and structural ops: one function per ATen op family on secret data,
each emitting IR nodes (nonlinear functions: ``lower_functions.py``).

A rule is called as ``rule(lw, node, *args, **kwargs)`` with the ``Lowerer`` (its ``Builder`` is
``lw.b``), the ATen node and its resolved arguments (``Secret`` for secret values); it returns
the result's ``Secret`` (or a tuple / list of them, for ops with several outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from . import recipes
from .calibrate import MASK_VALUE
from .walk import TokenIds, aten_name

aten = torch.ops.aten

@dataclass
class Secret:
    id: int
    keep: torch.Tensor | None = None  # public 0/1 (bool) of entries that are not structurally -inf


def on_embedding(lw, node, weight, indices, *rest, **kw) -> Secret:
    """The client's tokens: the private product one_hot @ table. Public indices (positions,
    token types): rows of the secret table picked by a public index, a local move."""
    if not isinstance(weight, Secret):
        raise UserError(f"aten.embedding of a public table by secret indices is not supported (node {node.name})")
    if not isinstance(indices, TokenIds):
        return lw.move(node, [weight, [torch.as_tensor(indices)]], {}, fn="aten.index.Tensor")
    vocab, dim = lw.b.shape(weight.id)
    onehot = lw.b.input("tokens", (lw.captured.batch, lw.captured.seq_len, vocab), integer=True)
    out = lw.b.matmul(onehot, weight.id)
    if indices.shape != (lw.captured.batch, lw.captured.seq_len):  # the ids were reshaped first
        out = lw.b.move("aten.view.default", [out], ["$0", [*indices.shape, dim]])
    return Secret(out)


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


def on_split(lw, node, x, sizes, dim=0) -> list[Secret]:
    """split / split_with_sizes: one slice move per part."""
    total = lw.b.shape(lw.plain(x, "a split"))[dim]
    if isinstance(sizes, int):
        sizes = [min(sizes, total - start) for start in range(0, total, sizes)]
    parts, start = [], 0
    for size in sizes:
        parts.append(Secret(lw.b.move("aten.slice.Tensor", [x.id], ["$0", dim, start, start + size])))
        start += size
    return parts


def on_unbind(lw, node, x, dim=0) -> list[Secret]:
    return [Secret(lw.b.move("aten.select.int", [lw.plain(x, "unbind")], ["$0", dim, i]))
            for i in range(lw.b.shape(x.id)[dim])]


def on_to_copy(lw, node, x, **kwargs) -> Secret:
    dtype = kwargs.get("dtype")
    if dtype is not None and not dtype.is_floating_point:
        raise UserError(f"cast of a secret value to {dtype} is not supported (node {node.name})")
    return x


def on_full_like(lw, node, x, value, **kwargs) -> torch.Tensor:
    """A constant of a secret's shape: public (it does not read the secret)."""
    val = node.meta["val"]
    return torch.full(tuple(val.shape), value, dtype=val.dtype)


def _and_keep(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


LINEAR_RULES = {
    aten.embedding.default: on_embedding,
    aten.add.Tensor: on_add, aten.sub.Tensor: on_sub, aten.mul.Tensor: on_mul, aten.neg.default: on_neg,
    aten.mean.dim: on_mean, aten.sum.dim_IntList: on_sum,
    aten.mm.default: on_matmul, aten.bmm.default: on_matmul, aten.matmul.default: on_matmul, aten.addmm.default: on_addmm,
    aten.split_with_sizes.default: on_split, aten.split.Tensor: on_split, aten.unbind.int: on_unbind,
    aten._to_copy.default: on_to_copy, aten.full_like.default: on_full_like,
}
