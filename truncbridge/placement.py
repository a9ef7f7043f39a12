"""Placement: give every IR node a fixed-point scale and insert the truncations.

A node at scale s holds round(x 2^s); with |x| < 2^m its integer needs m + s + 1 bits (sign
included), which must stay within the budget: field bits minus the protocol's statistical headroom.
Products add scales, free rescales (``pow2``) relabel them, additions align their operands by
shifting the lower-scale one up (a local multiplication by a public 2^k). A truncation lowers the
scale, never below ``frac_bits``; where the field allows, lazy and optimal truncate a value only
down to the scale eager gives it (higher where a division relabelled it up), so they keep at least
eager's precision there at no extra cost.

    eager    every product above frac_bits is truncated back to frac_bits at once (CrypTen's rule)
    lazy     TruncFormer's rule: keep products at full scale; when an operation would leave the
             budget, truncate its highest-scale input back to frac_bits, and repeat
    optimal  an integer program over every node's scale and truncation: minimum truncated
             elements under the same budget and precision constraints (HiGHS MILP via highspy),
             started from lazy's placement improved by a local search, so never worse than lazy

The result is a ``Plan``: the node list with ``scale`` set on every node, ``trunc`` / ``shl``
nodes inserted, and each node's bound.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .analysis import Bound
from .errors import UserError
from .ir import PRIVATE_MULS, Node, Program

POLICIES = ("eager", "lazy", "optimal")
INTEGER_CONST_LIMIT = 2**20  # public integer constants up to this size are encoded at scale 0
ROUNDING_FLOOR_BITS = 8  # no real bound is below 2^8 LSBs of frac_bits: tiny values carry rounding error
OPTIMAL_TIME_LIMIT_S = 120.0
PRODUCTS = PRIVATE_MULS + ("mul_public",)
HOISTABLE = ("neg", "add_public", "move", "pow2")
FLOOR_MODES = ("eager", "frac_bits")  # a truncation after these can move before them


@dataclass
class Plan:
    program: Program  # nodes carry .scale; trunc / shl inserted
    field_bits: int
    frac_bits: int
    policy: str
    bounds: dict[int, Bound] = field(default_factory=dict)  # plan node id -> bound of its real value
    budget_bits: int | None = None  # integer bits (sign included) a value may use; default field_bits
    solver: dict = field(default_factory=dict)  # optimal: status, objective, wall time
    meta: dict = field(default_factory=dict)  # model identity, protocol, bounds mode: set by the pipeline
    sites: list[int] = field(default_factory=list)  # source (IR) nodes whose value is truncated

    def __post_init__(self):
        if self.budget_bits is None:
            self.budget_bits = self.field_bits

    def bound_bits(self, node: Node) -> int:
        """Promised bits of the node's ring integer, sign included."""
        return needed_bits(self.bounds[node.id], node.scale, self.frac_bits)

    def counts(self) -> dict[str, int]:
        nodes = self.program.nodes
        truncs = [n for n in nodes if n.op == "trunc"]
        return {
            "mul_private": sum(n.op in PRIVATE_MULS for n in nodes),
            "mul_public": sum(n.op == "mul_public" for n in nodes),
            "truncations": len(truncs),
            "truncated_elements": sum(n.numel for n in truncs),
            "comparisons": 0,
        }

    def private_mul_elements(self) -> int:
        """Scalar private products: elementwise outputs, and out-elements x inner size for matmuls."""
        total = 0
        for n in self.program.nodes:
            if n.op == "mul":
                total += n.numel
            elif n.op == "matmul":
                total += n.numel * self.program[n.inputs[0]].shape[-1]
        return total


def needed_bits(bound: Bound, scale: int, frac_bits: int) -> int:
    """Integer bits (sign included) of a value with this bound at this scale."""
    return max(bound.bits(), ROUNDING_FLOOR_BITS - frac_bits) + scale + 1


