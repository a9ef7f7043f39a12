"""The optimal placement's integer program (``milp.py`` solves it): variables, constraints and
cost for a program under an objective (``objective.py``), and the point a placement stands for."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ..core.ir import Program
from ..core.ops import spec
from ..core.types import Bound
from .objective import Objective
from .scales import adds_a_fraction, const_scale, effective_bits, lowest_possible_scales, placement_vector, source_scale


def milp_rounds(program: Program, objective: Objective, truncated: set[int]) -> tuple[list[float], dict, set, set]:
    """The rounds as the MILP's rows count them (``_round_rows``): per node, the round its value
    is ready after (its truncation included); per riding product the input side it rides with
    (2: both); and the riding products that hold an opened operand, and those that hold two in a
    term (``_ride_rows``). A product rides wherever it can: that never makes it later."""
    t: list[float] = []
    side_of: dict[int, int] = {}
    riding, holding, paired = set(), set(), set()
    for node in program.nodes:
        ins = [t[j] for j in node.inputs]
        own = objective.op_rounds.get(node.id, 0.0)
        ready = max(ins, default=0.0) + own
        opened = objective.opened.get(node.id, ())
        for s, (heads, carriers) in enumerate(objective.rides.get(node.id, ())):
            if heads & truncated or carriers & riding - (paired if opened[s] else set()):  # input s truncated
                riding.add(node.id)
                at = max([ins[s]] + [x + own for k, x in enumerate(ins) if node.inputs[k] != node.inputs[s]])
                if node.id not in side_of or at < ready:
                    side_of[node.id], ready = s, at
        if _hangs_off_shared(objective, node.id, truncated, riding):  # both inputs hang off one truncation
            side_of[node.id], ready = 2, max(ins)
            riding.add(node.id)
        side = side_of.get(node.id, 2)
        if side < 2 and opened[side]:  # it opens its other input, and holds a pair unless a fresh ride is there
            holding.add(node.id)
            heads, carriers = objective.rides[node.id][side]
            if not heads & truncated and not carriers & riding - holding:
                paired.add(node.id)
        t.append(ready + objective.truncation_rounds * (node.id in truncated))
    return t, side_of, holding, paired


def _hangs_off_shared(objective: Objective, m: int, truncated: set[int], riding: set[int]) -> bool:
    """Each input's chain: its first truncated site is a shared one, or none is and its base rides."""
    for chain, base in objective.shared_chains.get(m, ()):
        first = next((is_shared for u, is_shared in chain if u in truncated), None)
        if not (first or first is None and base in riding):
            return False
    return m in objective.shared_chains


class Block(IntEnum):
    """The MILP's per-node variables, one block of n columns each (``Columns``)."""
    P = 0  # scale before its truncation
    Q = 1  # scale after it
    Z = 2  # truncated
    YA = 3  # rides with input 0 truncated
    YB = 4  # rides with input 1 truncated
    W = 5  # rides with both inputs hanging off one truncation
    H = 6  # holds an opened operand
    G = 7  # holds two in a term
    T = 8  # the round the value is ready after


P, Q, Z, YA, YB, W, H, G, T = Block
BLOCKS = len(Block)


@dataclass(frozen=True)
class Columns:
    """Where each variable sits: ``block(Z)[i]`` is node i's truncation column; after the blocks,
    one column, ``last``: the last round."""
    n: int

    def block(self, b: Block) -> range:
        return range(b * self.n, (b + 1) * self.n)

    def span(self, first: Block, stop: Block | None = None) -> slice:
        """The columns of blocks first.. up to stop (excluded; None: to the end, the last round too)."""
        return slice(first * self.n, None if stop is None else stop * self.n)

    @property
    def last(self) -> int:
        return BLOCKS * self.n

    @property
    def size(self) -> int:
        return self.last + 1


def start_vector(src: Program, f: int, truncated: set[int], objective: Objective,
                 floors: list[int] | None = None) -> np.ndarray:
    """The MILP point of the placement that truncates ``truncated`` (down to its floors, default
    f): scales, rides and rounds as ``milp_rounds`` counts them."""
    n = len(src.nodes)
    pqz = placement_vector(src, f, truncated, floors)
    y, h, t = np.zeros((3, n)), np.zeros((2, n)), np.zeros(n)
    if objective.counts_rounds:
        z = Columns(n).block(Z)
        rounds, side_of, holding, paired = milp_rounds(src, objective, {i for i in truncated if pqz[z[i]]})
        t[:] = rounds
        for m, side in side_of.items():
            y[side, m] = 1
        h[0, list(holding)] = 1
        h[1, list(paired)] = 1
    return np.concatenate([pqz, *y, *h, t, [t.max(initial=0)]])


