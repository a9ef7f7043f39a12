"""The batched walk's plan for ``PlanRunner``: which nodes open together, and what is opened before
the online phase.

``core.waves`` groups the plan's openings by the round they can go in; the runner's hooks
(``core.interpret.WaveBackend``) prepare every Beaver product and exact truncation of one wave, open
them together (``openings.reveal_together``) and finish them; the wave's multi-round steps and
local ops follow (``core.interpret.interpret_waves``). Before the online phase, ``prepare_static``
does what does not depend on the client's input: the weights' shares and their halves of the
Beaver products they enter (``openings.half_opened``), in one message.

The weights are shared the owner's way: its share is the weight, the others' zero. No zero-sharing
draws are needed, since a share never leaves its party except under a fresh mask (the receipt audit
checks it), and the owner can send a weight's half itself.
"""
from __future__ import annotations

from collections import Counter

import torch

from ...core.interpret import Backend, run_node
from ...core.ir import Program
from ...core.waves import Wave, how, waves, weight_side
from . import openings


def wave_schedule(program: Program, riding: set[int], carried: dict, exact: bool, parties: int) -> list[Wave]:
    """The plan's waves; a carrying truncation waits for the operands its message opens."""
    return waves(program, lambda n: how(n, riding, exact, parties), {t: c.others for t, c in carried.items()})


HALVES_PER_MESSAGE = 1 << 24  # weight elements opened in one message before the online phase (128 MB of shares)


def prepare_static(program: Program, backend: Backend, static_ids: set[int], riding: set[int], rank: int
                   ) -> tuple[dict, dict]:
    """(precomputed, halves): the input-independent values (node id -> value where an online node
    reads it, else None: ``interpret_waves``'s ``precomputed``) and, for every private product of a
    weight, (the activation's side, the weight's half of its Beaver opening), opened here — before
    the online phase, since none of it depends on the client's input. Memory stays bounded: the
    halves go in messages of about ``HALVES_PER_MESSAGE`` elements, a weight's share is made when first
    read and dropped once its halves are open unless an online node reads it (what a half keeps is
    an ``openings.WeightHalf``: output-sized, and the weight itself on the owner)."""
    sides = {n.id: side for n in program.nodes if n.id not in riding
             and (side := weight_side(n, static_ids)) is not None}
    online = {i for n in program.nodes if n.id not in static_ids and n.id not in sides for i in n.inputs if i in static_ids}
    uses = Counter(i for n in program.nodes if n.id in static_ids for i in n.inputs)
    uses.update(program[p].inputs[side] for p, side in sides.items())
    computed = static_ids if rank == backend.owner else _feeding(program, online)  # the others: zeros, where read online
    env, pending, halves = {}, {}, {}

    def release(i: int) -> None:
        uses[i] -= 1
        if not uses[i] and i not in online:
            env.pop(i, None)

    def flush() -> None:
        openings.reveal_together([h for _, h in pending.values()])  # looked up here: the audit wraps it
        halves.update({i: (side, h.result) for i, (side, h) in pending.items()})
        pending.clear()

    def value(i: int):
        if i not in computed:  # the others' zero share of what only a half reads: its size alone
            return backend.AST.from_shares(torch.zeros((), dtype=torch.int64).expand(program[i].shape), precision=0)
        if i not in env:  # a source (a weight's share) is made when first read, not all at the program's start
            env[i] = backend.owned(program[i])
        return env[i]

    queued = 0
    for n in program.nodes:
        if n.id in static_ids and n.inputs:
            if n.id in computed:
                env[n.id] = run_node(backend, n, [value(i) for i in n.inputs])
            for i in n.inputs:
                release(i)
            if not uses[n.id] and n.id not in online:  # read by nothing here or online
                env.pop(n.id, None)
        elif n.id in sides:
            side, w = sides[n.id], n.inputs[sides[n.id]]
            other = program[n.inputs[1 - side]]
            pending[n.id] = (1 - side, openings.half_opened(side, value(w), other.shape, n.op, rank, backend.owner))
            release(w)
            queued += program[w].numel
            if queued >= HALVES_PER_MESSAGE:
                flush()
                queued = 0
    flush()
    return {i: value(i) if i in online else None for i in static_ids}, halves


def _feeding(program: Program, online: set[int]) -> set[int]:
    """The input-independent values an online node reads, and those they are made from."""
    out, todo = set(), list(online)
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            todo.extend(program[i].inputs)
    return out
