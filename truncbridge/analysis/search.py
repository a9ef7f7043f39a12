"""Checking and improving a placement directly: the MILP's constraints as a function of the set of
truncated nodes, a local search over such sets, and raising truncation targets for precision."""
from __future__ import annotations

import numpy as np

from ..core.ir import Program
from ..core.ops import spec
from ..core.types import Bound
from .scales import effective_bits, placement_vector


class Checker:
    """Does a placement — truncate these nodes, down to these scales — fit the budget, and what
    does it cost? (The same constraints as the MILP, checked directly.)"""

    def __init__(self, src: Program, f: int, bounds: dict[int, Bound], budget: int):
        self.src, self.f = src, f
        m_eff = effective_bits(src, bounds, f)
        cap = [budget - 1 - m for m in m_eff]
        for v in src.nodes:
            if spec(v).aligned(v):  # aligned operands must fit too
                cap[v.id] = min([cap[v.id]] + [budget - 1 - m_eff[j] for j in v.inputs])
        self.cap = np.array(cap, dtype=float)
        self.candidate = {v.id for v in src.nodes if spec(v).site(v, src)}

    def cost(self, sites: set[int], floors: list[int] | None = None) -> int | None:
        """Truncated elements, or None if some value would not fit."""
        n = len(self.src.nodes)
        x = placement_vector(self.src, self.f, sites, floors)
        if np.any(x[:n] > self.cap):
            return None
        return int(sum(self.src[i].numel for i in sites if x[2 * n + i]))


def improve(check: Checker, sites: set[int]) -> set[int]:
    """Local search on a feasible placement: drop sites that are not needed (largest first), and
    move a site onto its operands when truncating them instead touches fewer elements."""
    src = check.src
    sites = sites & check.candidate
    best = check.cost(sites)
    changed = True
    while changed:
        changed = False
        for v in sorted(sites, key=lambda i: -src[i].numel):
            if v not in sites:
                continue
            for trial in (sites - {v}, (sites - {v}) | (set(src[v].inputs) & check.candidate)):
                c = check.cost(trial)
                if c is not None and c < best:
                    sites, best, changed = trial, c, True
                    break
    return sites


def raise_precision(check: Checker, sites: set[int], eager_floors: list[int]) -> list[int]:
    """Per-node truncation targets: frac_bits, raised to the node's eager scale wherever that
    still fits. Same truncations, same cost; at least eager's precision where the field allows."""
    floors = [check.f] * len(check.src.nodes)
    for v in sorted(sites):
        if eager_floors[v] > check.f:
            floors[v] = eager_floors[v]
            if check.cost(sites, floors) is None:
                floors[v] = check.f
    return floors
