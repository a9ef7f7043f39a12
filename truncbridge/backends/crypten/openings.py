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
The weight's mask b is the model owner's draw alone, and the weight is the owner's alone (its
share is the weight, the others' zero: ``batched.prepare_static``), so the owner *sends* w − b: one
message from it to each other party (``Pending.sender``), not an all-reduce of shares. The others
learn nothing of w from w − b, and the owner, who knows w, nothing new. So the product's terms that
do not involve the client's input are made before the online phase, and online only the owner
multiplies: the weight (a few bits) by the opened x − a. The same two masked values are opened as
in a plain Beaver product.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...core.gemm import magnitude_bits
from ...core.ring import matmul_mod64
from .material import MASKS, RING_PRODUCTS

REVEAL_ELEMENTS = 1 << 24  # a larger message (a head's weight half, before the online phase) opens in parts of
# this size, so that the communicator's copies are one part's: online messages are far smaller


@dataclass
class Pending:
    kind: str  # beaver | half-a | half-b | square | trunc (the receipt audit's names)
    secrets: tuple  # the shared values the opening hides
    masked: list  # their masked shares, to open
    finish: Callable[[list[torch.Tensor]], Any]  # the opened values -> the step's result
    result: Any = None
    audit: Any = None  # the receipt audit's record of this step (``audit.py``), when auditing
    sender: int | None = None  # the one party that knows the masked values (a weight's half): it sends them


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


@dataclass
class WeightHalf:
    """What a weight's product keeps between its two halves (``half_opened``, ``half_finished``):
    this party's share of the activation's mask, its input-independent share of the product
    (c + the weight's opening times the activation's mask), and — on the owner only — the weight
    itself in the ring (its mask plus its opening; int32 where it fits) with its magnitude bits."""
    mask: torch.Tensor
    pre: torch.Tensor
    weight: torch.Tensor | None
    weight_bits: int
    audit: Any = None  # the receipt audit's record of the weight's half (its triple's dealing index)


