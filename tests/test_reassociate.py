"""Reassociating products so the late operand enters last, and ordering a program by depth
(frontend/reassociate.py): same values, fewer products after the late operand, facts carried."""
from __future__ import annotations

import torch

from truncbridge.backends.reference import run_float
from truncbridge.core.ir import Builder
from truncbridge.frontend.reassociate import _depths, reassociate_products


def _norm_like(weight: torch.Tensor, row_l2: float | None = None):
    """w · (x · r) with r four products deep in x: an RMSNorm's shape."""
    b = Builder()
    x = b.input("x", (2, 3, 4))
    w = b.weight("w", weight)
    r = x
    for _ in range(4):
        r = b.mul(r, r)
    inner = b.mul(x, r)
    if row_l2 is not None:
        b.program[inner].facts.row_l2 = row_l2
    b.output(b.mul(w, inner))
    return b.program


def test_the_late_operand_enters_last_and_the_values_do_not_change():
    weight = torch.linspace(-2.0, 1.5, 4, dtype=torch.float64)
    program = _norm_like(weight, row_l2=3.0)
    x = {"x": torch.rand(2, 3, 4, dtype=torch.float64) + 0.5}
    before, depth_before = run_float(program, x)[0], max(_depths(program))
    reassociate_products(program)
    after = run_float(program, x)[0]
    assert torch.allclose(before, after, rtol=1e-12, atol=0)
    assert max(_depths(program)) == depth_before - 1  # one product after r, not two
    out = program[program[program.outputs[0]].inputs[0]]
    first = program[min(out.inputs)]
    assert first.op == "mul" and {program[i].op for i in first.inputs} == {"input", "weight"}  # w · x first
    assert out.facts.row_l2 == 3.0 * 2.0  # the inner product's row norm, times max |w|
    assert all(i < n.id for n in program.nodes for i in n.inputs)  # still topological


def test_facts_that_cannot_be_carried_leave_the_product_alone():
    """A weight known only by its shape (statistics-only models) cannot scale the inner
    product's row norm: no rewrite."""
    program = _norm_like(torch.empty(4, device="meta"), row_l2=3.0)
    ops = [(n.op, n.inputs) for n in program.nodes]
    reassociate_products(program)
    assert [(n.op, n.inputs) for n in program.nodes] == ops


def test_ordering_by_depth_puts_what_is_ready_early_first():
    """An MLP's shape: gate · sigmoid(gate) · up, with up made after the deep sigmoid in capture
    order. After the pass, up · gate comes before the sigmoid's last product."""
    b = Builder()
    x = b.input("x", (4,))
    gate = b.mul(x, x)
    s = gate
    for _ in range(3):
        s = b.mul(s, s)
    act = b.mul(gate, s)
    up = b.mul(x, b.add_public(x, 1.0))
    b.output(b.mul(act, up))
    program = b.program
    values = {"x": torch.linspace(0.1, 0.9, 4, dtype=torch.float64)}
    before = run_float(program, values)[0]
    reassociate_products(program)
    assert torch.allclose(run_float(program, values)[0], before, rtol=1e-12, atol=0)
    out = program[program[program.outputs[0]].inputs[0]]
    early = program[next(i for i in out.inputs if program[i].op == "mul" and len(set(program[i].inputs)) == 2)]
    assert early.id < max(out.inputs)  # (up · gate) made before the sigmoid's result
    depth = _depths(program)
    assert depth[out.id] == depth[max(out.inputs, key=depth.__getitem__)] + 1
