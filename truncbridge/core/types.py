"""The data every stage hands on: a value's bound, the plan's configuration, and the plan.

A ``Plan`` is a ``Program`` whose nodes carry fixed-point scales, with ``trunc`` / ``shl`` nodes
inserted (``analysis.placement``), one ``Bound`` per node, and the ``PlanConfig`` it was made
under. Plan files (``planfile``) store exactly these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import UserError
from .fields import check_prime, check_ring_bits, field_name, prime_capacity_bits
from .ir import Node, Program
from .ops import spec
from .protocols import load_network

ROUNDING_FLOOR_BITS = 8  # no real bound is below 2^8 LSBs of frac_bits: tiny values carry rounding error
POLICIES = ("eager", "lazy", "optimal")
BOUNDS_MODES = ("static", "calibrated")
OPTIMAL_TIME_LIMIT_S = 120.0
PRECISION_TOLERANCE_BITS = 2  # lazy, optimal: bits below eager's scale a value may go (docs/placement.md, "Precision floor")


@dataclass(frozen=True)
class Bound:
    value: float  # |x| <= value for every element
    source: str  # weight | input | rule | recipe | range | calibrated | redacted

    def bits(self) -> int:
        """Smallest m with |x| < 2^m."""
        return math.floor(math.log2(self.value)) + 1 if self.value > 0 else -1074


def needed_bits(bound: Bound, scale: int, frac_bits: int) -> int:
    """Integer bits (sign included) of a value with this bound at this scale."""
    return max(bound.bits(), ROUNDING_FLOOR_BITS - frac_bits) + scale + 1


@dataclass(frozen=True)
class PlanConfig:
    """Everything a plan is made under, besides the model: one value instead of loose arguments."""

    field_bits: int = 64
    frac_bits: int = 16
    policy: str = "eager"
    protocol: str = "faithful-2pc"  # a profile in protocols/: its truncation and headroom
    headroom_bits: int = 0  # statistical headroom the protocol needs: the budget is field - headroom
    bounds: str = "static"  # static analysis, or calibrated maxima
    margin_bits: int | None = None  # calibrated bounds: safety margin (None with static bounds)
    time_limit_s: float = OPTIMAL_TIME_LIMIT_S  # optimal: the MILP's time limit
    prime: int | None = None  # a prime field F_p (field_bits is then its capacity, ``core.fields``)
    objective: str = "elements"  # optimal: truncated elements, or a network's time (``analysis.objective``)
    precision_tolerance_bits: int | None = PRECISION_TOLERANCE_BITS  # lazy, optimal: no value below eager's
    # scale less this many bits (None: no floor)

    def validate(self) -> PlanConfig:
        """The config, if a plan can be made under it (one clear error otherwise)."""
        if self.policy not in POLICIES:
            raise UserError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.bounds not in BOUNDS_MODES:
            raise UserError(f"unknown bounds mode {self.bounds!r}: choose static or calibrated")
        if self.headroom_bits < 0:
            raise UserError(f"--headroom must be >= 0 bits, got {self.headroom_bits}")
        if self.precision_tolerance_bits is not None and self.precision_tolerance_bits < 0:
            raise UserError(f"--precision-tolerance must be >= 0 bits or off, got {self.precision_tolerance_bits}")
        if self.margin_bits is not None and self.margin_bits < 0:
            raise UserError(f"calibration margin must be >= 0 bits, got {self.margin_bits}")
        if self.objective != "elements":
            try:
                load_network(self.objective)
            except UserError:
                raise UserError(f"unknown objective {self.objective!r}: choose elements, lan, mid, wan or "
                                "rtt=MS,bw=MBIT") from None
        if self.prime is not None:
            check_prime(self.prime)
            if self.field_bits != prime_capacity_bits(self.prime):
                raise UserError(f"F_p with p = {self.prime} holds {prime_capacity_bits(self.prime)}-bit values, "
                                f"not {self.field_bits}")
        else:
            check_ring_bits(self.field_bits)
        if not 0 < self.frac_bits < self.field_bits:
            raise UserError(f"frac bits must be between 1 and field bits - 1 "
                            f"(got {self.frac_bits} with a {self.field_bits}-bit field)")
        if self.budget_bits <= self.frac_bits + 1:
            raise UserError(f"a {self.field_bits}-bit field with {self.headroom_bits} bits of headroom leaves no "
                            f"room for {self.frac_bits} fraction bits")
        return self

    @property
    def budget_bits(self) -> int:
        """Integer bits (sign included) a value may use."""
        return self.field_bits - self.headroom_bits

    @property
    def wire_bits(self) -> int:
        """Bits of one element on the wire: the ring's, or the prime's bit length."""
        return self.field_bits if self.prime is None else self.prime.bit_length()

    @property
    def field_name(self) -> str:
        return field_name(self.field_bits, self.prime)


@dataclass
class Plan:
    program: Program  # nodes carry .scale; trunc / shl inserted
    config: PlanConfig
    bounds: dict[int, Bound] = field(default_factory=dict)  # plan node id -> bound of its real value
    solver: dict = field(default_factory=dict)  # optimal: status, objective, wall time
    sites: list[int] = field(default_factory=list)  # source (IR) nodes whose value is truncated
    source_of: dict[int, int] = field(default_factory=dict)  # plan node id -> source node id (not kept in files)
    model: dict = field(default_factory=dict)  # identity of the model it was made for (planfile)
    weights: list[str] = field(default_factory=list)  # names of the weights it reads
    redacted: bool = False  # the version for parties other than the owner: bounds are stand-ins

    field_bits = property(lambda self: self.config.field_bits)
    frac_bits = property(lambda self: self.config.frac_bits)
    policy = property(lambda self: self.config.policy)
    budget_bits = property(lambda self: self.config.budget_bits)
    wire_bits = property(lambda self: self.config.wire_bits)
    protocol = property(lambda self: self.config.protocol)
    prime = property(lambda self: self.config.prime)
    field_name = property(lambda self: self.config.field_name)

    def bound_bits(self, node: Node) -> int:
        """Promised bits of the node's ring integer, sign included."""
        return needed_bits(self.bounds[node.id], node.scale, self.frac_bits)

    def counts(self) -> dict[str, int]:
        nodes = self.program.nodes
        counted = {bucket: sum(spec(n).count == bucket for n in nodes) for bucket in ("mul_private", "mul_public")}
        truncs = [n for n in nodes if spec(n).count == "truncations"]
        compares = [n for n in nodes if spec(n).count == "comparisons"]
        return {**counted, "truncations": len(truncs), "truncated_elements": sum(n.numel for n in truncs),
                "comparisons": len(compares), "compared_elements": sum(n.numel for n in compares)}

    def private_mul_elements(self) -> int:
        """Scalar private products: elementwise outputs, and out-elements x inner size for matmuls."""
        return sum(spec(n).scalar_products(n, self.program) for n in self.program.nodes if spec(n).kind == "product")
