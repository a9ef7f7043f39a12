"""The batched walk's plan for ``PlanRunner``: which nodes open together, and what is opened before
the online phase.

``core.waves`` groups the plan's openings by the round they can go in; the runner's hooks
(``core.interpret.WaveBackend``) prepare every Beaver product and exact truncation of one wave, open
them together (``openings.reveal_together``) and finish them; the wave's multi-round steps and
local ops follow (``core.interpret.interpret_waves``). Before the online phase, ``prepare_static``
does what does not depend on the client's input: the weights' shares and their halves of the
Beaver products they enter (``openings.half_opened``), in one message.
"""
from __future__ import annotations

from ...core.interpret import Backend, run_node
from ...core.ir import Program
from ...core.waves import Wave, how, waves, weight_side
from . import openings


def wave_schedule(program: Program, riding: set[int], carried: dict, exact: bool, parties: int) -> list[Wave]:
    """The plan's waves; a carrying truncation waits for the operands its message opens."""
    return waves(program, lambda n: how(n, riding, exact, parties), {t: c.others for t, c in carried.items()})


def prepare_static(program: Program, backend: Backend, static_ids: set[int], riding: set[int], rank: int
                   ) -> tuple[dict, dict]:
    """(precomputed, halves): the input-independent values (node id -> value where an online node
    reads it, else None: ``interpret_waves``'s ``precomputed``) and, for every private product of a
    weight, (the activation's side, the weight's half of its Beaver opening), opened here in one
    message — before the online phase, since none of it depends on the client's input."""
    env = {}
    for n in program.nodes:
        if n.id in static_ids:
            env[n.id] = run_node(backend, n, [env[i] for i in n.inputs])
    pending = {}  # product id -> (the activation's side, the weight's half)
    for n in program.nodes:
        side = None if n.id in riding else weight_side(n, static_ids)
        if side is not None:
            other = program[n.inputs[1 - side]]
            pending[n.id] = (1 - side, openings.half_opened(side, env[n.inputs[side]], other.shape, n.op))
    openings.reveal_together([h for _, h in pending.values()])  # looked up here: the audit wraps it
    halves = {i: (side, h.result) for i, (side, h) in pending.items()}
    needed = {i for n in program.nodes if n.id not in static_ids and n.id not in halves
              for i in n.inputs if i in static_ids}
    return {i: env[i] if i in needed else None for i in static_ids}, halves
