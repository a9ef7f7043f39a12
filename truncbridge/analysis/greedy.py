"""Eager and lazy placement, and emitting a chosen set of truncations.

    eager    every product above frac_bits is truncated back to frac_bits at once (CrypTen's rule);
             an input relabelled so far up that the next product would not fit is truncated first
    lazy     TruncFormer's rule: keep products at full scale; when an operation would leave the
             budget, truncate its highest-scale input back to frac_bits, and repeat
"""
from __future__ import annotations

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
            above = [i for i in dict.fromkeys(ins) if e.scale(i) > e.f and i not in tried]
            if not above:
                break
            old = max(above, key=e.scale)
            new = e.truncate_to_f(old)
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
