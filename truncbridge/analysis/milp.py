"""Optimal placement: an integer program over every node's scale and truncation (HiGHS MILP via
highspy), minimising the objective (truncated elements, or a network's time: ``objective.py``)
under the budget and precision constraints."""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..core.ir import Program
from ..core.ops import spec
from ..core.types import Bound
from .objective import TRUNCATED_ELEMENTS, Objective
from .scales import const_scale, effective_bits, placement_vector, source_scale

BLOCK_SOLVE_MIN_NODES = 4000  # above this, one MILP per repeated layer (boundaries fixed)
MIN_BLOCK_TIME_S = 0.5  # each layer's share of the time limit, at least
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+(?=[.:]|$)")


def solve_optimal(src: Program, f: int, bounds: dict[int, Bound], budget: int, time_limit: float,
                  start: set[int], objective: Objective = TRUNCATED_ELEMENTS,
                  progress=None) -> tuple[set[int] | None, dict]:
    """MILP: per node, scale before (p) and after (q) an optional truncation (z = 1), and whether
    a product rides on a placed truncation (y = 1, ``core.fusion``).

    p follows the op (products add scales, additions take the max of their operands), every
    value and every aligned operand fits the budget at its scale, a truncation ends at exactly f
    (any higher end is no cheaper and leaves fewer bits), a product rides only if a truncation
    it can ride on is placed, and the objective is ``objective``'s (ties: lower scales). HiGHS is
    given ``start``, a feasible set of truncated nodes; stopped by its time limit it may return nothing (None) or a worse set, so
    the caller keeps the better of the two.

    A large program (a full-size model) is solved a layer at a time: every value that crosses
    a layer boundary keeps the start's scale, so each layer's MILP is small and independent and
    the time limit is shared out between them. Optimal per layer at best, not proven optimal
    overall. (Layers are never identical MILPs in practice: their calibrated recipe ranges and
    bit-widths differ, so each is solved.)

    ``progress(text)``, if given, hears the incumbent, the bound and the gap about once a second.
    """
    n = len(src.nodes)
    deadline = time.perf_counter() + time_limit  # building the model counts too
    model = _milp_model(src, f, bounds, budget, objective)
    x0 = _with_rides(placement_vector(src, f, start), objective)
    t = time.perf_counter()
    report = {"solver": "HiGHS MILP", "variables": 4 * n, "constraints": len(model.row_lo),
              "start_elements": int(sum(src.nodes[i].numel for i in start))}
    if n >= BLOCK_SOLVE_MIN_NODES and len(blocks := _layer_blocks(src)) > 1:
        x, status, gap = _solve_by_blocks(src, model, x0, blocks, deadline, report, progress)
    else:
        x, status, gap = _highs(model.cost, model.var_lo, model.var_hi, model.A, model.row_lo, model.row_hi,
                                x0, max(deadline - time.perf_counter(), 0.01), progress)
    report.update(status=status, proven_optimal=status == "Optimal", milp_s=round(time.perf_counter() - t, 3))
    if x is None:  # stopped before it took up the start
        return None, report
    z = x[2 * n:3 * n]
    return {v.id for v in src.nodes if z[v.id]}, {
        **report, "mip_gap": gap, "objective_elements": int(sum(v.numel for v in src.nodes if z[v.id])),
        "objective": float(model.cost[2 * n:] @ x[2 * n:]) + objective.round_elements * len(objective.rides)}


def _with_rides(x: np.ndarray, objective: Objective) -> np.ndarray:
    """[p | q | z] -> [p | q | z | y]: y = 1 for the products a truncation in z lets ride."""
    n = len(x) // 3
    y = np.zeros(n)
    for m, (sites, carriers) in objective.rides.items():  # in program order: carriers come first
        y[m] = float(any(x[2 * n + u] for u in sites) or any(y[u] for u in carriers))
    return np.concatenate([x, y])


def _layer_blocks(src: Program) -> dict[str, list[int]]:
    """Node ids by the model layer they come from (``origin``); the rest in one block ("")."""
    blocks: dict[str, list[int]] = {}
    for v in src.nodes:
        m = LAYER.search(v.origin or "")
        blocks.setdefault(m.group(0) if m else "", []).append(v.id)
    return blocks