def _is_small_integer(t: torch.Tensor) -> bool:
    if not t.numel():
        return True
    return bool(torch.all(t == torch.round(t))) and bool(t.abs().max() < INTEGER_CONST_LIMIT)


def const_scale(program: Program, node: Node, frac_bits: int) -> int:
    """Scale a public multiplier is encoded at: 0 for small integers, else frac_bits."""
    return 0 if _is_small_integer(program.consts[node.attrs["const"]]) else frac_bits


def scale_rule(src: Program, node: Node, s: list, f: int) -> tuple:
    """A node's scale from its inputs' scales ``s``: products add, additions take the max,
    ``pow2`` relabels; also the extra attrs the node needs (a public multiplier's scale)."""
    op = node.op
    if op in ("input", "weight"):
        return source_scale(node, f), {}
    if op in ("add", "move") and len(s) > 1:
        return max(s), {}
    if op in ("neg", "sum", "move", "output", "add_public"):
        return s[0], {}
    if op == "pow2":
        return s[0] - node.attrs["exp"], {}
    if op in PRIVATE_MULS:
        return s[0] + s[1], {}
    if op == "mul_public":
        cs = const_scale(src, node, f)
        return s[0] + cs, {"const_scale": cs}
    raise UserError(f"placement: unexpected op {op!r} (node {node.id})")


def effective_bits(src: Program, bounds: dict[int, Bound], f: int) -> list[int]:
    """Per node, the m of |x| < 2^m used against the budget (floored for rounding error)."""
    return [max(bounds[v.id].bits(), ROUNDING_FLOOR_BITS - f) for v in src.nodes]


def source_scale(node: Node, frac_bits: int) -> int:
    if node.op == "input":
        return 0 if node.attrs.get("integer") else frac_bits
    return frac_bits  # weights


# -- emitting a placed program ------------------------------------------------------------------
class _Emitter:
    """Rebuilds the node list in order with scales, remapping ids as trunc / shl nodes are inserted."""

    def __init__(self, src: Program, frac_bits: int, bounds: dict[int, Bound], budget: int):
        self.src, self.f, self.src_bounds, self.budget = src, frac_bits, bounds, budget
        self.out = Program(consts=src.consts, weights=src.weights)
        self.bounds: dict[int, Bound] = {}
        self.current: dict[int, int] = {}  # source id -> placed id users read now
        self.source_of: dict[int, int] = {}  # placed id -> source id, for emitted (not inserted) nodes
        self.truncated: dict[int, int] = {}  # placed id -> its truncation to frac_bits (lazy reuse)

    def scale(self, nid: int) -> int:
        return self.out[nid].scale

    def bits(self, nid: int, scale: int | None = None) -> int:
        return needed_bits(self.bounds[nid], self.scale(nid) if scale is None else scale, self.f)

    def _append(self, op, inputs, shape, attrs, origin, recipe, scale, bound) -> int:
        nid = len(self.out.nodes)
        self.out.nodes.append(Node(nid, op, tuple(inputs), tuple(shape), attrs, origin, recipe, scale))
        self.bounds[nid] = bound
        return nid

    def derived(self, base: int, op: str, scale: int, **attrs) -> int:
        """A trunc / shl of placed node ``base``."""
        src = self.out[base]
        return self._append(op, (base,), src.shape, attrs, src.origin, src.recipe, scale, self.bounds[base])

    def to_scale(self, nid: int, scale: int) -> int:
        have = self.scale(nid)
        if have > scale:
            return self.derived(nid, "trunc", scale, shift=have - scale, rounding="nearest")
        if have < scale:
            return self.derived(nid, "shl", scale, shift=scale - have)
        return nid

    def truncate_to_f(self, nid: int) -> int:
        """A frac_bits version of placed node ``nid`` (made once). The truncation is hoisted above
        negations, public additions, relabels and non-shrinking moves, which are then re-emitted
        on the truncated value: it touches no more elements, and sits where optimal may put one."""
        if nid in self.truncated:
            return self.truncated[nid]
        node = self.src[self.source_of[nid]] if nid in self.source_of else None
        if node is not None and len(node.inputs) == 1 and node.op in HOISTABLE and not _worth_truncating(self.src, node):
            base = self.truncate_to_f(self.out[nid].inputs[0])
            scale, extra = self.natural_scale(node, [base])
            out = self.emit(node, [base], scale, extra)
        else:
            out = self.to_scale(nid, min(self.f, self.scale(nid)))
        self.truncated[nid] = out
        return out

    def natural_scale(self, node: Node, ins: list[int]) -> tuple[int, dict]:
        """Scale of a node's result computed from placed inputs (before any truncation of it)."""
        return scale_rule(self.src, node, [self.scale(i) for i in ins], self.f)

    def fits(self, node: Node, ins: list[int], scale: int) -> bool:
        """The result, and for additions each operand shifted up to the result scale, fit the budget."""
        if needed_bits(self.src_bounds[node.id], scale, self.f) > self.budget:
            return False
        aligned = node.op in ("add", "move") and len(ins) > 1
        return not aligned or all(self.bits(i, scale) <= self.budget for i in ins)

    def emit(self, node: Node, ins: list[int], scale: int, extra: dict) -> int:
        if node.op in ("add", "move") and len(ins) > 1:
            ins = [self.to_scale(i, scale) for i in ins]
        if node.op == "add_public" and scale < self.f:  # a fractional constant needs fraction bits
            c = self.src.consts[node.attrs["const"]]
            if not _is_small_integer(c * 2.0**scale):
                ins, scale = [self.to_scale(ins[0], self.f)], self.f
        attrs = {**node.attrs, **extra}
        nid = self._append(node.op, ins, node.shape, attrs, node.origin, node.recipe, scale, self.src_bounds[node.id])
        self.current[node.id] = nid
        self.source_of[nid] = node.id
        return nid

    def finish(self) -> Program:
        self.out.inputs = {k: self.current[v] for k, v in self.src.inputs.items()}
        self.out.outputs = [self.current[o] for o in self.src.outputs]
        return self.out


