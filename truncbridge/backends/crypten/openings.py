"""Masked openings that travel together: one message for every step ready in the same round.

A step that opens something is split in two: ``beaver``, ``square`` (here) and
``truncation.prepare_truncation`` take their dealt material and return a ``Pending`` holding the
masked values to open (x − a, y − b; x − r; x + 2^62 + r and z − b) and how to finish once they
are public. ``reveal_together`` opens every pending step's values in **one** message (one
all-reduce of their concatenation: one round, the same bytes) and finishes each. The runner
collects the steps of one wave of the plan (``core.waves``); a single step is a batch of one.
The masks are what CrypTen's own ``beaver.mul`` / ``matmul`` / ``square`` use, from the same
provider requests: a party receives exactly what it would receive step by step.

A product of a weight (known before the client's input) is opened in two halves: w − b before the
online phase (``half_opened``, input-independent, like dealing), x − a online (``half_finished``).
Who learns what is unchanged — the same two masked values are opened — but the weights' openings
leave the online phase.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .material import RING_PRODUCTS


@dataclass
class Pending:
    kind: str  # beaver | half-a | half-b | square | trunc (the receipt audit's names)
    secrets: tuple  # the shared values the opening hides
    masked: list  # their masked shares, to open
    finish: Callable[[list[torch.Tensor]], Any]  # the opened values -> the step's result
    result: Any = None
    audit: Any = None  # the receipt audit's record of this step (``audit.py``), when auditing


def _provider():
    import crypten.mpc

    return crypten.mpc.get_default_provider()


def _ast(share: torch.Tensor):
    from crypten.mpc.primitives import ArithmeticSharedTensor

    return ArithmeticSharedTensor.from_shares(share, precision=0)


def _product(triple: tuple, eps: torch.Tensor, delta: torch.Tensor, op: str, rank: int):
    """c + ε·b + a·δ + ε·δ (the public term on party 0): this party's share of x·y."""
    a, b, c = triple
    f = RING_PRODUCTS[op]
    z = c.share + f(eps, b.share) + f(a.share, delta)
    return _ast(z + f(eps, delta) if rank == 0 else z)


def beaver(x, y, op: str, rank: int) -> Pending:
    """x·y (``op``: "mul" or "matmul") from a dealt triple c = a·b: open x − a and y − b."""
    triple = _provider().generate_additive_triple(x.size(), y.size(), op, device=x.device)
    a, b, _ = triple
    return Pending("beaver", (x, y), [_ast(x.share - a.share), _ast(y.share - b.share)],
                   lambda opened: _product(triple, *opened, op, rank))


def half_opened(side: int, w, other_size, op: str) -> Pending:
    """Before the online phase, half of a Beaver product whose operand ``side`` (0 or 1) is ``w``,
    known before the client's input (a weight): take the triple now and open w − its mask (kind
    "half-a" or "half-b"). The result, (triple, opened value, this step's audit record or None), is
    what ``half_finished`` needs; it does not hold the step, so nothing waits for the cyclic garbage
    collector (a weight-sized triple per half did, between passes)."""
    sizes = (w.size(), torch.Size(other_size)) if side == 0 else (torch.Size(other_size), w.size())
    triple = _provider().generate_additive_triple(*sizes, op, device=w.device)
    step = Pending(("half-a", "half-b")[side], (w,), [_ast(w.share - triple[side].share)],
                   lambda opened: (triple, opened[0], step.audit))
    return step


def half_finished(side: int, x, pre: tuple, op: str, rank: int) -> Pending:
    """Online, the other half (``half_opened``): x is operand ``side``; open x − its mask only."""
    triple, known, _ = pre

    def finish(opened):
        eps, delta = (opened[0], known) if side == 0 else (known, opened[0])
        return _product(triple, eps, delta, op, rank)

    return Pending(("half-a", "half-b")[side], (x,), [_ast(x.share - triple[side].share)], finish)


def square(x, rank: int) -> Pending:
    """x² from a dealt pair (r, r²): open x − r, then r² + 2ε·r + ε² (the public term on party 0)."""
    r, r2 = _provider().square(x.size(), device=x.device)

    def finish(opened):
        eps = opened[0]
        z = r2.share + 2 * eps * r.share
        return _ast(z + eps * eps if rank == 0 else z)

    return Pending("square", (x,), [_ast(x.share - r.share)], finish)


def reveal_together(steps: list[Pending]) -> None:
    """Open every step's masked values in one message, then finish each (``Pending.result``)."""
    if not steps:
        return
    masked = [m for s in steps for m in s.masked]
    flat = torch.cat([m.share.reshape(-1) for m in masked])
    opened = type(masked[0]).from_shares(flat, precision=0).reveal()  # one all-reduce
    offset = 0
    for s in steps:
        values = []
        for m in s.masked:
            n = m.share.numel()
            values.append(opened[offset:offset + n].view(m.share.shape))
            offset += n
        s.result = s.finish(values)
        s.secrets, s.masked, s.finish = (), [], None  # opened: what a half keeps outlives its step, not its shares
