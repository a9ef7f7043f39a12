"""Which openings travel together: a program's nodes grouped by the round they are opened in.

A node that opens a masked value (a Beaver product, an exact truncation) can be opened as soon as
its inputs exist; every such node that is ready at the same round goes in one message (q, k and
v's projections, gate and up, independent truncations). ``waves`` assigns each node the earliest
round it can finish in (as-soon-as-possible, like the cost model's critical path) and lists per
round: the nodes opened together, then the multi-round steps run alone (a comparison), then the
local nodes that can be computed once those are done, in program order.

A truncation that carries products (``core.fusion``) also opens z − b for its operands z, so it
waits for them (``carried`` lets a product ride only where they exist by then, so that wait never
holds a truncation up); the products it carries are made at its opening (local after it).

What does not depend on the client's input (``input_independent``: weights, and local maps of
them) can be done before the online phase: a Beaver product of a weight opens the weight's half
(w − b) then, and only the activation's half online (``weight_side``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .ir import Node, Program
from .ops import Kind, spec

OPENS, STEPS, LOCAL = "opens", "steps", "local"  # one batched opening | rounds of its own | none


def how(node: Node, riding: set[int], exact: bool, parties: int) -> str:
    """How the runner executes ``node`` in a wave: OPENS (one batched opening), STEPS (rounds of
    its own) or LOCAL. A riding product is made at its truncation's opening; CrypTen's own division
    is local with 2 parties and the wraps protocol with more."""
    kind = spec(node).kind
    if kind == Kind.PRODUCT:
        return LOCAL if node.id in riding else OPENS
    if kind == Kind.TRUNCATE:
        return OPENS if exact else LOCAL if parties == 2 else STEPS
    return STEPS if kind == Kind.COMPARE else LOCAL


@dataclass
class Wave:
    opened: list[Node] = field(default_factory=list)  # opened together, in one message
    steps: list[Node] = field(default_factory=list)  # run one after another after the message
    local: list[Node] = field(default_factory=list)  # then these, in program order


def waves(program: Program, how: Callable[[Node], str], waits_for: dict[int, list[int]] | None = None) -> list[Wave]:
    """``how(node)``: OPENS, STEPS or LOCAL; ``waits_for``: extra inputs a node must wait for (a
    carrying truncation's operands). Wave 0 holds the sources and what is local on them."""
    waits_for = waits_for or {}
    at: dict[int, int] = {}
    out: list[Wave] = [Wave()]
    for node in program.nodes:
        ready = max((at[i] for i in (*node.inputs, *waits_for.get(node.id, ()))), default=0)
        kind = how(node)
        at[node.id] = ready + (kind != LOCAL)
        while len(out) <= at[node.id]:
            out.append(Wave())
        getattr(out[at[node.id]], {OPENS: "opened", STEPS: "steps", LOCAL: "local"}[kind]).append(node)
    return out


def order(schedule: list[Wave]) -> list[Node]:
    """Every node in the order a wave executor computes them."""
    return [n for w in schedule for n in (*w.opened, *w.steps, *w.local)]


def messages(schedule: list[Wave]) -> int:
    """Batched openings: one per wave that opens anything (steps' own rounds come on top)."""
    return sum(1 for w in schedule if w.opened)


def lifetimes(program: Program, schedule: list[Wave]) -> list[list[int]]:
    """Per wave, the values nothing reads after it (outputs are kept): a wave executor drops them."""
    last: dict[int, int] = {}  # value -> the wave after which nothing reads it
    for w, wave in enumerate(schedule):
        for n in (*wave.opened, *wave.steps, *wave.local):
            last[n.id] = max(last.get(n.id, w), w)
            for i in n.inputs:
                last[i] = w
    dead: list[list[int]] = [[] for _ in schedule]
    kept = set(program.outputs)
    for i, w in last.items():
        if i not in kept:
            dead[w].append(i)
    return dead


def input_independent(program: Program) -> set[int]:
    """Weights and what local maps make of them alone (a transpose, a relabel, a public scale)."""
    static: set[int] = set()
    for n in program.nodes:
        if n.op == "weight" or (spec(n).kind in ("local", "public", "relabel", "shift") and n.inputs
                                and all(i in static for i in n.inputs)):
            static.add(n.id)
    return static


def weight_side(node: Node, static: set[int]) -> int | None:
    """Which operand of a Beaver product (``mul``, ``matmul``) is input-independent, if exactly one is."""
    if node.op not in ("mul", "matmul") or node.inputs[0] == node.inputs[1]:
        return None
    sides = [i in static for i in node.inputs]
    return sides.index(True) if sides.count(True) == 1 else None
