"""Eager and lazy placement, and emitting a chosen set of truncations.

    eager    every product above frac_bits is truncated back to frac_bits at once (CrypTen's rule);
             an input relabelled so far up that the next product would not fit is truncated first
    lazy     TruncFormer's rule: keep products at full scale; when an operation would leave the
             budget, truncate its highest-scale input back to its floor (frac_bits, or the
             precision floor: ``precision_floors``), and repeat
"""
from __future__ import annotations

from ..core.ir import Program
from ..core.ops import spec
from .emit import Emitter


def place_greedy(e: Emitter, lazy: bool) -> None:
    for node in e.src.nodes:
        ins = [e.current[i] for i in node.inputs]
        scale, extra = e.natural_scale(node, ins)
        tried: set[int] = set()  # inputs already truncated for this node, and their truncations
        while not e.fits(node, ins, scale):
            # TruncFormer: truncate the highest-scale input that is still above frac_bits (eager
            # too, where divisions relabelled an input so far up that its product would not fit)
            above = [i for i in dict.fromkeys(ins) if e.scale(i) > e.floor(i) and i not in tried]
            if not above:
                break
            old = max(above, key=e.scale)
            new = e.truncate_down(old)
            tried.update((old, new))
            ins = [new if i == old else i for i in ins]  # both operands of a square
            scale, extra = e.natural_scale(node, ins)
        nid = e.emit(node, ins, scale, extra)
        if not lazy and spec(node).product and scale > e.f:
            e.current[node.id] = e.to_scale(nid, e.f)


def place_fixed(e: Emitter, target: dict[int, int]) -> None:
    """Emit with the truncations an optimal solution chose: node id -> scale after truncation."""
    for node in e.src.nodes:
        ins = [e.current[i] for i in node.inputs]
        scale, extra = e.natural_scale(node, ins)
        nid = e.emit(node, ins, scale, extra)
        if node.id in target and target[node.id] < e.scale(nid):
            e.current[node.id] = e.to_scale(nid, target[node.id])


def lowest_scales(program: Program, source_of: dict[int, int]) -> list[float]:
    """Per source node, the lowest scale a placed ``program`` holds its value at (its truncations
    and rescales included; inf where it is never placed)."""
    lowest = [float("inf")] * (max(source_of.values(), default=-1) + 1)
    for node in program.nodes:
        placed = node
        while placed.id not in source_of:  # a trunc / shl: the value it rescales
            placed = program[placed.inputs[0]]
        src = source_of[placed.id]
        lowest[src] = min(lowest[src], node.scale)
    return lowest


def precision_floors(e: Emitter, tolerance: int) -> list[int]:
    """Per source node, the lowest scale lazy and optimal may truncate it to: the lowest scale
    eager's plan (placed by ``e``) holds it at, less ``tolerance`` bits, never below frac_bits.
    Every value then keeps at least eager's precision less the tolerance, since scales only grow
    along untruncated ops; and whatever eager fits, lazy fits: with every input truncated to its
    floor, an op's scale is at most eager's."""
    return [max(e.f, int(s) - tolerance) for s in lowest_scales(e.out, e.source_of)]