@dataclass
class MilpModel:
    cost: np.ndarray
    var_lo: np.ndarray
    var_hi: np.ndarray
    A: object  # scipy.sparse CSC, rows x [p | q | z | ya | yb | w | h | g | t | last round]
    row_lo: np.ndarray
    row_hi: np.ndarray
    row_owner: list[int]  # the node whose op each row constrains


def milp_model(src: Program, f: int, bounds: dict[int, Bound], budget: int, objective: Objective,
               floors: list[int] | None = None) -> MilpModel:
    """Cost, variable bounds, constraint matrix and row bounds; the variables are the blocks
    [p | q | z | ya | yb | t] per node, then the last round. A truncation ends at the node's floor
    (default f)."""
    from scipy.sparse import coo_matrix

    nodes, n = src.nodes, len(src.nodes)
    cols = Columns(n)
    p, q, z, ya, yb, w, h, g = (cols.block(b) for b in (P, Q, Z, YA, YB, W, H, G))
    m_eff = effective_bits(src, bounds, f)
    smax = [budget - 1 - m for m in m_eff]  # highest scale each value can take
    with np.errstate(over="ignore"):  # with nothing truncated, scales double at each square: inf is a fine cap
        untruncated = placement_vector(src, f, set())[:n]  # scales if nothing were truncated: caps p
    rows, lo, hi, owner = [], [], [], []

    def con(coefs: dict[int, float], low: float, high: float) -> None:
        rows.append(coefs)
        lo.append(low)
        hi.append(high)
        owner.append(i)

    var_lo = np.full(cols.size, -float(budget))  # scales below -budget would be pointless
    var_hi = np.full(cols.size, float(budget))
    var_lo[cols.span(Z)], var_hi[cols.span(Z, T)] = 0, 1
    var_hi[cols.span(YA, T)] = 0  # y: only products that can ride
    var_hi[cols.span(T)] = _round_cap(objective, n) if objective.counts_rounds else 0
    for i, coefs, high in _ride_rows(objective, cols):
        var_hi[[y[i] for y, _ in zip((ya, yb), objective.rides[i])] + [w[i]] * (i in objective.shared)] = 1
        var_hi[h[i]] = var_hi[g[i]] = any(objective.opened[i])
        con(coefs, -np.inf, high)
    floor = [f] * n if floors is None else floors
    big = [max(min(smax[i], untruncated[i]) - floor[i], 0) for i in range(n)]  # the most a truncation drops
    truncatable = {v.id for v in nodes if spec(v).site(v, src) and big[v.id] > 0}
    low_p, low_q = lowest_possible_scales(src, f, floor, truncatable)
    for v in nodes:
        i = v.id
        var_lo[p[i]], var_lo[q[i]] = max(low_p[i], -budget), max(low_q[i], -budget)
        var_hi[p[i]] = var_hi[q[i]] = smax[i]  # above the budget for values below 1 (q <= p anyway)
        _scale_rows(src, v, f, budget, m_eff, var_lo, var_hi, con)
        # truncation: 0 <= p - q <= z * (highest p - floor), and q = floor exactly when z = 1
        con({p[i]: 1, q[i]: -1}, 0, np.inf)
        con({p[i]: 1, q[i]: -1, z[i]: -big[i]}, -np.inf, 0)
        con({q[i]: 1, z[i]: -(floor[i] - var_lo[q[i]])}, var_lo[q[i]], np.inf)  # z = 1 => q >= floor
        con({q[i]: 1, z[i]: big[i]}, -np.inf, floor[i] + big[i])  # z = 1  =>  q <= floor
        if i not in truncatable:
            var_hi[z[i]] = 0
        if objective.counts_rounds:
            for coefs, low in _round_rows(objective, v, cols):
                con(coefs, low, np.inf)

    eps = 1.0 / (4.0 * n * 2 * budget)  # scales break ties only, never outweigh one element
    cost = np.zeros(cols.size)
    cost[cols.span(P, Z)] = eps
    cost[cols.span(Z, YA)] = [float(v.numel) for v in nodes]
    cost[cols.last] = objective.round_elements
    A = coo_matrix(([c for r in rows for c in r.values()],
                    ([k for k, r in enumerate(rows) for _ in r], [c for r in rows for c in r])),
                   shape=(len(rows), cols.size)).tocsc()
    return MilpModel(cost, var_lo, var_hi, A, np.array(lo, dtype=float), np.array(hi, dtype=float), owner)