def _too_small(node: Node, bits: int, budget: int, bound: Bound, scale: int) -> UserError:
    where = node.origin + (f" [{node.recipe}]" if node.recipe else "")
    return UserError(f"field too small: {node.op} at {where} needs {bits} bits "
                     f"(|value| <= {bound.value:.4g} ({bound.source}) at scale {scale}) "
                     f"but the budget is {budget} bits")


# -- policies -----------------------------------------------------------------------------------
def _place_greedy(e: _Emitter, lazy: bool) -> None:
    for node in e.src.nodes:
        ins = [e.current[i] for i in node.inputs]
        scale, extra = e.natural_scale(node, ins)
        tried: set[int] = set()  # inputs already truncated for this node, and their truncations
        while lazy and not e.fits(node, ins, scale):
            # TruncFormer: truncate the highest-scale input that is still above frac_bits
            above = [i for i in dict.fromkeys(ins) if e.scale(i) > e.f and i not in tried]
            if not above:
                break
            old = max(above, key=e.scale)
            new = e.truncate_to_f(old)
            tried.update((old, new))
            ins = [new if i == old else i for i in ins]  # both operands of a square
            scale, extra = e.natural_scale(node, ins)
        nid = e.emit(node, ins, scale, extra)
        if not lazy and node.op in PRODUCTS and scale > e.f:
            e.current[node.id] = e.to_scale(nid, e.f)


def _place_fixed(e: _Emitter, target: dict[int, int]) -> None:
    """Emit with the truncations an optimal solution chose: node id -> scale after truncation."""
    for node in e.src.nodes:
        ins = [e.current[i] for i in node.inputs]
        scale, extra = e.natural_scale(node, ins)
        nid = e.emit(node, ins, scale, extra)
        if node.id in target and target[node.id] < e.scale(nid):
            e.current[node.id] = e.to_scale(nid, target[node.id])


