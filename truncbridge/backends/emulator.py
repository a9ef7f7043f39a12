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
from ..core.types import ROUNDING_FLOOR_BITS, Plan
from .extremes import derive
from .ring_backend import RingBackend
from .truncation_models import TRUNCATION_MODELS

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


class RingExecutor:
    """Runs a plan in Z_2^field_bits on ``device``.

    ``truncation``: one of ``TRUNCATION_MODELS``; all but "nearest" need a 64-bit field and draw
    their randomness from one generator seeded with ``seed``, on ``device`` where it has one (so a
    seed gives the same sequence of runs on the same kind of device; the stream goes on from run to
    run, as fresh MPC randomness would)."""

    def __init__(self, plan: Plan, device: str | torch.device = "cpu", truncation: str = "nearest", seed: int = 0):
        if truncation not in TRUNCATION_MODELS:
            raise UserError(f"unknown truncation model {truncation!r}: choose one of {', '.join(TRUNCATION_MODELS)}")
        if truncation != "nearest" and (plan.field_bits != 64 or plan.prime is not None):
            raise UserError(f"truncation model {truncation} is for the ring Z_2^64, not {plan.field_name}")
        self.plan = plan
        self.device = torch.device(device)
        generator = _generator(self.device, seed) if truncation != "nearest" else None
        self.backend = RingBackend(plan, self.device, truncation, generator)
        self.offenders: dict[int, Offender] = {}
        self._folded_checked, self._folded_minmax = False, {}
        self._promises: dict[int, tuple] = {}
        self._const_extremes = {nid: self._measure(c) for nid, c in self.backend.encoded.items()}

    def run(self, inputs: dict[str, torch.Tensor], check: bool = False) -> tuple[list[torch.Tensor], int]:
        """Returns (output integers, number of elements that left their promised bit width). What
        broke — and values above their bound that still fit — is kept, across runs, in
        ``self.offenders``. Folded values (weights, once per executor) are checked on the first
        checked run."""
        self.backend.inputs = inputs
        before = self.beyond_bits
        self._minmax: dict[int, tuple] = dict(self._folded_minmax)  # node id -> (lo, hi) enclosing its integers
        if check and not self._folded_checked:
            nodes = self.plan.program.nodes
            for nid, value in self.backend.precomputed.items():
                if value is not None:
                    self._check(nodes[nid], value)
            self._folded_checked, self._folded_minmax = True, dict(self._minmax)
        outs = interpret(self.plan.program, self.backend, self._check if check else None,
                         precomputed=self.backend.precomputed, order=self.backend.schedule)
        return outs, self.beyond_bits - before

    @property
    def beyond_bits(self) -> int:
        return sum(o.beyond_bits for o in self.offenders.values())

    @property
    def above_bound(self) -> int:
        return sum(o.elements for o in self.offenders.values())

    def _check(self, node, v) -> None:
        """Two promises per value: its bit width (leaving it risks a wrap: a hard violation; a
        field-wide promise cannot be broken) and its bound itself, beyond fixed-point rounding
        (BOUND_SLACK_REL of the bound plus BOUND_SLACK_UNITS units of 2^-frac_bits; a bound below
        the rounding floor counts as the floor) — a calibrated-range assumption can be exceeded
        well before a bit is. Extremes derived from the inputs' (``extremes``) settle most nodes
        without a pass over the data; the rest are measured."""
        limit, half, bits = self._promises.get(node.id) or self._promise(node)
        derived = derive(node, [self._minmax.get(i) for i in node.inputs], self.plan.field_bits,
                         self._const_extremes.get(node.id), self.backend.truncation == "nearest")
        offset = self.backend.offsets.get(node.id, 0)  # a product that carries its truncation's offset
        for candidate in ([derived] if derived is not None else []) + [None]:
            lo, hi = candidate if candidate is not None else [e - offset for e in self._measure(v)]
            self._minmax[node.id] = (lo, hi)
            seen = max(-lo, hi)
            fits = half is None or (-lo <= half and hi < half)
            if seen <= limit and fits:
                return
        v = v - offset if offset else v
        bound = self.plan.bounds[node.id]
        found = self.offenders.setdefault(node.id, Offender(node.id, node.op, node.origin or "", bound.value,
                                                               bound.source))
        real = self.backend.field.to_float(v)
        found.elements += int(((real > limit) | (real < -limit)).sum())
        if not fits:
            found.beyond_bits += self.backend.field.outside_bits(v, bits)
        found.seen = max(found.seen, seen / 2.0**node.scale)

    def _promise(self, node) -> tuple[float, float | None, int]:
        """(limit on |integer|, half of the bit width's range or None where the width is the
        field's, bits) of a node: the same every run, so computed once."""
        bound, bits, f = self.plan.bounds[node.id], self.plan.bound_bits(node), self.plan.frac_bits
        promised = max(bound.value, 2.0 ** (ROUNDING_FLOOR_BITS - f))  # the floor needed_bits gives tiny values
        limit = (promised * (1 + BOUND_SLACK_REL) + BOUND_SLACK_UNITS * 2.0**-f) * 2.0**node.scale
        half = None if bits >= self.plan.field_bits else 2.0 ** (bits - 1)  # [-half, half): 0 when bits < 1
        self._promises[node.id] = (limit, half, bits)
        return self._promises[node.id]

    def _measure(self, v) -> tuple[int | float, int | float]:
        """The value's (min, max) integers: exact Python ints from int64 tensors."""
        if not v.numel():
            return 0, 0
        if isinstance(v, torch.Tensor):
            lo, hi = torch.aminmax(v)
            return (int(lo), int(hi)) if v.dtype == torch.int64 else (float(lo), float(hi))
        return self.backend.field.extremes(v)

    def worst_offenders(self, k: int = 5) -> list[dict]:
        """The k nodes furthest above their bound (by seen / bound), as dicts for JSON and tables."""
        ranked = sorted(self.offenders.values(), key=lambda o: -o.seen / max(o.bound, 1e-300))
        return [vars(o) for o in ranked[:k]]

    def decode_outputs(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        nodes = self.plan.program.nodes
        return [self.backend.field.decode(v, nodes[o].scale).cpu() for v, o in zip(outs, self.plan.program.outputs)]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device``, or on the CPU where the device has none."""
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(seed)
