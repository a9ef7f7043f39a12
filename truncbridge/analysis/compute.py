"""The cost model's local-compute term: the seconds a computing party spends on its own work in one
online pass of a plan on CrypTen (``backends.crypten.runner.PlanRunner``), from the plan's counts and
the coefficients measured on this machine (``protocols/compute.json``, ``launch/calibrate_compute.py``).

Every node the online pass executes is one *term* of a kind — ``matmul`` (a Beaver matrix product:
its elements are scalar products, out elements × inner size), ``weight_matmul`` (the same of a weight,
whose online work is the owner's one product of the weight by the opened activation: the owner's cost),
``mul`` (an elementwise Beaver product
or square: output elements), ``truncate`` (exact truncation: truncated elements), ``carried`` (the
products a truncation's opening carries, made when it opens: their output elements), ``compare``,
``source`` (the client's input, shared online), and the local kinds ``local``, ``public``, ``shift``,
``relabel``, ``output`` (output elements) — plus one ``wave`` term per batched opening (its opened
elements: masking, concatenation, splitting). A kind costs ``per_node_s`` per node and
``per_element_s`` per element; ``dispatch_s`` per node is the interpreter's own work around them.
Weights' shares and their halves of the Beaver openings are made before the online phase
(``weights_apart``): not counted, as run_pi's ``local_s`` does not count them.
"""
from __future__ import annotations

from collections import defaultdict

from ..core.fusion import carried
from ..core.ops import Kind, spec
from ..core.protocols import COMPUTE_KINDS
from ..core.types import Plan
from ..core.waves import how, input_independent, waves, weight_side

KINDS = COMPUTE_KINDS


def node_kind(node, riding: set[int]) -> str:
    """The term kind a node of the online pass is (a carried product's work is in its truncation's term)."""
    kind = spec(node).kind
    if kind == Kind.PRODUCT:
        return "carried" if node.id in riding else "matmul" if node.op == "matmul" else "mul"
    return str(kind)


def node_terms(plan: Plan, fuse: bool = True, batch: bool = True, exact: bool = True, parties: int = 2
               ) -> tuple[dict[int, tuple[str, int]], list[int]]:
    """(node id -> (kind, elements)) for every node the online pass executes, and the opened
    elements of each message (a wave that opens anything; without ``batch``, each opening alone)."""
    program = plan.program
    fused = carried(program) if fuse and exact else {}
    riding = {p for c in fused.values() for p in c.products}
    static = input_independent(program) if batch else set()
    terms: dict[int, tuple[str, int]] = {}
    opened: dict[int, int] = {}  # node id -> elements its opening opens
    for n in program.nodes:
        if n.id in static:
            continue
        kind = node_kind(n, riding)
        side = weight_side(n, static) if kind in ("matmul", "mul") else None
        if kind == "matmul":  # a weight's: the owner's one product with the weight's few bits (openings.half_finished)
            terms[n.id] = ("matmul" if side is None else "weight_matmul", spec(n).scalar_products(n, program))
        else:
            terms[n.id] = (kind, n.numel)
        if kind in ("matmul", "mul"):
            inputs = list(dict.fromkeys(n.inputs)) if side is None else [n.inputs[1 - side]]
            opened[n.id] = sum(program[i].numel for i in inputs)
        elif kind == "truncate" and exact:
            opened[n.id] = n.numel + sum(program[z].numel for z in (fused[n.id].others if n.id in fused else ()))
    if not batch:
        return terms, list(opened.values())
    others = {t: c.others for t, c in fused.items()}
    schedule = waves(program, lambda n: how(n, riding, exact, parties), others)
    return terms, [sum(opened.get(n.id, 0) for n in w.opened) for w in schedule if any(n.id in opened for n in w.opened)]


def online_counts(plan: Plan, fuse: bool = True, batch: bool = True, exact: bool = True, parties: int = 2
                  ) -> dict[str, list[int]]:
    """Kind -> [nodes, elements] of the online pass (``node_terms``); ``wave``: [messages, opened elements]."""
    terms, messages = node_terms(plan, fuse, batch, exact, parties)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for kind, elements in terms.values():
        out[kind][0] += 1
        out[kind][1] += elements
    out["wave"] = [len(messages), sum(messages)]
    return dict(out)


def local_seconds(counts: dict[str, list[int]], calibration: dict) -> dict:
    """The predicted local compute of one online pass: ``local_s`` and its ``by_kind`` seconds, from
    ``online_counts`` and a calibration (``core.protocols.load_compute``), times its ``parties_factor``
    (a party beside the other processes of a run against one process alone); ``uncalibrated``: the kinds
    the pass has that the calibration never saw (priced at 0)."""
    coef = calibration["kinds"]
    by_kind = {kind: nodes * coef[kind]["per_node_s"] + elements * coef[kind]["per_element_s"]
               for kind, (nodes, elements) in counts.items()}
    nodes = sum(n for kind, (n, _) in counts.items() if kind != "wave")
    by_kind["dispatch"] = nodes * calibration["dispatch_s"]
    factor = calibration.get("parties_factor", {}).get("value", 1.0)
    by_kind = {kind: seconds * factor for kind, seconds in by_kind.items()}
    unseen = sorted(k for k, (n, _) in counts.items() if n and not coef[k].get("seen", True))
    return {"local_s": sum(by_kind.values()), "by_kind": by_kind, "nodes": nodes, "parties_factor": factor,
            "uncalibrated": unseen}


def plan_local_seconds(plan: Plan, calibration: dict, fuse: bool = True, batch: bool = True, exact: bool = True,
                       parties: int = 2) -> dict:
    """``local_seconds`` of the plan's online pass as run_pi runs it."""
    return local_seconds(online_counts(plan, fuse, batch, exact, parties), calibration)
