"""Which products ride on a truncation's opening (core.fusion), and what the cost model charges
them: the rules and the rounds and bytes they save, on small programs."""
from __future__ import annotations

import pytest
import torch

from truncbridge.core.fusion import MAX_DEGREE, carried, carried_products
from truncbridge.core.ir import Builder

from helpers import float_maxabs, newton_reciprocal


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
    assert carried(b.program)[y].pairs == [(0, 0, 1)]  # x·x·S: b_x² up to S^1
    powers = [n.id for n in b.program.nodes if n.op == "mul" and n.id > yz]
    assert [p in riding for p in powers] == [True] * (MAX_DEGREE - 1) + [False, False]


# Newton's 1/u on 32 elements (helpers.newton_reciprocal) in crypten-exact-3pc: one round per product
# and per truncation, 2l = 128 bits = 16 B per opened element, so a product (both operands opened)
# sends 1024 B, a truncation 512 B, and an operand a truncation's message carries 512 B.
HAND_COUNTS = {
    # eager: 6 products, each truncated, in one chain; the 5 after the first truncation ride on the
    # truncation before them, each carrying its other operand
    "eager": {"rides": 5, "plain": (12, 6 * 1024 + 6 * 512), "fused": (12 - 5, 1024 + 6 * 512 + 5 * 512)},
    # lazy: 6 products, 2 truncations; 2 products ride on each, and each truncation's message carries u once
    "lazy": {"rides": 4, "plain": (8, 6 * 1024 + 2 * 512), "fused": (8 - 4, 2 * 1024 + 2 * 512 + 2 * 512)},
}


@pytest.mark.parametrize("policy", list(HAND_COUNTS))
def test_carried_products_cost_no_round_of_their_own(policy):
    """The cost model charges a riding product no round and no bytes of its own, and its other
    operand's bytes in the truncation's message: rounds and bytes counted by hand above."""
    from truncbridge.analysis import calibrated_bounds, place
    from truncbridge.analysis.cost import plan_costs
    from truncbridge.core.protocols import load_network, load_protocol
    from truncbridge.pipeline import plan_config

    program, inputs = newton_reciprocal()
    plan = place(program, calibrated_bounds(program, float_maxabs(program, inputs), 1),
                 plan_config(policy, protocol="crypten-exact-3pc"))
    want = HAND_COUNTS[policy]
    assert [n.op for n in plan.program.nodes].count("trunc") == (6 if policy == "eager" else 2)
    assert len(carried_products(plan.program)) == want["rides"]
    assert all(plan.program[p].op == "mul" for p in carried_products(plan.program))
    protocol = load_protocol("crypten-exact-3pc")
    for fuse, key in ((False, "plain"), (True, "fused")):
        cost = plan_costs(plan, protocol, load_network("lan"), fuse=fuse)
        rounds, sent = want[key]
        assert (cost.rounds, cost.rounds_sequential, cost.bytes) == (rounds, rounds, sent), (key, cost)
        assert cost.fused_products == (want["rides"] if fuse else 0)