def _solve_by_blocks(src: Program, model: MilpModel, x0: np.ndarray, blocks: dict[str, list[int]],
                     deadline: float, report: dict, progress=None):
    n = len(src.nodes)
    block_of = {i: key for key, ids in blocks.items() for i in ids}
    read_elsewhere = {j for v in src.nodes for j in v.inputs if block_of[j] != block_of[v.id]}
    rows_of: dict[str, list[int]] = {}
    for r, owner in enumerate(model.row_owner):
        rows_of.setdefault(block_of[owner], []).append(r)
    A = model.A.tocsr()
    x, statuses, gap = x0.copy(), [], 0.0
    for k, (key, ids) in enumerate(blocks.items()):
        outside = sorted({j for i in ids for j in src.nodes[i].inputs if block_of[j] != key})
        local = sorted(set(ids) | set(outside))
        cols = np.concatenate([np.array(local) + b * n for b in range(4)])
        lo_v, hi_v = model.var_lo[cols].copy(), model.var_hi[cols].copy()
        fixed = [c for c, i in enumerate(local) if i in outside] + \
                [len(local) + c for c, i in enumerate(local) if i in outside or i in read_elsewhere]
        fixed += [b * len(local) + c for b in (2, 3) for c, i in enumerate(local) if i in outside]
        lo_v[fixed] = hi_v[fixed] = x0[cols][fixed]  # the boundary keeps the start's scales
        rows = rows_of.get(key, [])
        remaining = deadline - time.perf_counter()
        if remaining <= 0:  # out of time: this layer keeps the start
            statuses.append("Time limit reached")
            continue
        share = min(max(remaining / (len(blocks) - k), MIN_BLOCK_TIME_S), remaining)
        said = progress and (lambda text, k=k: progress(f"layer {k + 1}/{len(blocks)}: {text}"))
        got, status, g = _highs(model.cost[cols], lo_v, hi_v, A[rows][:, cols].tocsc(), model.row_lo[rows],
                                model.row_hi[rows], x0[cols], share, said)
        statuses.append(status)
        if got is not None and model.cost[cols] @ got <= model.cost[cols] @ x0[cols]:  # never worse
            x[cols], gap = got, max(gap, g)
    report.update(blocks=len(blocks), blocks_proven_optimal=statuses.count("Optimal"))
    status = "Optimal per layer" if all(s == "Optimal" for s in statuses) else \
        ", ".join(sorted(set(statuses))) + " (per layer)"
    return x, status, gap


def _highs(cost, var_lo, var_hi, A, row_lo, row_hi, start: np.ndarray, time_limit: float, progress=None):
    """One integer program: (solution or None, status, relative gap)."""
    import highspy

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(row_lo)
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, var_lo, var_hi
    # a riding product earns its round back (cost -R, y <= 1): counted from R (1 - y) instead, the
    # objective is the real one, so HiGHS's gap is relative to what the plan costs
    lp.offset_ = float(-np.minimum(cost, 0) @ np.maximum(var_hi, 0))
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
    lp.integrality_ = [highspy.HighsVarType.kInteger] * len(cost)
    with _c_stdout_silenced():  # HiGHS prints a banner from C++ when it starts
        h = highspy.Highs()
    for option, value in (("output_flag", False), ("time_limit", float(time_limit)), ("mip_rel_gap", 0.0),
                          ("threads", 1)):
        h.setOptionValue(option, value)
    h.passModel(lp)
    initial = highspy.HighsSolution()
    initial.col_value = list(start)
    h.setSolution(initial)
    if progress:
        _report_progress(h, progress, time_limit)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.round(np.array(h.getSolution().col_value)).astype(int)
    info = h.getInfo()
    if len(x) != len(cost) or info.primal_solution_status == 0:
        return None, status, float("inf")
    return x, status, float(info.mip_gap)


PROGRESS_EVERY_S = 1.0


def _report_progress(h, progress, time_limit: float) -> None:
    """HiGHS calls back during the search: pass on its incumbent, bound and gap (throttled)."""
    import highspy

    kinds = highspy.cb.HighsCallbackType
    last = [-PROGRESS_EVERY_S]

    def said(kind, message, out, given, user):
        improved = kind == kinds.kCallbackMipImprovingSolution
        if improved or out.running_time - last[0] >= PROGRESS_EVERY_S:
            last[0] = out.running_time
            gap = f"{out.mip_gap:.1%}" if np.isfinite(out.mip_gap) else "-"
            progress(f"MILP {out.running_time:.0f}/{time_limit:.0f} s, best {out.mip_primal_bound:.6g}, "
                     f"bound {out.mip_dual_bound:.6g}, gap {gap}")

    h.setCallback(said, None)
    for kind in (kinds.kCallbackMipImprovingSolution, kinds.kCallbackMipInterrupt):
        h.startCallback(kind)


