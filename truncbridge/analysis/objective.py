"""What the optimal placement minimises (``PlanConfig.objective``).

``elements``  truncated elements: the bytes of the truncations' openings (TruncFormer's count).
a network     ``lan``, ``mid``, ``wan`` or ``rtt=MS,bw=MBIT``: the online time the plan's
              truncations and products cost on it, in units of one truncated element's transfer
              time. A truncation site costs its elements plus one round, R = round trip /
              (wire bits per truncated element / bandwidth). Where the protocol's truncation
              carries products (``core.fusion``), an elementwise product costs a round of its own
              unless a truncation it can ride on is placed: such sites earn R back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.fusion import ride_sites
from ..core.ir import Program
from ..core.protocols import load_network, load_protocol, network_seconds
from ..core.types import PlanConfig

ELEMENTS = "elements"


@dataclass(frozen=True)
class Objective:
    round_elements: float = 0.0  # one round's cost in truncated elements (0: elements alone)
    rides: dict = field(default_factory=dict)  # mul id -> (sites, riding products) that let it ride (core.fusion)

    def site_weight(self, numel: int) -> float:
        return numel + self.round_elements


TRUNCATED_ELEMENTS = Objective()


def objective_for(program: Program, config: PlanConfig) -> Objective:
    if config.objective == ELEMENTS:
        return TRUNCATED_ELEMENTS
    protocol, network = load_protocol(config.protocol), load_network(config.objective)
    element_s = network_seconds(network, 0, protocol.bits("truncation", config.wire_bits) / 8)
    round_s = network_seconds(network, protocol.rounds("truncation", config.wire_bits), 0)
    if element_s == 0:  # a local truncation (CrypTen's 2PC): free online, so elements are all there is to count
        return TRUNCATED_ELEMENTS
    return Objective(round_s / element_s, ride_sites(program) if protocol.fuses_products else {})
