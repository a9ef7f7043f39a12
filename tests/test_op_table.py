"""The op table is the one place an op is declared: every backend serves every kind, and a new op
is one ``OpSpec`` entry — the analysis, placement, cost and all backends pick it up from there."""
from __future__ import annotations

import pytest
import torch

from truncbridge.analysis import place, plan_costs, static_bounds
from truncbridge.backends import RingExecutor, run_float
from truncbridge.backends.emulator import RingBackend
from truncbridge.backends.reference import RealBackend
from truncbridge.core import op_bounds, ops
from truncbridge.core.ir import Builder
from truncbridge.core.protocols import load_network, load_protocol
from truncbridge.core.types import PlanConfig

# the whole cost of a new elementwise op: this entry
SUB = ops.OpSpec("sub", "local", 2, "max", real=lambda xs, n, p: xs[0] - xs[1], bound=op_bounds.add_bound,
                 norms=op_bounds.add_norms, aligns=True, site=lambda n, p: True, doc="private subtraction")


def test_every_backend_serves_every_kind():
    from truncbridge.backends.crypten.runner import PlanRunner  # imports CrypTen, runs nothing

    for backend in (RealBackend, RingBackend, PlanRunner):
        assert [k for k in ops.KINDS if not callable(getattr(backend, k, None))] == [], backend.__name__
    assert {s.kind for s in ops.OPS.values()} <= set(ops.KINDS)


def _program(with_sub: bool):
    """((x @ W) - x)^2 over a one-hot input, as one sub node or as add(a, neg(b)); lazy keeps x @ W at a
    higher scale than x, so the operands must be aligned."""
    g = torch.Generator().manual_seed(3)
    b = Builder()
    t = b.input("tokens", (1, 4, 6), integer=True)
    x = b.matmul(t, b.weight("E", torch.randn(6, 5, generator=g, dtype=torch.float64)))
    u = b.matmul(x, b.weight("W", torch.randn(5, 5, generator=g, dtype=torch.float64)))
    d = b.emit("sub", (u, x), b.shape(u)) if with_sub else b.add(u, b.neg(x))
    b.output(b.mul(d, d))
    return b.program


def test_a_new_op_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(ops.OPS, "sub", SUB)
    inputs = {"tokens": torch.nn.functional.one_hot(torch.tensor([[0, 3, 5, 1]]), 6).double()}
    new, old = _program(True), _program(False)
    assert [n.op for n in new.nodes].count("sub") == 1
    new_bounds, old_bounds = static_bounds(new), static_bounds(old)
    assert new_bounds[new.outputs[0]].value == old_bounds[old.outputs[0]].value  # |a - b| <= A + B, as add(a, -b)
    assert torch.equal(run_float(new, inputs)[0], run_float(old, inputs)[0])
    for policy in ("eager", "lazy", "optimal"):
        config = PlanConfig(40, 12, policy, time_limit_s=10)
        plans = place(new, new_bounds, config), place(old, old_bounds, config)
        (got,), violations = RingExecutor(plans[0]).run(inputs, check=True)
        (want,), _ = RingExecutor(plans[1]).run(inputs, check=True)
        assert violations == 0 and torch.equal(got, want), policy  # exact: a - b is a + (-b) in the ring
        assert plans[0].counts() == plans[1].counts()
        costs = [plan_costs(p, load_protocol(None), load_network("lan")) for p in plans]
        assert costs[0].rounds == costs[1].rounds and costs[0].bytes == costs[1].bytes


def test_an_unknown_op_is_named():
    b = Builder()
    b.emit("frobnicate", (), (2,))
    with pytest.raises(ValueError, match="unknown op 'frobnicate'"):
        static_bounds(b.program)


def test_an_attr_that_is_no_parameter_of_its_op_is_refused():
    """A fact written into attrs (as v1 did) would be silently ignored by the analysis: refused."""
    b = Builder()
    x = b.input("tokens", (2, 3), integer=True)
    b.output(x)
    b.program[x].attrs["declared_row_l2"] = 1.0
    with pytest.raises(ValueError, match=r"attrs \['declared_row_l2'\] are not parameters of input"):
        static_bounds(b.program)


def test_a_node_with_the_wrong_number_of_inputs_is_refused():
    b = Builder()
    x = b.input("tokens", (2, 3), integer=True)
    b.output(b.emit("neg", (x, x), (2, 3)))
    with pytest.raises(ValueError, match="2 inputs, the op takes 1"):
        static_bounds(b.program)
