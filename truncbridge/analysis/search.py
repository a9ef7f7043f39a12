"""Checking and improving a placement directly: the MILP's constraints as a function of the set of
truncated nodes, a local search over such sets, and raising truncation targets for precision."""
from __future__ import annotations

import heapq
import time

import numpy as np

from ..core.ir import Program
from ..core.ops import spec
from ..core.types import Bound
from .objective import TRUNCATED_ELEMENTS, Objective
from .scales import effective_bits, placement_vector, scale_rule


class Checker:
    """Does a placement — truncate these nodes, down to these scales — fit the budget, and what
    does it cost? (The same constraints as the MILP, checked directly.)"""

    def __init__(self, src: Program, f: int, bounds: dict[int, Bound], budget: int,
                 objective: Objective = TRUNCATED_ELEMENTS, floors: list[int] | None = None):
        self.src, self.f, self.objective = src, f, objective
        self.floors = list(floors) if floors is not None else [f] * len(src.nodes)  # a truncation's end
        m_eff = effective_bits(src, bounds, f)
        cap = [budget - 1 - m for m in m_eff]
        for v in src.nodes:
            if spec(v).aligned(v):  # aligned operands must fit too
                cap[v.id] = min([cap[v.id]] + [budget - 1 - m_eff[j] for j in v.inputs])
        self.cap = np.array(cap, dtype=float)
        self.candidate = {v.id for v in src.nodes if spec(v).site(v, src)}

    def cost(self, sites: set[int], floors: list[int] | None = None) -> float | None:
        """The objective (truncated elements, or a network's time: ``objective.py``), or None if
        some value would not fit."""
        n = len(self.src.nodes)
        x = placement_vector(self.src, self.f, sites, self.floors if floors is None else floors)
        if np.any(x[:n] > self.cap):
            return None
        return self.objective_of([i for i in sites if x[2 * n + i]])

    def objective_of(self, truncated: list[int]) -> float:
        return self.objective.cost(self.src, set(truncated))


class Placement:
    """A placement (truncated sites, their floors) with its scales, changed incrementally: a trial
    re-derives only the nodes downstream of what it changes, until their scales stop changing —
    near-linear on a model of many identical layers, where a full check per trial is quadratic."""

    def __init__(self, check: Checker, sites: set[int], floors: list[int] | None = None):
        self.check, self.sites = check, set(sites)
        self.floors = list(floors if floors is not None else check.floors)
        n = len(check.src.nodes)
        x = placement_vector(check.src, check.f, self.sites, self.floors)
        self.p, self.q, self.z = list(x[:n]), list(x[n:2 * n]), list(x[2 * n:])
        self.users = check.src.users()
        self.truncated = {i for i in self.sites if self.z[i]}
        self.cost = check.objective_of(self.truncated)

    def trial(self, sites: set[int], floors: dict[int, int] | None = None) -> bool:
        """Move to ``sites`` (and these floors) if every value still fits; else stay. Returns
        whether it moved."""
        floors = floors or {}
        touched = (sites ^ self.sites) | set(floors)
        undo = {"sites": self.sites, "floors": {v: self.floors[v] for v in floors}, "cost": self.cost,
                "truncated": set(self.truncated), "nodes": {}}
        self.sites = sites
        for v, f in floors.items():
            self.floors[v] = f
        if self._propagate(sorted(touched), undo["nodes"]):
            self.cost = self.check.objective_of(self.truncated)
            return True
        self.sites, self.cost, self.truncated = (undo[k] for k in ("sites", "cost", "truncated"))
        for v, f in undo["floors"].items():
            self.floors[v] = f
        for i, (p, q, z) in undo["nodes"].items():
            self.p[i], self.q[i], self.z[i] = p, q, z
        return False

    def _propagate(self, start: list[int], saved: dict) -> bool:
        src, f, cap = self.check.src, self.check.f, self.check.cap
        heap, queued = list(start), set(start)
        heapq.heapify(heap)
        while heap:
            i = heapq.heappop(heap)
            node = src[i]
            p = scale_rule(src, node, [self.q[j] for j in node.inputs], f)[0]
            cut = i in self.sites and p > self.floors[i]
            z, q = (1, self.floors[i]) if cut else (0, p)
            if (p, q, z) == (self.p[i], self.q[i], self.z[i]) and i not in start:
                continue
            saved.setdefault(i, (self.p[i], self.q[i], self.z[i]))
            if (i in self.sites or saved[i][2]) and z != self.z[i]:
                (self.truncated.add if z else self.truncated.discard)(i)
            self.p[i], self.q[i], self.z[i] = p, q, z
            if p > cap[i]:
                return False
            for u in self.users[i]:
                if u not in queued:
                    queued.add(u)
                    heapq.heappush(heap, u)
        return True


def improve(check: Checker, sites: set[int], deadline: float = float("inf"), progress=None) -> set[int]:
    """Local search on a feasible placement: drop sites that are not needed (largest first), and
    move a site onto its operands when truncating them instead costs less. Stops at ``deadline``
    (``time.perf_counter()``) with the best placement so far; ``progress(text)`` hears each pass."""
    src = check.src
    state = Placement(check, sites & check.candidate)
    changed, passes = True, 0
    while changed:
        changed, passes = False, passes + 1
        if progress:
            progress(f"local search pass {passes}: objective {state.cost:.6g}, {len(state.sites)} truncations")
        for v in sorted(state.sites, key=lambda i: -src[i].numel):
            if time.perf_counter() > deadline:
                return state.sites
            if v not in state.sites:
                continue
            best = state.cost
            for trial in (state.sites - {v}, (state.sites - {v}) | (set(src[v].inputs) & check.candidate)):
                before = state.sites
                if state.trial(trial):
                    if state.cost < best:
                        changed = True
                        break
                    state.trial(before)  # no gain: back (always fits: it did before)
    return state.sites


def raise_precision(check: Checker, sites: set[int], eager_floors: list[int]) -> list[int]:
    """Per-node truncation targets: the checker's floors, raised to the node's eager scale wherever
    that still fits. Same truncations, same cost; eager's precision where the field allows."""
    state = Placement(check, sites)
    for v in sorted(sites):
        if eager_floors[v] > state.floors[v]:
            state.trial(state.sites, {v: eager_floors[v]})
    return state.floors
