"""Which private products ride on a truncation's opening (the exact truncation's fused product).

The exact truncation (``crypten/truncation.py``) opens c = x + 2^62 + r; its result is
y = P + S with P public (a function of c) and S = w·msb(r) − (r >> k), w public: every share of y
is public data plus dealt material. So is every public affine map of y, α·y + β (negations,
shifts, public sums and products, scale relabels). A product with such a value needs no opening of
it: y·z needs only z − b, which travels in the same message as c, and dealt shares of msb(r)·b and
(r >> k)·b; y·y needs only dealt (r >> k)² and msb(r)·(r >> k). The product costs no round.

A product rides on a truncation when it is elementwise (``mul``: a matrix product would need
material for every public pattern of wraps), an input is a public affine map of the truncation's
output, and its other input is already computed when the truncation runs (it precedes the
truncation in program order) or is itself a map of the same output. With two truncated inputs it
rides on the later truncation.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Program

AFFINE = ("pow2", "neg", "shl", "add_public", "mul_public")  # elementwise maps α·y + β, public α, β


@dataclass(frozen=True)
class Rider:
    product: int  # the mul node
    trunc: int  # the truncation whose opening carries it
    chains: tuple  # per input of the product: the affine nodes from the truncation to it, or None
    other: int | None  # the input that is not a map of the truncation (None: both are)


def affine_root(program: Program, node_id: int) -> tuple[int, tuple[int, ...]] | None:
    """(truncation id, the affine nodes after it up to ``node_id``) if ``node_id`` is a public
    affine map of a truncation's output, else None."""
    chain = []
    node = program[node_id]
    while node.op in AFFINE:
        chain.append(node.id)
        node = program[node.inputs[0]]
    return (node.id, tuple(reversed(chain))) if node.op == "trunc" else None


def riders(program: Program) -> dict[int, Rider]:
    """Product node id -> how it rides on a truncation's opening, for every product that can."""
    out: dict[int, Rider] = {}
    for node in program.nodes:
        if node.op != "mul":
            continue
        roots = [affine_root(program, i) for i in node.inputs]
        truncs = [r[0] for r in roots if r is not None]
        if not truncs:
            continue
        t = max(truncs)
        chains = tuple(r[1] if r is not None and r[0] == t else None for r in roots)
        others = [i for i, c in zip(node.inputs, chains) if c is None]
        if all(i < t for i in others):
            out[node.id] = Rider(node.id, t, chains, others[0] if others else None)
    return out


def riders_by_truncation(program: Program) -> dict[int, list[Rider]]:
    out: dict[int, list[Rider]] = {}
    for r in riders(program).values():
        out.setdefault(r.trunc, []).append(r)
    return out
