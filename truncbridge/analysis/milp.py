"""Optimal placement: an integer program over every node's scale and truncation (HiGHS MILP via
highspy), minimising the objective (truncated elements, or a network's time: ``objective.py``)
under the budget and precision constraints."""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager

import numpy as np

from ..core.ir import Program
from ..core.types import Bound
from .milp_model import Block, Columns, MilpModel, Q, T, Z, milp_model, start_vector
from .objective import TRUNCATED_ELEMENTS, Objective

BLOCK_SOLVE_MIN_NODES = 4000  # above this, one MILP per repeated layer (boundaries fixed)
MIN_BLOCK_TIME_S = 0.5  # each layer's share of the time limit, at least
TIE_BREAK_MAX = 0.25  # the most the scales' tie-breaking costs add (milp_model: eps)
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+(?=[.:]|$)")


def solve_optimal(src: Program, f: int, bounds: dict[int, Bound], budget: int, time_limit: float,
                  start: set[int], objective: Objective = TRUNCATED_ELEMENTS,
                  progress=None, floors: list[int] | None = None) -> tuple[set[int] | None, dict]:
    """MILP: per node, scale before (p) and after (q) an optional truncation (z = 1), whether a
    product rides on a placed truncation with one input's side truncated (ya, yb:
    ``core.fusion``), and the round the node's value is ready after (t); then the last round.

    p follows the op (products add scales, additions take the max of their operands), every
    value and every aligned operand fits the budget at its scale, a truncation ends at exactly its
    floor (``floors``: f, or the precision floor; any higher end is no cheaper and leaves fewer
    bits), a product rides only if a truncation it can ride on is placed, t follows the rounds
    (``milp_model.milp_rounds``), and the objective is ``objective``'s: truncated elements, plus R
    per round (ties: lower scales). HiGHS is given ``start``, a feasible set of truncated nodes;
    stopped by its time limit it may return nothing (None) or a worse set, so the caller keeps
    the better of the two.

    A large program (a full-size model) is solved a layer at a time: every value that crosses
    a layer boundary keeps the start's scale, so each layer's MILP is small and independent and
    the time limit is shared out between them. Optimal per layer at best, not proven optimal
    overall. (Layers are never identical MILPs in practice: their calibrated recipe ranges and
    bit-widths differ, so each is solved.)

    ``progress(text)``, if given, hears the incumbent, the bound and the gap about once a second.
    """
    n = len(src.nodes)
    deadline = time.perf_counter() + time_limit  # building the model counts too
    model = milp_model(src, f, bounds, budget, objective, floors)
    x0 = start_vector(src, f, start, objective, floors)
    t = time.perf_counter()
    report = {"solver": "HiGHS MILP", "variables": len(model.cost), "constraints": len(model.row_lo),
              "start_elements": int(sum(src.nodes[i].numel for i in start))}
    if n >= BLOCK_SOLVE_MIN_NODES and len(blocks := _layer_blocks(src)) > 1:
        x, status, gap = _solve_by_blocks(src, f, model, objective, x0, blocks, deadline, report, progress, floors)
    else:
        x, status, gap, bound = _highs(model.cost, model.var_lo, model.var_hi, model.A, model.row_lo, model.row_hi,
                                       x0, max(deadline - time.perf_counter(), 0.01), progress)
        report["lower_bound"] = bound - TIE_BREAK_MAX  # of the objective, over every placement
    report.update(status=status, proven_optimal=status == "Optimal", milp_s=round(time.perf_counter() - t, 3))
    if x is None:  # stopped before it took up the start
        return None, report
    z = Columns(n).block(Z)
    chosen = {v.id for v in src.nodes if x[z[v.id]]}
    return chosen, {**report, "mip_gap": gap, "objective_elements": int(sum(src[i].numel for i in chosen)),
                    "objective": objective.cost(src, chosen)}


def _layer_blocks(src: Program) -> dict[str, list[int]]:
    """Node ids by the model layer they come from (``origin``); the rest in one block ("")."""
    blocks: dict[str, list[int]] = {}
    for v in src.nodes:
        m = LAYER.search(v.origin or "")
        blocks.setdefault(m.group(0) if m else "", []).append(v.id)
    return blocks


def _solve_by_blocks(src: Program, f: int, model: MilpModel, objective: Objective, x0: np.ndarray,
                     blocks: dict[str, list[int]], deadline: float, report: dict, progress=None, floors=None):
    """One MILP per layer, in program order; what crosses a layer boundary keeps the start's
    scales, and each layer starts from (and ends no worse than) the rounds the layers before it
    left (the whole point is re-derived after each: ``start_vector``)."""
    n = len(src.nodes)
    cols_all = Columns(n)
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
        cols = np.array([cols_all.block(b)[i] for b in Block for i in local] + [cols_all.last])
        lo_v, hi_v = model.var_lo[cols].copy(), model.var_hi[cols].copy()
        at, mine = {i: c for c, i in enumerate(local)}, Columns(len(local))  # the layer's own MILP
        fixed = [mine.block(b)[at[i]] for b in Block for i in outside]
        fixed += [mine.block(Q)[at[i]] for i in ids if i in read_elsewhere]
        lo_v[fixed] = hi_v[fixed] = x[cols][fixed]  # the boundary keeps the start's scales
        start = x[cols].copy()
        start[-1] = x[[cols_all.block(T)[i] for i in local]].max(initial=0)  # the last round so far
        rows = rows_of.get(key, [])
        remaining = deadline - time.perf_counter()
        if remaining <= 0:  # out of time: this layer keeps the start
            statuses.append("Time limit reached")
            continue
        share = min(max(remaining / (len(blocks) - k), MIN_BLOCK_TIME_S), remaining)
        said = progress and (lambda text, k=k: progress(f"layer {k + 1}/{len(blocks)}: {text}"))
        got, status, g, _ = _highs(model.cost[cols], lo_v, hi_v, A[rows][:, cols].tocsc(), model.row_lo[rows],
                                model.row_hi[rows], start, share, said)
        statuses.append(status)
        if got is not None and model.cost[cols] @ got <= model.cost[cols] @ start:  # never worse
            x[cols], gap = got, max(gap, g)
            x = start_vector(src, f, {i for i in range(n) if x[cols_all.block(Z)[i]]}, objective, floors)
    report.update(blocks=len(blocks), blocks_proven_optimal=statuses.count("Optimal"))
    status = "Optimal per layer" if all(s == "Optimal" for s in statuses) else \
        ", ".join(sorted(set(statuses))) + " (per layer)"
    return x, status, gap


def _highs(cost, var_lo, var_hi, A, row_lo, row_hi, start: np.ndarray, time_limit: float, progress=None):
    """One integer program: (solution or None, status, relative gap, proven lower bound)."""
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
        return None, status, float("inf"), float(info.mip_dual_bound)
    return x, status, float(info.mip_gap), float(info.mip_dual_bound)


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
