"""Turn a plan into protocol costs: rounds on the critical path, bytes, latency, and the expected
number of truncation failures of a probabilistic truncation protocol."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from ..core.fusion import carried
from ..core.ops import spec
from ..core.protocols import Protocol, network_seconds
from ..core.types import Plan
from ..core.waves import input_independent, weight_side


def layer_of(origin: str) -> str:
    """"model.layers.3.mlp.act_fn:sigmoid_3" -> "model.layers.3"; "model.norm:mul" -> "model.norm";
    "lm_head:mm" -> "lm_head"; inputs and weights (no module) -> "(inputs)"."""
    if ":" not in origin:
        return "(inputs)"
    parts = origin.split(":")[0].split(".")
    if len(parts) >= 3 and parts[1] in ("layers", "h", "layer", "blocks"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def opened_elements(plan: Plan, node) -> int:
    """Elements a Beaver multiplication opens: each distinct operand once (a square opens one)."""
    return sum(plan.program[i].numel for i in dict.fromkeys(node.inputs))


@dataclass(frozen=True)
class RecipeCost:
    """One use of a recipe (a softmax, the GELU of layer 3, ...): the parameters it recorded on the
    plan (the range it was fitted on, its method, degree or steps, its error bound) and its costs:
    ``rounds`` along its own longest chain (inputs from outside count as ready), bytes per party,
    truncated elements, comparisons."""

    recipe: str
    origin: str  # the module (and op) of its first node
    params: dict
    rounds: float
    bytes: float
    truncated_elements: int
    compared_elements: int

    def seconds(self, network: dict) -> float:
        return network_seconds(network, self.rounds, self.bytes)


@dataclass(frozen=True)
class PlanCosts:
    """A plan's costs under one protocol profile and network (``plan_costs``); ``to_json`` keeps
    the keys report's --json has always written."""

    protocol: str
    fused_products: int  # products carried by a truncation's opening
    fused_pairs: int
    rounds: float  # critical path
    rounds_sequential: float  # one operation at a time
    bytes: float  # per party, online
    weights_bytes: float  # weights' halves opened before the online phase (``weights_apart``)
    latency_s: float
    expected_truncation_failures: float
    by_layer: dict[str, dict[str, float]]
    by_recipe: dict[str, dict[str, float]]
    recipes: list[RecipeCost]  # each recipe the lowering emitted, where it sits and what it costs

    def most_expensive_recipes(self, network: dict, count: int = 10) -> list[RecipeCost]:
        """The ``count`` recipes whose own rounds and bytes take longest on ``network``."""
        return sorted(self.recipes, key=lambda r: -r.seconds(network))[:count]

    def to_json(self) -> dict:
        return asdict(self)


