"""Which products ride on a truncation's opening (core.fusion), and what the cost model charges
them: the rules on small programs, and the rounds they save on the default model."""
from __future__ import annotations

import torch

from truncbridge.core.fusion import MAX_DEGREE, carried, carried_products
from truncbridge.core.ir import Builder


def trunc(b: Builder, x: int) -> int:
    return b.emit("trunc", (x,), b.shape(x), shift=16, rounding="nearest")


def test_newton_steps_ride_on_the_previous_truncation():
    """y <- y (2 - u y), truncated once per step: both products of a step ride on the truncation
    of the previous y, with u (computed before it) opened in the same message."""
    b = Builder()
    u = b.input("u", (4, 8))
    y = trunc(b, b.mul(u, u))
    steps = []
    for _ in range(3):
        uy = b.mul(u, y)
        steps.append(b.mul(y, b.add_public(b.neg(uy), 2.0)))
        y = trunc(b, steps[-1])
    got = carried(b.program)
    assert carried_products(b.program) == {p for step in steps for p in (step, step - 3)}
    for c in got.values():
        assert c.others == [u] and c.degree == 2 and c.other_degrees == [2]  # y·(2 − u·y): y² u


def test_what_does_not_ride():
    """A matrix product; a product whose other operand is made after the truncation; a term of
    three opened operands (two ride: the dealer deals b·b'); powers of S beyond MAX_DEGREE."""
    b = Builder()
    x = b.input("x", (4, 4))
    w = b.weight("w", torch.eye(4, dtype=torch.float64))
    y = trunc(b, b.mul(x, x))
    mm = b.matmul(y, w)  # matrix product: never
    later = b.add_public(b.mul(x, x), 1.0)  # made after the truncation
    late = b.mul(y, later)
    yx = b.mul(y, x)  # rides: x was there before
    yxx = b.mul(yx, x)  # x·x·y: two opened operands in one term
    yxxx = b.mul(yxx, x)  # three
    z = b.input("z", (4, 4))  # made after the truncation
    yz = b.mul(yx, z)
    power = y
    for _ in range(MAX_DEGREE + 1):
        power = b.mul(power, y)
    riding = carried_products(b.program)
    assert mm not in riding and late not in riding and yz not in riding
    assert yx in riding and yxx in riding and yxxx not in riding
    assert carried(b.program)[y].pairs == [[0, 0, 1]]  # x·x·S: b_x² up to S^1
    powers = [n.id for n in b.program.nodes if n.op == "mul" and n.id > yz]
    assert [p in riding for p in powers] == [True] * (MAX_DEGREE - 1) + [False, False]


def test_carried_products_cost_no_round_on_the_default_model(default_converted):
    """On the default model's plans the cost model charges carried products nothing: fusing
    removes rounds and bytes, never adds them; every carried product is an elementwise mul."""
    from truncbridge.analysis.cost import plan_costs
    from truncbridge.core.protocols import load_network, load_protocol
    from truncbridge.pipeline import build_plan, plan_config

    protocol = load_protocol("crypten-exact-3pc")
    for policy in ("eager", "lazy"):
        plan = build_plan(default_converted, plan_config(policy, protocol="crypten-exact-3pc"))
        fused, plain = (plan_costs(plan, protocol, load_network("lan"), fuse=f) for f in (True, False))
        assert fused.rounds_sequential == plain.rounds_sequential - fused.fused_products
        assert fused.rounds < plain.rounds and fused.bytes < plain.bytes
        assert all(plan.program[p].op == "mul" for p in carried_products(plan.program))
