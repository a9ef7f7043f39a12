"""Placement: give every IR node a fixed-point scale and insert the truncations.

Every value's integer must stay within the budget: field bits minus the protocol's statistical
headroom (``scales.py`` says what a value costs in bits). A truncation lowers the scale, never
below ``frac_bits``. The precision floor: lazy and optimal truncate a value no lower than the
lowest scale eager holds it at, less a tolerance (``config.precision_tolerance_bits``, default 2;
eager's scale is above frac_bits where a division relabelled the value up), so every value keeps
eager's precision within the tolerance; where the field allows, they truncate to eager's scale.

    eager    every product above frac_bits is truncated back to frac_bits at once (CrypTen's rule)
    lazy     TruncFormer's rule: keep products at full scale; when an operation would leave the
             budget, truncate its highest-scale input back to its floor, and repeat (``greedy.py``)
    optimal  an integer program over every node's scale and truncation: the minimum of the
             objective — truncated elements, or a network's time (``objective.py``) — under the
             same budget and precision constraints (``milp.py``), started from lazy's placement
             improved by a local search (``search.py``), so never worse than lazy

The result is a ``Plan``: the node list with ``scale`` set on every node, ``trunc`` / ``shl``
nodes inserted, and each node's bound.
"""
from __future__ import annotations

import time

from ..core.ir import Program
from ..core.ops import check_node
from ..core.types import Bound, Plan, PlanConfig
from .cost import recipe_instances
from .emit import Emitter, too_small
from .greedy import place_fixed, place_greedy, precision_floors
from .milp import solve_optimal
from .objective import TRUNCATED_ELEMENTS, objective_for
from .scales import eager_scales
from .search import Checker, improve, raise_precision


def place(program: Program, bounds: dict[int, Bound], config: PlanConfig, hints: tuple = (), progress=None) -> Plan:
    """``hints``: truncation sites (source node ids, ``Plan.sites``) of other plans of the same
    program, e.g. for smaller fields; optimal starts from the cheapest feasible of them and lazy's.
    ``progress(text)``: how optimal's search is going (local search passes, the MILP's gap)."""
    config.validate()
    for node in program.nodes:
        check_node(node)
    f, budget = config.frac_bits, config.budget_bits
    if config.policy == "eager":
        return _finish(_eager(program, bounds, config), config, {})
    # lazy fails only where a value does not fit even with its inputs at frac_bits: then no
    # placement fits, and lazy's error names the value
    lowest = truncation_floors(program, bounds, config)
    greedy = Emitter(program, f, bounds, budget, lowest)
    place_greedy(greedy, lazy=True)
    sites = set(_finish(greedy, config, {}).sites)
    check = Checker(program, f, bounds, budget,
                    objective_for(program, config) if config.policy == "optimal" else TRUNCATED_ELEMENTS, lowest)
    solver: dict = {}
    if config.policy == "optimal":
        sites, solver = _optimal_sites(program, bounds, config, check, sites, hints, progress)
    floors = raise_precision(check, sites, eager_scales(program, f))
    e = Emitter(program, f, bounds, budget)
    place_fixed(e, {v: floors[v] for v in sites})
    solver["precision_raised"] = sum(floors[v] > lowest[v] for v in sites)
    solver["precision_floored"] = sum(lowest[v] > f for v in sites)
    return _finish(e, config, solver)


def _eager(program: Program, bounds: dict[int, Bound], config: PlanConfig) -> Emitter:
    e = Emitter(program, config.frac_bits, bounds, config.budget_bits)
    place_greedy(e, lazy=False)
    return e


def truncation_floors(program: Program, bounds: dict[int, Bound], config: PlanConfig) -> list[int]:
    """Per source node, the lowest scale lazy and optimal truncate it to under ``config``'s
    precision tolerance (``greedy.precision_floors``)."""
    if config.precision_tolerance_bits is None:
        return [config.frac_bits] * len(program.nodes)
    return precision_floors(_eager(program, bounds, config), config.precision_tolerance_bits)


def _optimal_sites(program, bounds, config, check: Checker, lazy_sites: set[int], hints,
                   progress=None) -> tuple[set[int], dict]:
    """The local search, then the MILP on what is left of ``config.time_limit_s``: the whole
    search stays within it (HiGHS may overrun its own limit by a fraction of a second)."""
    t = time.perf_counter()
    deadline = t + config.time_limit_s
    starts = [st for st in (lazy_sites, *map(set, hints)) if check.cost(st) is not None]
    start = improve(check, min(starts, key=check.cost), deadline, progress)
    left = deadline - time.perf_counter()
    if left > 0:
        sites, solver = solve_optimal(program, config.frac_bits, bounds, config.budget_bits, left, start, check.objective,
                                      progress, check.floors)
    else:
        sites, solver = None, {"solver": "local search", "status": "Time limit reached before the MILP",
                               "start_elements": int(sum(program[i].numel for i in start))}
    solver.update(objective_kind=config.objective, improve_s=round(config.time_limit_s - left, 3))
    found = None if sites is None else check.cost(sites)
    if found is None or found > check.cost(start):  # a time-limited solve may stop short of its start
        sites, solver["kept_start"] = start, True
    if "lower_bound" in solver:  # the MILP's model never counts more than the cost model: its bound holds
        cost = check.cost(sites)
        solver["proven_gap"] = max(cost - solver["lower_bound"], 0.0) / cost if cost else 0.0
    solver["wall_s"] = round(time.perf_counter() - t, 3)
    return sites, solver


def _finish(e: Emitter, config: PlanConfig, solver: dict) -> Plan:
    plan = Plan(e.finish(), config, e.bounds, solver)
    plan.sites = sorted({e.source_of[t.inputs[0]] for t in plan.program.nodes
                         if t.op == "trunc" and t.inputs[0] in e.source_of})
    plan.source_of = dict(e.source_of)
    needs = {node.id: plan.bound_bits(node) for node in plan.program.nodes}
    over = [node for node in plan.program.nodes if needs[node.id] > plan.budget_bits]
    if over:  # the first value that does not fit, and the field that would hold every value of this placement
        fits = config.field_bits + max(needs.values()) - plan.budget_bits
        use = recipe_instances(plan).get(over[0].id)  # a recipe's node: the range it was fitted on says why
        fitted = plan.program[use].facts.recipe_params if use is not None else None
        raise too_small(over[0], needs[over[0].id], plan.budget_bits, plan.bounds[over[0].id], over[0].scale, fits, fitted)
    return plan