def _scale_rows(src: Program, v, f: int, budget: int, m_eff: list[int], var_lo, var_hi, con) -> None:
    """p follows the op: a source's scale is fixed, aligned operands take the highest scale (and
    fit at it), products add scales, a public multiplier or a relabel shifts it."""
    cols, i, ins = Columns(len(src.nodes)), v.id, v.inputs
    p, q = cols.block(P), cols.block(Q)
    scaling = spec(v).scaling
    if scaling in ("source", "integer"):
        var_lo[p[i]] = var_hi[p[i]] = source_scale(v, f) if scaling == "source" else 0
    elif spec(v).aligned(v):
        for j in ins:
            con({p[i]: 1, q[j]: -1}, 0, np.inf)  # p >= q_j
            con({p[i]: 1}, -np.inf, budget - 1 - m_eff[j])  # operand j shifted to p fits
    elif scaling == "sum":  # p = q_a + q_b (a square x * x counts q_x twice)
        coefs = {p[i]: 1}
        for j in ins:
            coefs[q[j]] = coefs.get(q[j], 0) - 1
        con(coefs, 0, 0)
    elif adds_a_fraction(src, v, f - 1):  # fractional at f - 1, so at every scale below f
        con({p[i]: 1, q[ins[0]]: -1}, 0, np.inf)  # p = max(q, f): a fractional constant needs frac_bits
        var_lo[p[i]] = max(var_lo[p[i]], f)  # (scales.scale_rule; the check of the result is exact)
    else:  # p = q + c: c the public multiplier's scale, minus a relabel's exponent, or 0
        c = const_scale(src, v, f) if scaling == "public" else -v.attrs["exp"] if scaling == "relabel" else 0
        con({p[i]: 1, q[ins[0]]: -1}, c, c)


def _round_cap(objective: Objective, n: int) -> float:
    return sum(objective.op_rounds.values()) + objective.truncation_rounds * n


def _round_rows(objective: Objective, v, cols: Columns):
    """(row, lower bound): the node is ready after each input, plus its own rounds unless it rides
    with that input's side truncated (``milp_rounds``), plus its truncation's; and
    the last round is no earlier."""
    i, own = v.id, objective.op_rounds.get(v.id, 0.0)
    t, z = cols.block(T), cols.block(Z)
    sides = objective.rides.get(i, ())
    for k, j in enumerate(v.inputs):
        coefs = {t[i]: 1, t[j]: -1, z[i]: -objective.truncation_rounds}
        if sides:
            side = k if len(sides) == 2 else 0  # a square has one side
            coefs[cols.block((YA, YB)[side])[i]] = own
        if i in objective.shared:
            coefs[cols.block(W)[i]] = own
        yield coefs, own
    if not v.inputs:
        yield {t[i]: 1, z[i]: -objective.truncation_rounds}, 0
    yield {cols.last: 1, t[i]: -1}, 0


def _ride_rows(objective: Objective, cols: Columns):
    """(product, row, upper bound): it rides with side s truncated only if a site on that side is
    truncated or a product there that would carry it rides (``core.fusion.ride_sites``); on one
    side at most. Riding on a side that opens the other input (``core.fusion.opened_sides``), it
    holds an opened operand (h), and two in a term (g) if no site there is truncated and every
    carrier there holds one; no carrier there may hold two (``core.fusion._Shape.times``)."""
    z, ya, yb, w, h, g = (cols.block(b) for b in (Z, YA, YB, W, H, G))
    for i, sides in objective.rides.items():
        for s, side in enumerate(sides):
            y = (ya, yb)[s][i]
            coefs = {y: 1, **{z[u]: -1 for u in side.heads}}
            for u in side.carriers:
                for b in (ya, yb, w):
                    coefs[b[u]] = coefs.get(b[u], 0) - 1
            if objective.opened[i][s]:
                yield i, {y: 1, h[i]: -1}, 0
                yield i, {**coefs, g[i]: -1, **{h[u]: 1 for u in side.carriers}}, 0
                coefs |= {g[u]: 1 for u in side.carriers}
            yield i, coefs, 0
        yield i, {ya[i]: 1, yb[i]: 1, w[i]: 1}, 1
        yield i, {h[i]: 1, ya[i]: -1, yb[i]: -1, w[i]: -1}, 0  # only a riding product holds one
        yield i, {g[i]: 1, h[i]: -1}, 0
    for i, heads in objective.shared.items():
        yield i, {w[i]: 1, **{z[u]: -1 for u in heads}}, 0
        for chain in objective.shared_chains[i]:  # each input hangs off a shared site (_hangs_off_shared)
            coefs = {w[i]: 1, **{z[u]: -1 for u, is_shared in chain.sites if is_shared}}
            for b in (ya, yb, w) if chain.base is not None else ():
                coefs[b[chain.base]] = coefs.get(b[chain.base], 0) - 1
            yield i, coefs, 0
            for k, (u, is_shared) in enumerate(chain.sites):  # a truncation off the shared sites, unless one nearer
                if not is_shared:
                    yield i, {w[i]: 1, z[u]: 1, **{z[x]: -1 for x, s in chain.sites[:k] if s}}, 1