def _solve_optimal(src: Program, f: int, bounds: dict[int, Bound], budget: int, time_limit: float,
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
    initial.col_value = list(_start_vector(src, f, start))
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
    untruncated = _start_vector(src, f, set())[:n]  # scales if nothing were truncated: caps p
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
        if v.op in ("input", "weight"):
            var_lo[P + i] = var_hi[P + i] = source_scale(v, f)
        elif v.op in ("add", "move") and len(ins) > 1:
            for j in ins:
                con({P + i: 1, Q + j: -1}, 0, np.inf)  # p >= q_j
                con({P + i: 1}, -np.inf, budget - 1 - m_eff[j])  # operand j shifted to p fits
        elif v.op in PRIVATE_MULS:  # p = q_a + q_b (a square x * x counts q_x twice)
            coefs = {P + i: 1}
            for j in ins:
                coefs[Q + j] = coefs.get(Q + j, 0) - 1
            con(coefs, 0, 0)
        elif v.op == "mul_public":
            cs = const_scale(src, v, f)
            con({P + i: 1, Q + ins[0]: -1}, cs, cs)
        elif v.op == "pow2":
            con({P + i: 1, Q + ins[0]: -1}, -v.attrs["exp"], -v.attrs["exp"])
        else:  # neg, sum, move, output, add_public
            con({P + i: 1, Q + ins[0]: -1}, 0, 0)
        # truncation: 0 <= p - q <= z * (highest p - f), and q = f exactly when z = 1
        big = max(min(smax[i], untruncated[i]) - f, 0)
        con({P + i: 1, Q + i: -1}, 0, np.inf)
        con({P + i: 1, Q + i: -1, Z + i: -big}, -np.inf, 0)
        con({Q + i: 1, Z + i: -(f + budget)}, -budget, np.inf)  # z = 1  =>  q >= f
        con({Q + i: 1, Z + i: big}, -np.inf, f + big)  # z = 1  =>  q <= f
        if not _worth_truncating(src, v) or big == 0:
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


class _Checker:
    """Does a placement — truncate these nodes, down to these scales — fit the budget, and what
    does it cost? (The same constraints as the MILP, checked directly.)"""

    def __init__(self, src: Program, f: int, bounds: dict[int, Bound], budget: int):
        self.src, self.f = src, f
        m_eff = effective_bits(src, bounds, f)
        cap = [budget - 1 - m for m in m_eff]
        for v in src.nodes:
            if v.op in ("add", "move") and len(v.inputs) > 1:  # aligned operands must fit too
                cap[v.id] = min([cap[v.id]] + [budget - 1 - m_eff[j] for j in v.inputs])
        self.cap = np.array(cap, dtype=float)
        self.candidate = {v.id for v in src.nodes if _worth_truncating(src, v)}

    def cost(self, sites: set[int], floors: list[int] | None = None) -> int | None:
        """Truncated elements, or None if some value would not fit."""
        n = len(self.src.nodes)
        x = _start_vector(self.src, self.f, sites, floors)
        if np.any(x[:n] > self.cap):
            return None
        return int(sum(self.src[i].numel for i in sites if x[2 * n + i]))


def _improve(check: _Checker, sites: set[int]) -> set[int]:
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


def _raise_precision(check: _Checker, sites: set[int], eager_floors: list[int]) -> list[int]:
    """Per-node truncation targets: frac_bits, raised to the node's eager scale wherever that
    still fits. Same truncations, same cost; at least eager's precision where the field allows."""
    floors = [check.f] * len(check.src.nodes)
    for v in sorted(sites):
        if eager_floors[v] > check.f:
            floors[v] = eager_floors[v]
            if check.cost(sites, floors) is None:
                floors[v] = check.f
    return floors


def _worth_truncating(src: Program, v: Node) -> bool:
    """Candidate truncation sites. Elsewhere a truncation is never cheaper than one next to it:
    after a negation, relabel, public addition or a move that does not shrink the tensor, the
    same truncation could sit on the input, touching no more elements."""
    if v.op in PRODUCTS or v.op in ("add", "sum"):
        return True
    if v.op == "pow2":  # a division relabels the scale up: truncating after it drops more bits
        return v.attrs["exp"] < 0
    if v.op == "move":
        return v.numel < max(src[i].numel for i in v.inputs) or len(v.inputs) > 1
    return False


def _start_vector(src: Program, f: int, truncated: set[int], floors: list[int] | None = None) -> np.ndarray:
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


def eager_scales(src: Program, f: int) -> list[int]:
    """Each node's scale under eager: frac_bits after products, more where a division relabelled
    a value up. Lazy and optimal truncate to these where the field allows."""
    n = len(src.nodes)
    q = _start_vector(src, f, {v.id for v in src.nodes if v.op in PRODUCTS})[n:2 * n]
    return [int(max(f, s)) for s in q]


def place(program: Program, policy: str, field_bits: int, frac_bits: int, bounds: dict[int, Bound],
          headroom_bits: int = 0, time_limit: float = OPTIMAL_TIME_LIMIT_S, hints: tuple = ()) -> Plan:
    """``hints``: truncation sites (source node ids, ``Plan.sites``) of other plans of the same
    program, e.g. for smaller fields; optimal starts from the cheapest feasible of them and lazy's."""
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if not 0 < frac_bits < field_bits:
        raise UserError(f"frac bits must be between 1 and field bits - 1 (got {frac_bits} with a {field_bits}-bit field)")
    budget = field_bits - headroom_bits
    if budget <= frac_bits + 1:
        raise UserError(f"a {field_bits}-bit field with {headroom_bits} bits of headroom leaves no room for "
                        f"{frac_bits} fraction bits")
    if policy == "eager":
        e = _Emitter(program, frac_bits, bounds, budget)
        _place_greedy(e, lazy=False)
        return _finish(e, field_bits, frac_bits, policy, budget, {})
    # lazy fails only where a value does not fit even with its inputs at frac_bits: then no
    # placement fits, and lazy's error names the value
    greedy = _Emitter(program, frac_bits, bounds, budget)
    _place_greedy(greedy, lazy=True)
    sites = set(_finish(greedy, field_bits, frac_bits, "lazy", budget, {}).sites)
    check = _Checker(program, frac_bits, bounds, budget)
    solver: dict = {}
    if policy == "optimal":
        t = time.perf_counter()
        starts = [st for st in (sites, *map(set, hints)) if check.cost(st) is not None]
        start = _improve(check, min(starts, key=check.cost))
        sites, solver = _solve_optimal(program, frac_bits, bounds, budget, time_limit, start)
        found = None if sites is None else check.cost(sites)
        if found is None or found > check.cost(start):  # a time-limited solve may stop short of its start
            sites, solver["kept_start"] = start, True
        solver["wall_s"] = round(time.perf_counter() - t, 3)
    floors = _raise_precision(check, sites, eager_scales(program, frac_bits))
    e = _Emitter(program, frac_bits, bounds, budget)
    _place_fixed(e, {v: floors[v] for v in sites})
    solver["precision_raised"] = sum(floors[v] > frac_bits for v in sites)
    return _finish(e, field_bits, frac_bits, policy, budget, solver)


def _finish(e: _Emitter, field_bits: int, frac_bits: int, policy: str, budget: int, solver: dict) -> Plan:
    plan = Plan(e.finish(), field_bits, frac_bits, policy, e.bounds, budget, solver)
    plan.sites = sorted({e.source_of[t.inputs[0]] for t in plan.program.nodes
                         if t.op == "trunc" and t.inputs[0] in e.source_of})
    _check_fits(plan)
    return plan


def _check_fits(plan: Plan) -> None:
    for node in plan.program.nodes:
        need = plan.bound_bits(node)
        if need > plan.budget_bits:
            raise _too_small(node, need, plan.budget_bits, plan.bounds[node.id], node.scale)
