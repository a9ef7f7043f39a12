"""The exact ring backend: a placed plan executed bit-exactly in Z_2^l, on any torch device.

``RingExecutor`` runs a plan; with ``check`` it counts elements whose integer exceeds the bound
the plan promised. Its ``truncation`` model says what a ``trunc`` node outputs: ``nearest`` is the
deterministic plan semantics; the others sample what an MPC protocol would open
(``truncation_models.TRUNCATION_MODELS``), so repeated runs show the distribution of the MPC result.
"""
from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.interpret import interpret
from ..core.ops import spec
from ..core.ring import Ring
from ..core.types import Plan
from .truncation_models import TRUNCATION_MODELS, sample_truncation


class RingBackend:
    """Ring integers for every op kind; public constants are encoded once, on ``device``."""

    def __init__(self, plan: Plan, device: torch.device, truncation: str, generator: torch.Generator | None):
        self.plan, self.ring, self.device = plan, Ring(plan.field_bits), device
        self.truncation, self.generator = truncation, generator
        program = plan.program
        self.weights = {n.attrs["name"]: self._encode(program.weights[n.attrs["name"]], n.scale)
                        for n in program.nodes if n.op == "weight"}
        self.encoded = {n.id: self.ring.encode_public(program.consts[n.attrs["const"]], _const_scale(n)).to(device)
                        for n in program.nodes if spec(n).kind == "public"}
        self.consts = {k: v.to(device) for k, v in program.consts.items()}  # index tensors of moves
        self.inputs: dict[str, torch.Tensor] = {}

    def _encode(self, value: torch.Tensor, scale: int) -> torch.Tensor:
        return self.ring.encode(value, scale).to(self.device)

    def source(self, node, op, xs):
        if node.op == "weight":
            return self.weights[node.attrs["name"]]
        given = self.inputs[node.attrs["name"]]
        # int64 inputs are ring elements already; floats are real values to encode
        return self.ring.reduce(given.to(self.device)) if given.dtype == torch.int64 else self._encode(given, node.scale)

    def local(self, node, op, xs):  # int64 wraps mod 2^64; reducing gives Z_2^l
        return self.ring.reduce(op.real(xs, node, _Consts(self.consts)))

    def product(self, node, op, xs):
        return self.ring.matmul(*xs) if node.op == "matmul" else self.ring.mul(*xs)

    def public(self, node, op, xs):
        c = self.encoded[node.id]
        return self.ring.mul(xs[0], c) if op.product else self.ring.add(xs[0], c)

    def relabel(self, node, op, xs):  # a power-of-two rescale only relabels the scale
        return xs[0]

    output = relabel

    def shift(self, node, op, xs):
        return self.ring.shl(xs[0], node.attrs["shift"])

    def compare(self, node, op, xs):  # on the signed value the ring element stands for
        return (xs[0] >= 0).to(torch.int64)  # ring elements are kept as signed representatives

    def truncate(self, node, op, xs):
        shift = node.attrs["shift"]
        if self.truncation != "nearest":
            return sample_truncation(self.truncation, xs[0], shift, self.generator)
        if node.attrs.get("rounding", "nearest") == "nearest":
            return self.ring.trunc_nearest(xs[0], shift)
        return self.ring.trunc_floor(xs[0], shift)


class _Consts:
    """A program stand-in whose ``consts`` are on the backend's device (for local ops' ``real``)."""

    def __init__(self, consts: dict[str, torch.Tensor]):
        self.consts = consts


def _const_scale(node) -> int:
    """A public multiplier is encoded at its own scale (placement's ``const_scale``); an addend at the node's."""
    return node.attrs["const_scale"] if spec(node).product else node.scale


class RingExecutor:
    """Runs a plan in Z_2^field_bits on ``device``.

    ``truncation``: one of ``TRUNCATION_MODELS``; all but "nearest" need a 64-bit field and draw
    their randomness from one generator seeded with ``seed``, on ``device`` where it has one (so a
    seed gives the same sequence of runs on the same kind of device; the stream goes on from run to
    run, as fresh MPC randomness would)."""

    def __init__(self, plan: Plan, device: str | torch.device = "cpu", truncation: str = "nearest", seed: int = 0):
        if truncation not in TRUNCATION_MODELS:
            raise UserError(f"unknown truncation model {truncation!r}: choose one of {', '.join(TRUNCATION_MODELS)}")
        if truncation != "nearest" and plan.field_bits != 64:
            raise UserError(f"truncation model {truncation} is for the ring Z_2^64, "
                            f"not a {plan.field_bits}-bit field")
        self.plan = plan
        self.device = torch.device(device)
        generator = _generator(self.device, seed) if truncation != "nearest" else None
        self.backend = RingBackend(plan, self.device, truncation, generator)

    def run(self, inputs: dict[str, torch.Tensor], check: bool = False) -> tuple[list[torch.Tensor], int]:
        """Returns (output integers, number of elements that broke their promised bound)."""
        self.backend.inputs = inputs
        violations = 0

        def count_violations(node, v):
            nonlocal violations
            bits = self.plan.bound_bits(node)
            if bits < 1:  # |v| < 2^(bits - 1) < 1: a value promised to be 0 (a bound of 0, low scale)
                violations += int((v != 0).sum())
            elif bits < 64:  # a 64-bit promise in Z_2^64 cannot be broken
                limit = 1 << (bits - 1)
                violations += int(((v >= limit) | (v < -limit)).sum())

        outs = interpret(self.plan.program, self.backend, count_violations if check else None)
        return outs, violations

    def decode_outputs(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        nodes = self.plan.program.nodes
        return [Ring.decode(v.cpu(), nodes[o].scale) for v, o in zip(outs, self.plan.program.outputs)]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device``, or on the CPU where the device has none."""
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(seed)