@dataclass
class MilpModel:
    cost: np.ndarray
    var_lo: np.ndarray
    var_hi: np.ndarray
    A: object  # scipy.sparse CSC, rows x [p | q | z | y]
    row_lo: np.ndarray
    row_hi: np.ndarray
    row_owner: list[int]  # the node whose op each row constrains


def _milp_model(src: Program, f: int, bounds: dict[int, Bound], budget: int, objective: Objective) -> MilpModel:
    """Cost, variable bounds, constraint matrix and row bounds; variables are [p | q | z | y] per node."""
    from scipy.sparse import coo_matrix

    nodes = src.nodes
    n = len(nodes)
    P, Q, Z, Y = 0, n, 2 * n, 3 * n  # variable blocks
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

    var_lo = np.full(4 * n, -float(budget))  # scales below -budget would be pointless
    var_hi = np.full(4 * n, float(budget))
    var_lo[Z:], var_hi[Z:] = 0, 1
    var_hi[Y:] = 0  # y: only products that can ride
    for i, coefs in _ride_rows(objective, Z, Y):
        var_hi[Y + i] = 1
        con(coefs, -np.inf, 0)
    for v in nodes:
        i, ins = v.id, v.inputs
        var_hi[P + i] = var_hi[Q + i] = smax[i]  # above the budget for values below 1 (q <= p anyway)
        scaling = spec(v).scaling
        if scaling in ("source", "integer"):
            var_lo[P + i] = var_hi[P + i] = source_scale(v, f) if scaling == "source" else 0
        elif spec(v).aligned(v):
            for j in ins:
                con({P + i: 1, Q + j: -1}, 0, np.inf)  # p >= q_j
                con({P + i: 1}, -np.inf, budget - 1 - m_eff[j])  # operand j shifted to p fits
        elif scaling == "sum":  # p = q_a + q_b (a square x * x counts q_x twice)
            coefs = {P + i: 1}
            for j in ins:
                coefs[Q + j] = coefs.get(Q + j, 0) - 1
            con(coefs, 0, 0)
        else:  # p = q + c: c the public multiplier's scale, minus a relabel's exponent, or 0
            c = const_scale(src, v, f) if scaling == "public" else -v.attrs["exp"] if scaling == "relabel" else 0
            con({P + i: 1, Q + ins[0]: -1}, c, c)
        # truncation: 0 <= p - q <= z * (highest p - f), and q = f exactly when z = 1
        big = max(min(smax[i], untruncated[i]) - f, 0)
        con({P + i: 1, Q + i: -1}, 0, np.inf)
        con({P + i: 1, Q + i: -1, Z + i: -big}, -np.inf, 0)
        con({Q + i: 1, Z + i: -(f + budget)}, -budget, np.inf)  # z = 1  =>  q >= f
        con({Q + i: 1, Z + i: big}, -np.inf, f + big)  # z = 1  =>  q <= f
        if not spec(v).site(v, src) or big == 0:
            var_hi[Z + i] = 0

    weight = np.array([objective.site_weight(v.numel) for v in nodes], dtype=float)
    eps = 1.0 / (4.0 * n * 2 * budget)  # scales break ties only, never outweigh one element
    cost = np.concatenate([np.full(2 * n, eps), weight, np.full(n, -objective.round_elements)])
    A = coo_matrix(([c for r in rows for c in r.values()],
                    ([k for k, r in enumerate(rows) for _ in r], [c for r in rows for c in r])),
                   shape=(len(rows), 4 * n)).tocsc()
    return MilpModel(cost, var_lo, var_hi, A, np.array(lo, dtype=float), np.array(hi, dtype=float), owner)


def _ride_rows(objective: Objective, Z: int, Y: int):
    """(product, row): y_m <= sum of z over the sites it can ride on + y of the products that would
    carry it along (``core.fusion.ride_sites``)."""
    for i, (sites, carriers) in objective.rides.items():
        coefs = {Y + i: 1, **{Z + u: -1 for u in sites}}
        for u in carriers:
            coefs[Y + u] = coefs.get(Y + u, 0) - 1
        yield i, coefs


@contextmanager
def _c_stdout_silenced():
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