def plan_costs(plan: Plan, protocol: Protocol, network: dict, fuse: bool = True, weights_apart: bool = False) -> PlanCosts:
    """Products ride on truncations' openings (``core.fusion``) where the protocol's truncation
    can carry them, unless ``fuse`` is False (as with ``run_pi.py --no-fuse``). With
    ``weights_apart`` a product of a weight opens the weight's half before the online phase
    (``core.waves.weight_side``, as run_pi's batched runs do): its bytes are ``weights_bytes``."""
    protocol.check_ring(plan.field_bits, plan.prime)
    fused = carried(plan.program) if fuse and protocol.fuses_products else {}
    riding = {p for c in fused.values() for p in c.products}
    l = plan.wire_bits
    nodes = plan.program.nodes
    mul_r, mul_b = protocol.rounds("mul", l), protocol.bits("mul", l)
    tr_r, tr_b = protocol.rounds("truncation", l), protocol.bits("truncation", l)
    cmp_r, cmp_b = protocol.rounds("comparison", l), protocol.bits("comparison", l)
    static = input_independent(plan.program) if weights_apart else set()
    depth: dict[int, float] = {}
    came_from: dict[int, int | None] = {}  # the input whose depth a node's depth extends
    rounds_sequential = bits_total = failures = weights_bits = 0.0  # sequential: one operation at a time
    by_layer: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    by_recipe: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    own: dict[int, tuple[float, float]] = {}  # node -> (its rounds, its bits)
    for n in nodes:
        op, layer = spec(n), by_layer[layer_of(n.origin)]
        rounds, bits = 0.0, 0.0
        if op.count is not None:
            layer[op.count] += 1
        if n.id in riding:  # carried by a truncation's opening: no round, no bytes of its own
            layer["private_products"] += op.scalar_products(n, plan.program)
        elif op.cost == "mul":
            rounds, bits = mul_r, opened_elements(plan, n) * mul_b
            side = weight_side(n, static)  # the weight's half is opened before the online phase: the owner
            weight = 0 if side is None else plan.program[n.inputs[side]].numel  # sends it to every other party
            # (CrypTen counts a broadcast's sender (parties - 1) elements an element: the most any party sends)
            weights_bits, bits = weights_bits + weight * (protocol.parties - 1) * l, bits - weight * mul_b
            layer["private_products"] += op.scalar_products(n, plan.program)
        elif op.cost == "comparison":
            rounds, bits = cmp_r, n.numel * cmp_b
            layer["compared_elements"] += n.numel
        elif op.cost == "truncation":
            rounds, bits = tr_r, n.numel * tr_b
            if n.id in fused:  # the operands of the products it carries travel in its message
                bits += sum(plan.program[z].numel for z in fused[n.id].others) * mul_b
            failures += _book_truncation(plan, protocol, n, layer, by_recipe[n.recipe or "(linear)"])
        waits = fused[n.id].others if n.id in fused else ()  # its message opens them: they come first
        came_from[n.id] = max((*n.inputs, *waits), key=depth.__getitem__, default=None)
        depth[n.id] = rounds + (depth[came_from[n.id]] if came_from[n.id] is not None else 0.0)
        rounds_sequential += rounds
        own[n.id] = (rounds, bits)
        bits_total += bits
        layer["bytes"] += bits / 8
        by_recipe[n.recipe or "(linear)"]["bytes"] += bits / 8
    rounds_total = max(depth.values(), default=0.0)
    _book_critical_path(plan, depth, came_from, by_recipe)
    bytes_total = bits_total / 8
    latency = network_seconds(network, rounds_total, bytes_total)
    return PlanCosts(protocol=protocol.name, fused_products=len(riding),
                     fused_pairs=sum(len(c.pairs) for c in fused.values()), rounds=rounds_total,
                     rounds_sequential=rounds_sequential, bytes=bytes_total, weights_bytes=weights_bits / 8,
                     latency_s=latency, expected_truncation_failures=failures,
                     by_layer={k: dict(v) for k, v in by_layer.items()},
                     by_recipe={k: dict(v) for k, v in by_recipe.items()}, recipes=recipe_costs(plan, own))


def local_compute(plan: Plan, protocol: Protocol, calibration: dict, fuse: bool = True, batch: bool = True) -> dict:
    """The local-compute term of the plan's online pass on CrypTen's backend (``analysis.compute``,
    ``core.protocols.load_compute``) with ``protocol``'s parties, its truncation exact unless the profile's
    is probabilistic (CrypTen's own division then): ``local_s``, ``by_kind``, ``uncalibrated``."""
    from .compute import plan_local_seconds

    exact = not protocol.truncation_kind.startswith("probabilistic")
    return plan_local_seconds(plan, calibration, fuse and protocol.fuses_products, batch, exact, protocol.parties)


def recipe_instances(plan: Plan) -> dict[int, int]:
    """Node -> the first node of the recipe use that emitted it. A use starts at the node carrying
    its ``recipe_params``; the nodes after it with the same recipe name are its own, until the next
    use of that name starts (a recipe nested in another — softmax's reciprocals — has its own name)."""
    current: dict[str, int] = {}
    out: dict[int, int] = {}
    for n in plan.program.nodes:
        if not n.recipe:
            continue
        if n.facts.recipe_params is not None or n.recipe not in current:
            current[n.recipe] = n.id
        out[n.id] = current[n.recipe]
    return out


def recipe_costs(plan: Plan, own: dict[int, tuple[float, float]]) -> list[RecipeCost]:
    """Each recipe use's costs from its nodes' own rounds and bits (``plan_costs``)."""
    instance = recipe_instances(plan)
    chain: dict[int, float] = {}  # rounds along the use's longest chain up to the node
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0])  # rounds, bits, truncated, compared
    for n in plan.program.nodes:
        if n.id not in instance:
            continue
        first, (rounds, bits) = instance[n.id], own[n.id]
        chain[n.id] = rounds + max((chain[i] for i in n.inputs if instance.get(i) == first), default=0.0)
        t = totals[first]
        t[0], t[1] = max(t[0], chain[n.id]), t[1] + bits
        t[2] += n.numel if spec(n).cost == "truncation" else 0
        t[3] += n.numel if spec(n).cost == "comparison" else 0
    return [RecipeCost(plan.program[first].recipe, plan.program[first].origin,
                       dict(plan.program[first].facts.recipe_params or {}), rounds, bits / 8, int(truncated), int(compared))
            for first, (rounds, bits, truncated, compared) in totals.items()]


