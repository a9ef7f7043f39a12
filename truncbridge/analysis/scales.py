"""Fixed-point scales: how a node's scale follows its inputs' (the op table's ``scaling``), and
what a value at some scale costs in bits.

A node at scale s holds round(x 2^s); with |x| < 2^m its integer needs m + s + 1 bits (sign
included). Products add scales, free rescales (``pow2``) relabel them, additions align their
operands at the higher scale; a public multiplier is encoded at scale 0 when it is a small
integer, else at frac_bits.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Node, Program
from ..core.ops import spec
from ..core.types import ROUNDING_FLOOR_BITS, Bound

INTEGER_CONST_LIMIT = 2**20  # public integer constants up to this size are encoded at scale 0


def is_small_integer(t: torch.Tensor) -> bool:
    if not t.numel():
        return True
    return bool(torch.all(t == torch.round(t))) and bool(t.abs().max() < INTEGER_CONST_LIMIT)


def adds_a_fraction(src: Program, node: Node, scale: float) -> bool:
    """An add_public whose constant is not a (small) integer at ``scale``: it needs more fraction bits."""
    return node.op == "add_public" and not is_small_integer(src.consts[node.attrs["const"]] * 2.0**scale)


def const_scale(program: Program, node: Node, frac_bits: int) -> int:
    """Scale a public multiplier is encoded at: 0 for small integers, else frac_bits."""
    return 0 if is_small_integer(program.consts[node.attrs["const"]]) else frac_bits


def source_scale(node: Node, frac_bits: int) -> int:
    if node.op == "input":
        return 0 if node.attrs.get("integer") else frac_bits
    return frac_bits  # weights


def scale_rule(src: Program, node: Node, s: list, f: int) -> tuple:
    """A node's scale from its inputs' scales ``s``, and the extra attrs the node needs (a public
    multiplier's scale)."""
    scaling = spec(node).scaling
    if scaling == "source":
        return source_scale(node, f), {}
    if scaling == "max":
        return max(s), {}
    if scaling == "same":
        if s[0] < f and adds_a_fraction(src, node, s[0]):
            return f, {}  # a fractional constant needs frac_bits: the input is shifted up (``Emitter.emit``)
        return s[0], {}
    if scaling == "relabel":
        return s[0] - node.attrs["exp"], {}
    if scaling == "sum":
        return sum(s), {}
    if scaling == "integer":
        return 0, {}
    if scaling == "public":
        cs = const_scale(src, node, f)
        return s[0] + cs, {"const_scale": cs}
    raise UserError(f"placement: unexpected op {node.op!r} (node {node.id})")


def effective_bits(src: Program, bounds: dict[int, Bound], f: int) -> list[int]:
    """Per node, the m of |x| < 2^m used against the budget (floored for rounding error)."""
    return [max(bounds[v.id].bits(), ROUNDING_FLOOR_BITS - f) for v in src.nodes]


def placement_vector(src: Program, f: int, truncated: set[int], floors: list[int] | None = None) -> np.ndarray:
    """The MILP variables (p, q, z) of the placement that truncates exactly the nodes in
    ``truncated``, each down to its floor (default: f)."""
    n = len(src.nodes)
    p, q, z = np.zeros(n), np.zeros(n), np.zeros(n)
    for v in src.nodes:
        p[v.id] = scale_rule(src, v, [q[i] for i in v.inputs], f)[0]
        floor = f if floors is None else floors[v.id]
        cut = v.id in truncated and p[v.id] > floor
        z[v.id], q[v.id] = (1, floor) if cut else (0, p[v.id])
    return np.concatenate([p, q, z])


def lowest_possible_scales(src: Program, f: int, floors: list[int], truncatable: set[int]) -> tuple[list, list]:
    """Per node, the lowest scale any placement can give it before (p) and after (q) its
    truncation: a scale never falls as its inputs' rise (``scale_rule``), and a truncation ends at
    its floor. Bounds the MILP's scales from below: without them its relaxation lets a sliver of a
    truncation lower a scale at will, and proves little."""
    low_p, low_q = [0] * len(src.nodes), [0] * len(src.nodes)
    for v in src.nodes:
        low_p[v.id] = scale_rule(src, v, [low_q[j] for j in v.inputs], f)[0]
        low_q[v.id] = min(low_p[v.id], floors[v.id]) if v.id in truncatable else low_p[v.id]
    return low_p, low_q


def products(src: Program) -> set[int]:
    """Nodes whose scales add (private and public products): eager truncates after each."""
    return {v.id for v in src.nodes if spec(v).product}


def eager_scales(src: Program, f: int) -> list[int]:
    """Each node's scale under eager: frac_bits after products, more where a division relabelled
    a value up. Lazy and optimal truncate to these where the field allows."""
    n = len(src.nodes)
    q = placement_vector(src, f, products(src))[n:2 * n]
    return [int(max(f, s)) for s in q]
