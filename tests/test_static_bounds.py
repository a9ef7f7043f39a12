"""Static bounds on tiny programs where a norm rule must not carry an l2 row norm across a
broadcast: every float value stays within its static bound."""
from __future__ import annotations

import pytest
import torch

from truncbridge.analysis import static_bounds
from truncbridge.core.ir import Builder

from helpers import float_maxabs

ONEHOT = torch.nn.functional.one_hot(torch.tensor([0, 3, 5, 7]), 8).double()


def broadcast_then_gram(combine: str):
    """s (4, 1) with a declared row norm meets an (8,) operand: each output row repeats s's one
    entry 8 times, so its norm is sqrt(8)·|s|, not |s|; m @ m^T then feeds Cauchy-Schwarz."""
    b = Builder()
    x = b.input("tokens", (4, 8), integer=True)
    s = b.matmul(x, b.weight("w1", torch.ones(8, 1, dtype=torch.float64)))
    b.program[s].facts.row_l2 = 1.0  # as a recipe declares for RMSNorm's output
    if combine == "mul":
        m = b.mul(s, b.weight("w2", torch.ones(8, dtype=torch.float64)))
    elif combine == "mul_public":
        m = b.mul_public(s, torch.ones(8, dtype=torch.float64))
    else:
        m = b.add(s, b.weight("w3", torch.zeros(4, 8, dtype=torch.float64)))  # rows of norm 0
    b.output(b.matmul(m, b.move("aten.permute.default", [m], ["$0", [1, 0]])))
    return b.program


@pytest.mark.parametrize("combine", ["mul", "mul_public", "add"])
def test_a_row_norm_does_not_cross_a_broadcast(combine):
    program = broadcast_then_gram(combine)
    bounds = static_bounds(program)
    seen = float_maxabs(program, {"tokens": ONEHOT})
    over = [(n.id, n.op, seen[n.id], bounds[n.id].value) for n in program.nodes
            if seen[n.id] > bounds[n.id].value * (1 + 1e-12)]
    assert over == []
    assert max(seen.values()) == 8.0  # the Gram entries really are 8: the case is not vacuous


@pytest.mark.slow
def test_static_bounds_hold_on_real_text(default_converted):
    """No calibrated maximum of the default model on its held-out text exceeds its static bound
    (sources: weight, input, rule, recipe, range)."""
    sb = static_bounds(default_converted.program)
    for node in default_converted.program.nodes:
        assert default_converted.maxabs.get(node.id, 0.0) <= sb[node.id].value * (1 + 1e-9), (node.op, node.origin)
    assert {b.source for b in sb.values()} >= {"weight", "input", "rule", "recipe", "range"}