def _book_critical_path(plan: Plan, depth: dict, came_from: dict, by_recipe: dict) -> None:
    """Each recipe's share of the rounds on the critical path (``critical_rounds``): what a
    cheaper recipe would save end to end."""
    node = max(depth, key=depth.__getitem__, default=None)
    while node is not None:
        before = came_from[node]
        own = depth[node] - (depth[before] if before is not None else 0.0)
        if own:
            by_recipe[plan.program[node].recipe or "(linear)"]["critical_rounds"] += own
        node = before


def _book_truncation(plan: Plan, protocol: Protocol, n, layer: dict, recipe: dict) -> float:
    """Count a truncation in its layer and recipe; its expected failures."""
    p_fail = protocol.failure_probability(plan.bound_bits(plan.program[n.inputs[0]]), plan.wire_bits)
    layer["truncated_elements"] += n.numel
    recipe["truncations"] += 1
    recipe["truncated_elements"] += n.numel
    recipe["expected_failures"] += n.numel * p_fail
    return n.numel * p_fail


FAILURE_TEXT = {"abs_over_ring": "|x|/2^{l}", "twice_abs_over_ring": "2^(bits + 1 - {l})"}


@dataclass(frozen=True)
class ProtocolFit:
    """Whether ``protocol`` can run a plan, whichever profile the plan was made for (``protocol_fit``)."""

    made_for: str  # the plan's profile
    costed_under: str
    headroom_bits: int  # the headroom the plan was made with
    widest_bits: int  # the widest value a truncation takes (bits, sign included)
    runnable: bool  # False: the protocol's truncation is wrong on some value the plan truncates
    short_of_headroom: bool  # a probabilistic truncation on values wider than the profile's headroom allows
    expected_failures: float  # per forward pass
    reason: str  # one line: the verdict

    @property
    def warning(self) -> str:
        """The verdict, when the plan is costed under a profile it was not made for or cannot run
        under its own ('' otherwise)."""
        return self.reason if self.made_for != self.costed_under or not self.runnable else ""

    def to_json(self) -> dict:
        return {**asdict(self), "warning": self.warning}


def protocol_fit(plan: Plan, protocol: Protocol, used: str = "costed under") -> ProtocolFit:
    """A failure-free truncation (exact, faithful) with headroom H is correct only on |x| < 2^(l - H):
    a plan with a wider truncated value cannot run. A probabilistic one runs anything but fails
    with its failure model's probability: short of headroom when the widest truncated value leaves
    fewer than H bits free. ``used``: how the protocol meets the plan, for the verdict's words."""
    protocol.check_ring(plan.field_bits, plan.prime)
    l, h, need = plan.wire_bits, plan.config.headroom_bits, protocol.headroom_bits
    truncated = [plan.program[n.inputs[0]] for n in plan.program.nodes if n.op == "trunc"]
    widest = max((plan.bound_bits(x) for x in truncated), default=0)
    failures = sum(x.numel * protocol.failure_probability(plan.bound_bits(x), l) for x in truncated)
    made = f"plan made for {plan.protocol} (headroom {h} bits); {used} {protocol.name}"
    kind = protocol.truncation_kind
    if protocol.data["truncation"]["failure"] == "none":
        runnable = widest <= l - need + 1
        reason = (f"{made}: its {kind} truncation needs |x| < 2^{l - need}, and this plan truncates values up to "
                  f"2^{widest - 1} → cannot run" if not runnable else f"{made}, which runs it (failure-free truncation)")
        return ProtocolFit(plan.protocol, protocol.name, h, widest, runnable, False, failures, reason)
    short = widest > l - need + 1
    chance = FAILURE_TEXT.get(protocol.data["truncation"]["failure"], "its failure model").format(l=l)
    reason = (f"{made}: its truncations take values up to 2^{widest - 1}; {protocol.name}'s {kind} truncation fails "
              f"with probability about {chance} per element and wants {need} bits of headroom → "
              f"{failures:.3g} expected failures per forward pass")
    return ProtocolFit(plan.protocol, protocol.name, h, widest, True, short, failures, reason)
