"""The batched half of ``PlanRunner``: the plan wave by wave, one message per round.

``core.waves`` groups the plan's openings by the round they can go in; every Beaver product and
exact truncation of one wave is prepared, then opened together (``openings.reveal_together``)
and finished; the wave's multi-round steps and local ops follow. Before the online phase,
``prepare`` does what does not depend on the client's input: the weights' shares and their halves
of the Beaver products they enter (``openings.half_opened``), in one message.
"""
from __future__ import annotations

from ...core.ops import spec
from ...core.waves import LOCAL, OPENS, STEPS, waves, weight_side
from . import openings
from . import truncation as protocols


class Batched:
    # set by PlanRunner: plan, rank, AST, crypten, truncation, carried, _riding, _static_ids,
    # _static, _halves, _waves, _held, and its backend methods (one per op kind)

    # -- before the online phase: what does not depend on the client's input ------------------
    def _weight_side(self, node) -> int | None:
        return None if node.id in self._riding else weight_side(node, self._static_ids)

    def prepare(self) -> None:
        """The weights' shares and, for every private product of a weight, the weight's half of its
        Beaver opening (``openings.half_opened``), all in one message — before the online phase,
        since none of it depends on the client's input. ``run`` calls it if the caller has not;
        each call serves one run."""
        program, env = self.plan.program, {}
        for n in program.nodes:
            if n.id in self._static_ids:
                op = spec(n)
                env[n.id] = getattr(self, op.kind)(n, op, [env[i] for i in n.inputs])
        halves = {}  # product id -> (the activation's side, the weight's half)
        for n in program.nodes:
            side = self._weight_side(n)
            if side is not None:
                other = program[n.inputs[1 - side]]
                halves[n.id] = (1 - side, openings.half_opened(side, env[n.inputs[side]], other.shape, n.op))
        openings.reveal_together([h for _, h in halves.values()])  # looked up here: the audit wraps it
        self._halves = {i: (side, h.result) for i, (side, h) in halves.items()}
        needed = {i for n in program.nodes if n.id not in self._static_ids and n.id not in self._halves
                  for i in n.inputs if i in self._static_ids}
        self._static = {i: env[i] for i in needed}

    # -- batched: wave by wave, one message per wave (core.waves) ------------------------------
    def _how(self, node) -> str:
        kind = spec(node).kind
        if kind == "product":
            return LOCAL if node.id in self._riding else OPENS
        if kind == "truncate":
            if self.truncation == "exact":
                return OPENS
            return LOCAL if self.crypten.communicator.get().get_world_size() == 2 else STEPS  # CrypTen's div
        return STEPS if kind == "compare" else LOCAL

    def _schedule(self) -> list:
        program = self.plan.program
        schedule = waves(program, self._how, {t: c.others for t, c in self.carried.items()})
        last = {}  # value -> the wave after which nothing reads it
        for w, wave in enumerate(schedule):
            for n in (*wave.opened, *wave.steps, *wave.local):
                last[n.id] = max(last.get(n.id, w), w)
                for i in n.inputs:
                    last[i] = w
        dead: list[list[int]] = [[] for _ in schedule]
        for i, w in last.items():
            if i not in program.outputs:
                dead[w].append(i)
        return list(zip(schedule, dead))

    def _run_waves(self) -> list:
        if self._waves is None:
            self._waves = self._schedule()
        env: dict = dict(self._static)
        for i, value in env.items():
            self._hold(self.plan.program[i], value)

        def keep(node, value):
            env[node.id] = value
            self._hold(node, value)

        for wave, dead in self._waves:
            steps = [self._prepare(n, [env.get(i) for i in n.inputs]) for n in wave.opened]
            openings.reveal_together(steps)  # looked up here: the audit wraps it
            for n, step in zip(wave.opened, steps):
                keep(n, self._finish(n, step))
            for n in (*wave.steps, *wave.local):
                if n.id not in self._static_ids:
                    op = spec(n)
                    keep(n, getattr(self, op.kind)(n, op, [env.get(i) for i in n.inputs]))
            for i in dead:
                env.pop(i, None)
        return [env[o] for o in self.plan.program.outputs]

    def _prepare(self, node, xs) -> openings.Pending:
        if node.op == "trunc":
            self.truncations_executed += 1
            c = self.carried.get(node.id)
            if c is None:
                return protocols.prepare_truncation(xs[0], node.attrs["shift"], self.AST, self.rank)
            return protocols.prepare_truncation(xs[0], node.attrs["shift"], self.AST, self.rank,
                                                others=tuple(self._held[z] for z in c.others), degree=c.degree,
                                                other_degrees=tuple(c.other_degrees), pairs=tuple(c.pairs))
        if node.id in self._halves:  # the weight's half was opened before the online phase
            side, pre = self._halves[node.id]
            return openings.half_finished(side, xs[side], pre, node.op, self.rank)
        if node.op == "matmul":
            return openings.beaver(*xs, "matmul", self.rank)
        if node.inputs[0] == node.inputs[1]:
            return openings.square(xs[0], self.rank)
        return openings.beaver(*xs, "mul", self.rank)

    def _finish(self, node, step: openings.Pending):
        if node.op != "trunc":
            return step.result
        if node.id in self.carried:
            return self._from_opened(node, step.result, self.carried[node.id])
        return self._local(step.result.result())

