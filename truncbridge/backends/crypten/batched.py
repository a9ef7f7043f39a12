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
    halves go in messages of at most ``HALVES_PER_MESSAGE`` elements (a larger weight alone, not
    copied into a concatenation), a weight's share is made when first read and dropped once its
    halves are open unless an online node reads it (what a half keeps is an ``openings.WeightHalf``:
    output-sized, and the weight itself on the owner)."""
    sides = {n.id: side for n in program.nodes if n.id not in riding
             and (side := weight_side(n, static_ids)) is not None}
    weight_of = {p: program[p].inputs[side] for p, side in sides.items()}
    online = {i for n in program.nodes if n.id not in static_ids and n.id not in sides for i in n.inputs if i in static_ids}
    # made here: on the owner what a half or an online node reads; on the others the latter (else zeros)
    computed = _feeding(program, online | set(weight_of.values())) if rank == backend.owner else _feeding(program, online)
    uses = Counter(i for j in computed for i in program[j].inputs)
    uses.update(weight_of.values())
    env, pending, halves, kept = {}, {}, {}, openings.OwnerWeights()

    def release(i: int) -> None:
        uses[i] -= 1
        if not uses[i] and i not in online:
            env.pop(i, None)

    def flush() -> None:
        openings.reveal_together([h for _, h in pending.values()])  # looked up here: the audit wraps it
        halves.update({i: (side, h.result) for i, (side, h) in pending.items()})
        pending.clear()

    def value(i: int):
        """Made when first read (a weight's share, then what is computed from it) and held until its last reader."""
        if i not in computed:  # the others' zero share of what only a half reads: its size alone
            return backend.AST.from_shares(torch.zeros((), dtype=torch.int64).expand(program[i].shape), precision=0)
        for j in sorted(_feeding(program, {i}, made=env)):  # what is not yet made, inputs first (ids are topological)
            n = program[j]
            env[j] = run_node(backend, n, [env[k] for k in n.inputs]) if n.inputs else backend.owned(n)
            for k in n.inputs:
                release(k)
        return env[i]

    queued = 0
    for p in _tied_together(program, weight_of):
        side, w = sides[p], weight_of[p]
        if queued and queued + program[w].numel > HALVES_PER_MESSAGE:  # a large weight (a head) goes alone:
            flush()  # its message is its own buffer, not a concatenation with the weights before it
            queued = 0
        other = program[program[p].inputs[1 - side]]
        pending[p] = (1 - side, openings.half_opened(side, value(w), other.shape, program[p].op, rank, backend.owner, kept))
        release(w)
        queued += program[w].numel
    flush()
    return {i: value(i) if i in online else None for i in static_ids}, halves


def _tied_together(program: Program, weight_of: dict[int, int]) -> list[int]:
    """The products of weights in program order, except that those reading one weight follow each other (a
    head tied to the embedding comes second, not last): a weight's share then lives for one message, and
    the head's half is opened before the others' kept weights have all accumulated."""
    order = [n.id for n in program.nodes if n.id in weight_of]
    sources = {p: _feeding(program, {weight_of[p]}) for p in order}  # the weights (and views) each one reads
    grouped, done = [], set()
    for p in order:
        if p not in done:
            tied = [q for q in order if q not in done and sources[q] & sources[p]]
            grouped += tied
            done.update(tied)
    return grouped


def _feeding(program: Program, read: set[int], made=()) -> set[int]:
    """The values ``read`` and those they are made from, short of those already ``made``."""
    out, todo = set(), [i for i in read if i not in made]
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            todo.extend(j for j in program[i].inputs if j not in made)
    return out
