"""Which openings travel together (core.waves): the rules on small programs, and on the default
model the number of messages equals the cost model's critical path."""
from __future__ import annotations

import pytest
import torch

from truncbridge.backends.reference import RealBackend
from truncbridge.core.fusion import carried
from truncbridge.core.interpret import interpret, interpret_waves
from truncbridge.core.ir import Builder
from truncbridge.core.ops import spec
from truncbridge.core.waves import LOCAL, OPENS, STEPS, input_independent, messages, order, waves, weight_side


def how(node) -> str:  # as the exact protocol runs them: products and truncations open
    kind = spec(node).kind
    return OPENS if kind in ("product", "truncate") else STEPS if kind == "compare" else LOCAL


def trunc(b: Builder, x: int) -> int:
    return b.emit("trunc", (x,), b.shape(x), shift=16, rounding="nearest")


def transpose(b: Builder, x: int) -> int:
    return b.move("aten.transpose.int", [x], ["$0", 0, 1])


def wave_of(schedule, node_id: int) -> int:
    return next(w for w, wave in enumerate(schedule) for n in (*wave.opened, *wave.steps, *wave.local) if n.id == node_id)


def test_projections_of_one_input_open_together():
    """q, k, v = x·Wq, x·Wk, x·Wv: one message, then their three truncations in the next; the
    attention product q·kᵀ after both. A chain of the same products would take one round each."""
    b = Builder()
    x = b.input("x", (4, 8))
    q, k, v = (trunc(b, b.matmul(x, b.weight(name, torch.eye(8, dtype=torch.float64)))) for name in "qkv")
    kt = transpose(b, k)
    scores = trunc(b, b.matmul(q, kt))
    out = b.output(trunc(b, b.matmul(scores, v)))
    schedule = waves(b.program, how)
    assert [len(w.opened) for w in schedule] == [0, 3, 3, 1, 1, 1, 1]
    assert messages(schedule) == 6 and wave_of(schedule, out) == 6
    assert sorted(n.id for n in order(schedule)) == [n.id for n in b.program.nodes]  # every node once
    ids = [n.id for n in order(schedule)]
    assert all(ids.index(i) < ids.index(n.id) for n in b.program.nodes for i in n.inputs)  # inputs first


def test_a_product_rides_only_where_its_operand_holds_nothing_up():
    """y·u could ride on y's truncation, whose message would open u − b. Where u is made late
    (three rounds deep) that would hold y's truncation up to round 7: y·u opens on its own in
    round 7 instead, and y is done in round 2. Where u exists before y's truncation opens, y·u
    rides and the truncation waits for nothing."""
    b = Builder()
    x = b.input("x", (4, 8))
    u = x
    for _ in range(3):
        u = trunc(b, b.mul(u, u))
    y = trunc(b, b.mul(x, x))  # after u in program order, depth 2
    yu = b.mul(y, u)
    b.output(yu)
    fused = carried(b.program)
    assert y not in fused
    schedule = waves(b.program, how, {t: c.others for t, c in fused.items()})
    assert wave_of(schedule, y) == 2 and wave_of(schedule, yu) == wave_of(schedule, u) + 1 == 7

    b = Builder()
    x = b.input("x", (4, 8))
    u = trunc(b, b.mul(x, x))  # round 2
    y = trunc(b, b.mul(trunc(b, b.mul(x, x)), x))  # round 4
    yu = b.mul(y, u)
    b.output(yu)
    fused = carried(b.program)
    assert fused[y].others == [u] and fused[y].products == [yu]
    schedule = waves(b.program, how, {t: c.others for t, c in fused.items()})
    assert wave_of(schedule, y) == 4  # no wait


def test_weights_and_their_local_maps_are_input_independent():
    b = Builder()
    x = b.input("x", (4, 8))
    w = b.weight("w", torch.eye(8, dtype=torch.float64))
    wt = transpose(b, w)
    xw, wx, xx = b.matmul(x, wt), b.matmul(wt, transpose(b, x)), b.mul(x, x)
    static = input_independent(b.program)
    assert w in static and wt in static and x not in static and xw not in static
    assert weight_side(b.program[xw], static) == 1 and weight_side(b.program[wx], static) == 0
    assert weight_side(b.program[xx], static) is None


@pytest.mark.slow  # the whole default model
def test_messages_on_the_default_model_equal_the_cost_models_critical_path(default_converted):
    from truncbridge.analysis.cost import plan_costs
    from truncbridge.core.protocols import load_network, load_protocol
    from truncbridge.pipeline import build_plan, plan_config

    plan = build_plan(default_converted, plan_config("lazy", protocol="crypten-exact-3pc"))
    fused = carried(plan.program)
    riding = {p for c in fused.values() for p in c.products}
    schedule = waves(plan.program, lambda n: LOCAL if n.id in riding else how(n), {t: c.others for t, c in fused.items()})
    costs = plan_costs(plan, load_protocol("crypten-exact-3pc"), load_network("mid"))
    assert messages(schedule) == costs.rounds < costs.rounds_sequential


class RecordingBackend(RealBackend):
    """The float backend as a ``WaveBackend``: opening is the identity, and every hook call is
    recorded, so the walk's order can be checked against the schedule."""

    def __init__(self, program, inputs):
        super().__init__(program, inputs)
        self.calls: list = []

    def local(self, node, op, xs):
        self.calls.append(("local", node.id))
        return super().local(node, op, xs)

    def open(self, node, op, xs):
        self.calls.append(("open", node.id))
        return node, op, xs

    def exchange(self, steps):
        self.calls.append(("exchange", tuple(node.id for node, _, _ in steps)))

    def finish(self, node, op, step):
        self.calls.append(("finish", node.id))
        return self.product(*step)


def test_the_wave_walk_opens_each_wave_in_one_exchange():
    """``interpret_waves`` computes what ``interpret`` does; per wave it opens exactly the wave's
    products (open each, one exchange, finish each), runs no precomputed node again and shows
    every value to ``visit`` once."""
    b = Builder()
    x = b.input("x", (4, 8))
    weight = torch.linspace(-1, 1, 64, dtype=torch.float64).view(8, 8)
    w = b.weight("w", weight)
    wt = transpose(b, w)  # input-independent: precomputed
    q, k = b.matmul(x, wt), b.matmul(x, w)
    qk = b.mul(b.add_public(q, 0.5), k)
    b.output(qk)
    program, inputs = b.program, {"x": torch.linspace(-2, 2, 32, dtype=torch.float64).view(4, 8)}
    schedule = waves(program, lambda n: OPENS if spec(n).kind == "product" else LOCAL)
    backend, seen = RecordingBackend(program, inputs), []
    got = interpret_waves(program, backend, schedule, visit=lambda n, v: seen.append(n.id),
                          precomputed={w: weight, wt: weight.T})
    assert torch.equal(got[0], interpret(program, RealBackend(program, inputs))[0])
    exchanges = [c[1] for c in backend.calls if c[0] == "exchange"]
    assert exchanges == [(), (q, k), (qk,)][:len(schedule)] and len(schedule) == 3  # one per wave
    first = backend.calls.index(("exchange", (q, k)))
    assert backend.calls[first - 2:first + 3] == [("open", q), ("open", k), ("exchange", (q, k)), ("finish", q), ("finish", k)]
    assert ("local", wt) not in backend.calls  # precomputed: not run again
    assert sorted(seen) == [n.id for n in program.nodes]  # every value once, the precomputed ones too
