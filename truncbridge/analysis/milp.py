"""Optimal placement: an integer program over every node's scale and truncation (HiGHS MILP via
highspy), minimising truncated elements under the budget and precision constraints."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from ..core.ir import Program
from ..core.ops import spec
from ..core.types import Bound
from .scales import const_scale, effective_bits, placement_vector, source_scale


def solve_optimal(src: Program, f: int, bounds: dict[int, Bound], budget: int, time_limit: float,
                   start: set[int]) -> tuple[set[int] | None, dict]:
    """MILP: per node, scale before (p) and after (q) an optional truncation (z = 1).

    p follows the op (products add scales, additions take the max of their operands), every
    value and every aligned operand fits the budget at its scale, a truncation ends at exactly f
    (any higher end is no cheaper and leaves fewer bits), and the objective is the number of
    truncated elements (ties: lower scales). HiGHS is given ``start``, a feasible set of
    truncated nodes; stopped by its time limit it may return nothing (None) or a worse set, so
    the caller keeps the better of the two.
    """
    import highspy

    nodes = src.nodes
    n = len(nodes)
    cost, var_lo, var_hi, A, lo, hi = _milp_model(src, f, bounds, budget)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = 3 * n, len(lo)
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, var_lo, var_hi
    lp.row_lower_, lp.row_upper_ = lo, hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
    lp.integrality_ = [highspy.HighsVarType.kInteger] * (3 * n)
    with _c_stdout_silenced():  # HiGHS prints a banner from C++ when it starts
        h = highspy.Highs()
    for option, value in (("output_flag", False), ("time_limit", float(time_limit)), ("mip_rel_gap", 0.0),
                          ("threads", 1)):
        h.setOptionValue(option, value)
    h.passModel(lp)
    initial = highspy.HighsSolution()
    initial.col_value = list(placement_vector(src, f, start))
    h.setSolution(initial)
    t = time.perf_counter()
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.round(np.array(h.getSolution().col_value)).astype(int)
    info = h.getInfo()
    report = {"solver": "HiGHS MILP", "status": status, "proven_optimal": status == "Optimal",
              "milp_s": round(time.perf_counter() - t, 3), "variables": 3 * n, "constraints": len(lo),
              "start_elements": int(sum(nodes[i].numel for i in start))}
    if len(x) != 3 * n or info.primal_solution_status == 0:  # stopped before it took up the start
        return None, report
    numel = cost[2 * n:]
    return {v.id for v in nodes if x[2 * n + v.id]}, {
        **report, "mip_gap": float(info.mip_gap), "objective_elements": int(round(float(numel @ x[2 * n:])))}


def _milp_model(src: Program, f: int, bounds: dict[int, Bound], budget: int):
    """Cost, variable bounds, constraint matrix and row bounds; variables are [p | q | z] per node."""
    from scipy.sparse import coo_matrix

    nodes = src.nodes
    n = len(nodes)
    P, Q, Z = 0, n, 2 * n  # variable blocks
    m_eff = effective_bits(src, bounds, f)
    smax = [budget - 1 - m for m in m_eff]  # highest scale each value can take
    untruncated = placement_vector(src, f, set())[:n]  # scales if nothing were truncated: caps p
    rows, lo, hi = [], [], []

    def con(coefs: dict[int, float], low: float, high: float) -> None:
        rows.append(coefs)
        lo.append(low)
        hi.append(high)

    var_lo = np.full(3 * n, -float(budget))  # scales below -budget would be pointless
    var_hi = np.full(3 * n, float(budget))
    var_lo[Z:], var_hi[Z:] = 0, 1
    for v in nodes:
        i, ins = v.id, v.inputs
        var_hi[P + i] = smax[i]
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

    numel = np.array([v.numel for v in nodes], dtype=float)
    eps = 1.0 / (4.0 * n * 2 * budget)  # scales break ties only, never outweigh one element
    cost = np.concatenate([np.full(2 * n, eps), numel])
    A = coo_matrix(([c for r in rows for c in r.values()],
                    ([k for k, r in enumerate(rows) for _ in r], [c for r in rows for c in r])),
                   shape=(len(rows), 3 * n)).tocsc()
    return cost, var_lo, var_hi, A, np.array(lo, dtype=float), np.array(hi, dtype=float)


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