class OwnerWeights:
    """The owner's weights in the ring, kept for its online products at 4 bytes an element where they
    fit (a weight in the ring has ~20 bits): narrowed once per base tensor, so that a view of a weight
    (a head's transpose of the embedding it is tied to, a slice) shares its base's narrowed copy
    instead of holding one of its own. Lives for one weights' phase (``batched.prepare_static``)."""

    def __init__(self):
        self._narrowed = {}  # id(base) -> (a weak reference to the int64 base, its int32 copy)

    def keep(self, share: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(the weight to keep: int32 where it fits, else ``share`` itself; its magnitude bits)."""
        bits = magnitude_bits(share)
        if bits >= 32:
            return share, bits
        base = share if share._base is None else share._base
        hit = self._narrowed.get(id(base))
        if hit is None or hit[0]() is not base:  # (a dead reference: another tensor at a freed one's id)
            if not base.is_contiguous() or base.storage_offset() or (base is not share and magnitude_bits(base) >= 32):
                return share.to(torch.int32), bits
            hit = self._narrowed[id(base)] = (weakref.ref(base), base.to(torch.int32))
        return hit[1].as_strided(share.size(), share.stride(), share.storage_offset()), bits


def half_opened(side: int, w, other_size, op: str, rank: int, owner: int, kept: OwnerWeights | None = None) -> Pending:
    """Before the online phase, half of a Beaver product whose operand ``side`` (0 or 1) is ``w``,
    an input-independent value the ``owner`` holds alone (a weight: the others' shares are zero, and
    their ``w`` only gives its size). Its triple's mask of ``w`` is the owner's draw alone
    (``material``, kind "weight"), so the owner sends w − mask: it tells the others nothing and the
    owner nothing new. Everything but the owner's product of the weight with the opened activation is
    computed here, offline: the others keep no weight-sized value. The result is a ``WeightHalf``; it
    does not hold the step, so nothing waits for the cyclic garbage collector. ``kept``: the owner's
    narrowed weights of this phase, shared between a weight's views (a fresh copy without it)."""
    sizes = (w.size(), torch.Size(other_size)) if side == 0 else (torch.Size(other_size), w.size())
    t = _provider().weight_triple(*sizes, op, side, owner)
    wmask, amask = t[MASKS[side]], t[MASKS[1 - side]]

    def finish(opened):
        delta, f = opened[0], RING_PRODUCTS[op]
        pre = t["c"] + (f(delta, amask) if side == 0 else f(amask, delta))
        if rank != owner:
            return WeightHalf(amask, pre, None, 0, step.audit)
        weight, bits = (kept or OwnerWeights()).keep(w.share)  # the owner's share is the whole weight
        return WeightHalf(amask, pre, weight, bits, step.audit)

    masked = wmask.neg_().add_(w.share) if rank == owner else w.share  # w − b in b's buffer; the others' (0) stays
    step = Pending(("half-a", "half-b")[side], (w,), [_ast(masked)], finish, sender=owner)
    return step


def half_finished(side: int, x, pre: WeightHalf, op: str, rank: int) -> Pending:
    """Online, the other half (``half_opened``): x is operand ``side``; open x − its mask only. The
    owner's share gains the weight times the opened value: one product, with the weight's few bits;
    the others' shares were made offline."""
    def finish(opened):
        if pre.weight is None:
            return _ast(pre.pre)
        x, w = opened[0], pre.weight
        if op != "matmul":
            return _ast(pre.pre + x * w)
        return _ast(pre.pre + (matmul_mod64(x, w, a_bits=64, b_bits=pre.weight_bits) if side == 0
                               else matmul_mod64(w, x, a_bits=pre.weight_bits, b_bits=64)))

    return Pending(("half-a", "half-b")[side], (x,), [_ast(x.share - pre.mask)], finish)


def square(x, rank: int) -> Pending:
    """x² from a dealt pair (r, r²): open x − r, then r² + 2ε·r + ε² (the public term on party 0)."""
    r, r2 = _provider().square(x.size(), device=x.device)

    def finish(opened):
        eps = opened[0]
        z = r2.share + 2 * eps * r.share
        return _ast(z + eps * eps if rank == 0 else z)

    return Pending("square", (x,), [_ast(x.share - r.share)], finish)


def reveal_together(steps: list[Pending]) -> None:
    """Open every step's masked values in one message, then finish each (``Pending.result``): one
    all-reduce of every party's masked shares, or — where one party knows the masked values (a
    weight's halves: ``Pending.sender``) — that party's broadcast of them."""
    if not steps:
        return
    masked = [m for s in steps for m in s.masked]
    sender = steps[0].sender
    if any(s.sender != sender for s in steps):
        raise ValueError("one message has one sender: a weight's halves open apart from the online steps")
    opened = _sent(masked, sender) if sender is not None else _all_reduced(masked)
    offset = 0
    for s in steps:
        values = []
        for m in s.masked:
            n = m.share.numel()
            values.append(opened[offset:offset + n].view(m.share.shape))
            offset += n
        s.result = s.finish(values)
        s.secrets, s.masked, s.finish = (), [], None  # opened: what a half keeps outlives its step, not its shares


def _flat(masked: list) -> torch.Tensor:
    """This party's masked shares as one vector; one alone (a head's weight half) is not copied."""
    return masked[0].share.reshape(-1) if len(masked) == 1 else torch.cat([m.share.reshape(-1) for m in masked])


def _all_reduced(masked: list) -> torch.Tensor:
    flat = _flat(masked)
    parts = [type(masked[0]).from_shares(part, precision=0).reveal() for part in flat.split(REVEAL_ELEMENTS)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # one all-reduce (a head's weight half: a few)


def _sent(masked: list, sender: int) -> torch.Tensor:
    """The sender's masked values, broadcast from it in parts of ``REVEAL_ELEMENTS``: the others receive
    them into one buffer (their own ``masked`` give only the sizes)."""
    import crypten.communicator as comm

    link = comm.get()
    received = link.get_rank() != sender
    flat = torch.empty(sum(m.share.numel() for m in masked), dtype=torch.int64) if received else _flat(masked)
    for part in flat.split(REVEAL_ELEMENTS):  # contiguous views of flat: received in place
        link.broadcast(part, sender)
    return flat
