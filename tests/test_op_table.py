"""The op table is the one place an op is declared: every backend serves every kind, and a new op
is one ``OpSpec`` entry — the analysis, placement, cost and all backends pick it up from there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from truncbridge.analysis import place, plan_costs, static_bounds
from truncbridge.backends import RingExecutor, run_float
from truncbridge.backends.emulator import RingBackend
from truncbridge.backends.extremes import derive
from truncbridge.backends.reference import RealBackend
from truncbridge.core import op_bounds, ops
from truncbridge.core.fusion import carried_products
from truncbridge.core.ir import Builder
from truncbridge.core.protocols import load_network, load_protocol
from truncbridge.core.types import PlanConfig

# the whole cost of a new elementwise op: this entry
SUB = ops.OpSpec("sub", "local", 2, "max", real=lambda xs, n, p: xs[0] - xs[1], bound=op_bounds.add_bound,
                 norms=op_bounds.add_norms, aligns=True, site=lambda n, p: True, doc="private subtraction")
# the whole cost of a new public affine map c - y: this entry (α = -1, β = the constant at the node's scale)
RSUB_PUBLIC = ops.OpSpec("rsub_public", "public", 1, "same", params=("const",),
                         real=lambda xs, n, p: p.consts[n.attrs["const"]] - xs[0], bound=op_bounds.add_public_bound,
                         hoistable=True, affine=lambda n: (-1, ops.Public(n.attrs["const"], n.scale)),
                         doc="a public tensor or scalar minus a private value (attrs: const)")
EXACT = load_protocol("crypten-exact-3pc")  # products ride on its truncations' openings (core.fusion)


def test_every_backend_serves_every_kind():
    from truncbridge.backends.crypten.runner import PlanRunner  # imports CrypTen, runs nothing

    for backend in (RealBackend, RingBackend, PlanRunner):
        assert [k for k in ops.KINDS if not callable(getattr(backend, k, None))] == [], backend.__name__
    assert {s.kind for s in ops.OPS.values()} <= set(ops.KINDS)
    assert [h for h in ("open", "exchange", "finish") if not callable(getattr(PlanRunner, h, None))] == []  # WaveBackend


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


def affine_program(with_rsub: bool):
    """(c - x @ W) * x over a one-hot input, as one rsub_public node or as add_public(neg(.)): eager
    truncates x @ W, and the product rides on that truncation's opening through the affine map."""
    g = torch.Generator().manual_seed(5)
    b = Builder()
    t = b.input("tokens", (1, 4, 6), integer=True)
    x = b.matmul(t, b.weight("E", torch.randn(6, 5, generator=g, dtype=torch.float64)))
    u = b.matmul(x, b.weight("W", torch.randn(5, 5, generator=g, dtype=torch.float64)))
    c = torch.randn(5, generator=g, dtype=torch.float64)
    d = b.emit("rsub_public", (u,), b.shape(u), const=b.const(c)) if with_rsub else b.add_public(b.neg(u), c)
    b.output(b.mul(d, x))
    return b.program


AFFINE_INPUTS = {"tokens": torch.nn.functional.one_hot(torch.tensor([[2, 0, 5, 1]]), 6).double()}


def affine_plans(policy: str):
    new, old = affine_program(True), affine_program(False)
    config = PlanConfig(64, 16, policy, time_limit_s=10)
    return place(new, static_bounds(new), config), place(old, static_bounds(old), config)


def test_a_new_affine_op_is_one_table_entry(monkeypatch):
    """The emulator, the cost model and fusion (a product rides through it) treat c - y as
    add_public(neg(y), c), from its ``affine`` entry alone."""
    monkeypatch.setitem(ops.OPS, "rsub_public", RSUB_PUBLIC)
    new, old = affine_program(True), affine_program(False)
    assert [n.op for n in new.nodes].count("rsub_public") == 1
    assert static_bounds(new)[new.outputs[0]].value == static_bounds(old)[old.outputs[0]].value
    assert torch.equal(run_float(new, AFFINE_INPUTS)[0], run_float(old, AFFINE_INPUTS)[0])
    for policy in ("eager", "lazy", "optimal"):
        plans = affine_plans(policy)
        (got,), violations = RingExecutor(plans[0]).run(AFFINE_INPUTS, check=True)
        (want,), _ = RingExecutor(plans[1]).run(AFFINE_INPUTS, check=True)
        assert violations == 0 and torch.equal(got, want), policy  # c - y is -y + c in the ring
        assert plans[0].counts() == plans[1].counts(), policy
        riding = [len(carried_products(p.program)) for p in plans]
        assert riding[0] == riding[1] and (riding[0] >= 1 or policy != "eager"), (policy, riding)
        costs = [plan_costs(p, EXACT, load_network("lan")) for p in plans]
        assert costs[0].rounds == costs[1].rounds and costs[0].bytes == costs[1].bytes, policy


def test_extremes_of_a_new_affine_op_follow_from_its_entry(monkeypatch):
    """``backends.extremes`` maps a value's extremes through α·y + β: c - y over y in [lo, hi] and
    c in [c_lo, c_hi] is [c_lo - hi, c_hi - lo]; without the constant's extremes it must measure."""
    monkeypatch.setitem(ops.OPS, "rsub_public", RSUB_PUBLIC)
    plan = affine_plans("eager")[0]
    node = next(n for n in plan.program.nodes if n.op == "rsub_public")
    assert derive(node, [(-70, 300)], 64, (-5, 9), True) == (-305, 79)
    assert derive(node, [(-70, 300)], 64, None, True) is None
    assert derive(node, [(-70, 2**63 - 1)], 64, (-5, 9), True) is None  # it would wrap: measured instead


@pytest.mark.slow  # real party processes
def test_a_new_affine_op_runs_on_crypten_parties(monkeypatch, tmp_path):
    """Two CrypTen parties and the dealer run the rsub_public plan (``affine_party.py``): the runner
    applies c - y to shares and, for the product riding on the truncation, to the carried value,
    from the entry alone; the client's output matches the emulator within the exact truncation's
    LSB errors, and the product rides."""
    env = {**os.environ, "WORLD_SIZE": "2", "RENDEZVOUS": f"file://{tmp_path / 'rendezvous'}", "DISTRIBUTED_BACKEND": "gloo"}
    party = Path(__file__).resolve().parent / "affine_party.py"
    procs = [subprocess.Popen([sys.executable, str(party), str(tmp_path / f"out{r}.json")], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(3)]
    try:
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], outs[0][-2000:] + outs[1][-2000:]
    results = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    monkeypatch.setitem(ops.OPS, "rsub_public", RSUB_PUBLIC)
    plan = affine_plans("eager")[0]
    ex = RingExecutor(plan)
    want = ex.decode_outputs(ex.run(AFFINE_INPUTS)[0])[0]
    riding = sorted(carried_products(plan.program))
    got = torch.tensor(results[1]["output"], dtype=torch.float64)
    assert results[0]["output"] is None and got.shape == want.shape
    assert (got - want).abs().max().item() <= 2.0**-10
    assert results[1]["truncations"] == plan.counts()["truncations"]
    assert results[0]["riding"] == results[1]["riding"] == riding != []
