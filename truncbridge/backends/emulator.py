"""The exact ring backend: a placed plan executed bit-exactly in Z_2^l, on any torch device.

``RingExecutor`` runs a plan; with ``check`` it counts elements that leave the bit width the plan
promised, and those above their bound (beyond fixed-point rounding), and names the nodes
(``worst_offenders``). Its ``truncation`` model says what a ``trunc`` node outputs: ``nearest`` is
the deterministic plan semantics; the others sample what an MPC protocol would open
(``truncation_models.TRUNCATION_MODELS``), so repeated runs show the distribution of the MPC result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..core.interpret import interpret
from ..core.ops import spec
from ..core.ring import Ring
from ..core.types import ROUNDING_FLOOR_BITS, Plan
from .truncation_models import TRUNCATION_MODELS, sample_truncation

BOUND_SLACK_REL = 2.0**-10  # --check: fixed-point rounding may carry a value this far past its bound,
BOUND_SLACK_UNITS = 2  # plus this many units of 2^-frac_bits; anything further is a broken promise


@dataclass
class Offender:
    """A node whose values broke their promised bound: where it is, what was promised, what was seen."""

    node: int
    op: str
    origin: str
    bound: float
    source: str
    seen: float = 0.0  # the largest |value| seen (real, decoded at the node's scale)
    elements: int = 0  # elements above the bound (beyond rounding), summed over runs
    beyond_bits: int = 0  # of which outside the promised bit width


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
        self.offenders: dict[int, Offender] = {}

    def run(self, inputs: dict[str, torch.Tensor], check: bool = False) -> tuple[list[torch.Tensor], int]:
        """Returns (output integers, number of elements that left their promised bit width). What
        broke — and values above their bound that still fit — is kept, across runs, in
        ``self.offenders``."""
        self.backend.inputs = inputs
        before = self.beyond_bits
        outs = interpret(self.plan.program, self.backend, self._check if check else None)
        return outs, self.beyond_bits - before

    @property
    def beyond_bits(self) -> int:
        return sum(o.beyond_bits for o in self.offenders.values())

    @property
    def above_bound(self) -> int:
        return sum(o.elements for o in self.offenders.values())

    def _check(self, node, v: torch.Tensor) -> None:
        """Two promises per value: its bit width (leaving it risks a wrap: a hard violation; a 64-bit
        promise in Z_2^64 cannot be broken) and its bound itself, beyond fixed-point rounding
        (BOUND_SLACK_REL of the bound plus BOUND_SLACK_UNITS units of 2^-frac_bits; a bound below the
        rounding floor counts as the floor) — a calibrated-range assumption can be exceeded well
        before a bit is."""
        bound, bits, f = self.plan.bounds[node.id], self.plan.bound_bits(node), self.plan.frac_bits
        promised = max(bound.value, 2.0 ** (ROUNDING_FLOOR_BITS - f))  # the floor needed_bits gives tiny values
        limit = (promised * (1 + BOUND_SLACK_REL) + BOUND_SLACK_UNITS * 2.0**-f) * 2.0**node.scale
        lo, hi = torch.aminmax(v) if v.numel() else (torch.zeros(()), torch.zeros(()))
        seen = max(-float(lo), float(hi))
        half = 2.0 ** (bits - 1)  # the bit width holds the integers in [-half, half): only 0 when bits < 1
        fits = bits >= 64 or (-float(lo) <= half and float(hi) < half)
        if seen <= limit and fits:
            return
        found = self.offenders.setdefault(node.id, Offender(node.id, node.op, node.origin or "", bound.value,
                                                               bound.source))
        found.elements += int(((v > limit) | (v < -limit)).sum())
        if not fits:
            found.beyond_bits += int(((v >= half) | (v < -half)).sum())
        found.seen = max(found.seen, seen / 2.0**node.scale)

    def worst_offenders(self, k: int = 5) -> list[dict]:
        """The k nodes furthest above their bound (by seen / bound), as dicts for JSON and tables."""
        ranked = sorted(self.offenders.values(), key=lambda o: -o.seen / max(o.bound, 1e-300))
        return [vars(o) for o in ranked[:k]]

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
