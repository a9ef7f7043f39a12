"""What the optimal placement minimises (``PlanConfig.objective``).

``elements``  truncated elements: the bytes of the truncations' openings (TruncFormer's count).
a network     ``lan``, ``mid``, ``wan`` or ``rtt=MS,bw=MBIT``: the online time the plan costs on
              it, in units of one truncated element's transfer time: the truncated elements, plus
              R per round on the critical path, R = round trip / (wire bits per truncated element
              / bandwidth). A truncation costs its round on every path through it; a product
              (``mul``, ``matmul``) and a comparison their rounds, except where the protocol's
              truncation carries products (``core.fusion``): an elementwise product that rides on
              a truncation placed on one of its inputs' sides is done in that truncation's round,
              provided its other input was there a round before.

``Objective.rounds`` counts them as the cost model does (``core.fusion.ride_schedule``), on the
source program for a set of truncated nodes: the local search (``search.py``) uses it. The
MILP (``milp_model.py``) states a linear model of the same rounds. It never counts more than the
cost model — every ride it refuses, the cost model refuses too (at most two opened operands per
term, both inputs hanging off one truncation only if each one's first truncated site is that one)
— so its proven bound holds for the real cost; it can count fewer, as it does not see the limit on
powers of S (``core.fusion.MAX_DEGREE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.fusion import opened_sides, ride_schedule, ride_sites, shared_chains, shared_sites
from ..core.ir import Program
from ..core.ops import spec
from ..core.protocols import load_network, load_protocol, network_seconds
from ..core.types import PlanConfig

ELEMENTS = "elements"


@dataclass(frozen=True)
class Objective:
    round_elements: float = 0.0  # one round's cost in truncated elements (0: elements alone)
    rides: dict = field(default_factory=dict)  # mul id -> per input side: (sites, riding products) (core.fusion)
    op_rounds: dict = field(default_factory=dict)  # node id -> rounds its own op costs (products, comparisons)
    truncation_rounds: float = 1.0
    shared: dict = field(default_factory=dict)  # mul id -> sites both its inputs could hang off (core.fusion)
    opened: dict = field(default_factory=dict)  # mul id -> per side: riding on it opens the other input (core.fusion)
    shared_chains: dict = field(default_factory=dict)  # mul id in shared -> its inputs' chains (core.fusion)

    @property
    def counts_rounds(self) -> bool:
        return self.round_elements > 0

    def cost(self, program: Program, truncated: set[int]) -> float:
        elements = sum(program[i].numel for i in truncated)
        if not self.counts_rounds:
            return float(elements)
        return elements + self.round_elements * self.rounds(program, truncated)

    def rounds(self, program: Program, truncated: set[int]) -> float:
        """Rounds on the critical path of the placement that truncates ``truncated``: the cost
        model's count (``core.fusion.ride_schedule``), on the source program."""
        at = ride_schedule(program, truncated, lambda v: self.op_rounds.get(v.id, 0.0), self.truncation_rounds,
                           fuse=bool(self.rides))[1]
        return max(at.values(), default=0.0)


TRUNCATED_ELEMENTS = Objective()


def objective_for(program: Program, config: PlanConfig) -> Objective:
    if config.objective == ELEMENTS:
        return TRUNCATED_ELEMENTS
    protocol, network = load_protocol(config.protocol), load_network(config.objective)
    l = config.wire_bits
    element_s = network_seconds(network, 0, protocol.bits("truncation", l) / 8)
    if element_s == 0:  # a local truncation (CrypTen's 2PC): free online, so elements are all there is to count
        return TRUNCATED_ELEMENTS
    op_rounds = {v.id: protocol.rounds(spec(v).cost, l) for v in program.nodes if spec(v).cost in ("mul", "comparison")}
    rides = ride_sites(program) if protocol.fuses_products else {}
    shared = shared_sites(program, rides)
    return Objective(network_seconds(network, 1, 0) / element_s, rides, op_rounds, protocol.rounds("truncation", l),
                     shared, opened_sides(program, rides), shared_chains(program, rides, shared))
