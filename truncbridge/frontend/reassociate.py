"""Reassociate elementwise products so the operand that comes last enters last.

A product a·(b·c) whose c is ready only many rounds after a and b (an RMSNorm's weight, its input
and the reciprocal square root; an MLP's up projection, its gate and the gate's sigmoid) costs two
products after c. As (a·b)·c, a·b is made while c is still being computed, and one product
follows c — which can ride on c's truncation (``core.fusion``). Same value in exact arithmetic;
only the order of roundings changes.

``depth`` counts the products and comparisons on the longest path to a node (truncations are
placed later and not seen here). A rewrite moves the inner product just before the outer one, so
the program stays in topological order; facts the frontend knew about the inner product's value
(a declared bound, a row norm) carry over to the outer one, scaled by the largest weight of a,
where a is a weight whose values are known — otherwise that product is left alone. Products
inside a recipe are left as the recipe wrote them: their order is chosen for what rides and for
the scales the relabels give (a reassociated rsqrt step of a 7B model's norm needs 67 bits).
"""
from __future__ import annotations

import dataclasses

import torch

from ..core.fusion import ride_schedule
from ..core.ir import Facts, Node, Program


def reassociate_products(program: Program) -> Program:
    """Rewrite until no product can be reassociated, then order by depth; returns the same
    program, renumbered."""
    while (rewrites := _rewrites(program)):
        _apply(program, rewrites)
    return order_by_depth(program)


def order_by_depth(program: Program) -> Program:
    """Nodes sorted by depth, then by their place (still a topological order: an input is never
    deeper, and an input of equal depth comes first). A product can ride on a truncation only
    with operands made before it in program order (``core.fusion``); in capture order a value
    needed early can come late (an MLP's up projection after the whole sigmoid of its gate)."""
    depth = _depths(program)
    order = sorted(range(len(program.nodes)), key=lambda i: (depth[i], i))
    new_id = {old: new for new, old in enumerate(order)}
    program.nodes = [dataclasses.replace(program[old], id=new, inputs=tuple(new_id[i] for i in program[old].inputs))
                     for new, old in enumerate(order)]
    _renumber_ends(program, new_id)
    return program


def _depths(program: Program) -> list[float]:
    """Per node, the rounds of the longest path to it with nothing truncated and nothing riding."""
    at = ride_schedule(program, fuse=False)[1]
    return [at[v.id] for v in program.nodes]


def _rewrites(program: Program) -> dict[int, tuple[int, int, int, Facts]]:
    """outer mul id -> (a, b, c, the outer's facts) for (a·b)·c, the inner product then dropped."""
    depth, users = _depths(program), program.users()
    out: dict[int, tuple[int, int, int, Facts]] = {}
    taken: set[int] = set()
    for m in program.nodes:
        if m.op != "mul" or m.inputs[0] == m.inputs[1] or m.id in taken or m.recipe:
            continue
        for inner_id, a in (m.inputs, m.inputs[::-1]):
            inner = program[inner_id]
            if inner.op != "mul" or users[inner_id] != [m.id] or inner_id in taken or inner.recipe:
                continue
            b, c = sorted(inner.inputs, key=depth.__getitem__)
            if b == c or a in (b, c) or depth[c] <= max(depth[a], depth[b]):
                continue
            facts = _carried_facts(program, inner, a, m.facts)
            if facts is not None:
                out[m.id] = (a, b, c, facts)
                taken.update((m.id, inner_id))
                break
    return out


def _carried_facts(program: Program, inner: Node, a: int, outer: Facts) -> Facts | None:
    """The outer product's facts: its own, plus the inner one's scaled by max |a|; None if the
    inner one has facts and a is not a weight of known values."""
    known = Facts(bound=inner.facts.bound, row_l2=inner.facts.row_l2)
    if known == Facts():
        return outer
    w = program[a]
    value = program.weights.get(w.attrs.get("name")) if w.op == "weight" else None
    if value is None or value.is_meta or inner.facts.row_stochastic:
        return None
    scale = float(value.detach().abs().max().double())
    merged = dataclasses.replace(outer)
    if known.bound is not None and (outer.bound is None or known.bound * scale < outer.bound):
        merged.bound, merged.bound_source = known.bound * scale, inner.facts.bound_source
    if known.row_l2 is not None:
        merged.row_l2 = _least(outer.row_l2, known.row_l2 * scale)
    return merged


def _least(x: float | None, y: float) -> float:
    return y if x is None else min(x, y)


def _apply(program: Program, rewrites: dict[int, tuple[int, int, int, Facts]]) -> None:
    dropped = {i for m in rewrites for i in program[m].inputs if i not in rewrites[m][:3]}
    new_id: dict[int, int] = {}
    nodes: list[Node] = []

    def add(node: Node, inputs: tuple[int, ...], shape: tuple[int, ...], facts: Facts) -> int:
        nodes.append(dataclasses.replace(node, id=len(nodes), inputs=inputs, shape=shape, facts=facts))
        return len(nodes) - 1

    for node in program.nodes:
        if node.id in dropped:
            continue
        if node.id in rewrites:
            a, b, c, facts = rewrites[node.id]
            inner = program[next(i for i in node.inputs if i in dropped)]
            shape = tuple(torch.broadcast_shapes(program[a].shape, program[b].shape))
            ab = add(inner, (new_id[a], new_id[b]), shape, Facts())
            new_id[node.id] = add(node, (ab, new_id[c]), node.shape, facts)
        else:
            new_id[node.id] = add(node, tuple(new_id[i] for i in node.inputs), node.shape, node.facts)
    program.nodes = nodes
    _renumber_ends(program, new_id)


def _renumber_ends(program: Program, new_id: dict[int, int]) -> None:
    program.inputs = {k: new_id[v] for k, v in program.inputs.items()}
    program.outputs = [new_id[i] for i in program.outputs]
