"""Helpers for tests that build small IR programs by hand."""
from __future__ import annotations

import torch

from truncbridge.analysis import calibrated_bounds, place, static_bounds
from truncbridge.backends import RingExecutor, run_float
from truncbridge.core.ir import Builder, Program
from truncbridge.core.types import PlanConfig


def float_maxabs(program: Program, inputs: dict[str, torch.Tensor]) -> dict[int, float]:
    out: dict[int, float] = {}

    def visit(node, value):
        out[node.id] = value.abs().max().item() if value.numel() else 0.0

    run_float(program, inputs, visit=visit)
    return out


def emulate_program(program: Program, inputs: dict[str, torch.Tensor], field_bits=64, frac_bits=16, policy="eager",
                    bounds="calibrated"):
    """Place (bounds calibrated on the same inputs, or static), run exactly; decoded outputs and plan."""
    if bounds == "static":
        node_bounds = static_bounds(program)
    else:
        node_bounds = calibrated_bounds(program, float_maxabs(program, inputs), 1)
    plan = place(program, node_bounds, PlanConfig(field_bits, frac_bits, policy))
    ex = RingExecutor(plan)
    outs, violations = ex.run(inputs, check=True)
    return ex.decode_outputs(outs), plan, violations


# the keys of an `emulate` JSON record (and of a `compare` row, with feasible / reason)
EMULATE_KEYS = {"model", "field_bits", "field", "prime", "frac_bits", "policy", "metrics", "counts", "bound_violations",
                "above_bound",
                "bound_offenders", "time_s", "recipes_alone_max_abs_error",
                "truncation_model", "memory"}  # memory: the estimate and peak RSS (truncbridge/memory.py)


def _encoding_error(value: torch.Tensor, scale: int) -> float:
    """max |round(c 2^s) 2^-s - c|: how much encoding a public constant at scale s moves it."""
    return (torch.round(value.double() * 2.0**scale) / 2.0**scale - value.double()).abs().max().item()


def rounding_error_bounds(plan) -> dict[int, float]:
    """Per node of a placed plan, an upper bound on |exact emulation - float| carried from every
    rounding the plan makes — an input encoded at its scale and a truncation to nearest (half an
    LSB each), a public constant's own encoding error — through each op, with magnitudes from
    the plan's bounds: |a'b' - ab| <= (|a| + ea) eb + |b| ea, K times that for a matmul over K,
    a sum adds its summands' errors, a power of two scales them. Written from the ops'
    definitions, not from the emulator; an op without a rule here fails the test."""
    program, err = plan.program, {}
    for n in program.nodes:
        e = [err[i] for i in n.inputs]
        m = [plan.bounds[i].value for i in n.inputs]
        if n.op == "input":
            err[n.id] = 2.0 ** -(n.scale + 1)
        elif n.op in ("output", "neg", "move", "shl"):
            err[n.id] = e[0]
        elif n.op == "trunc":
            err[n.id] = e[0] + 2.0 ** -(n.scale + 1)
        elif n.op == "pow2":
            err[n.id] = e[0] * 2.0 ** n.attrs["exp"]
        elif n.op == "add":
            err[n.id] = e[0] + e[1]
        elif n.op == "add_public":
            err[n.id] = e[0] + _encoding_error(program.consts[n.attrs["const"]], n.scale)
        elif n.op == "sum":
            summed = 1
            for d in n.attrs["dims"]:
                summed *= program[n.inputs[0]].shape[d]
            err[n.id] = e[0] * summed
        elif n.op in ("mul", "matmul"):
            k = program[n.inputs[0]].shape[-1] if n.op == "matmul" else 1
            err[n.id] = k * ((m[0] + e[0]) * e[1] + m[1] * e[0])
        elif n.op == "mul_public":
            c = program.consts[n.attrs["const"]]
            dc = _encoding_error(c, n.attrs["const_scale"])
            err[n.id] = e[0] * (c.abs().max().item() + dc) + m[0] * dc
        else:
            raise AssertionError(f"no error rule for {n.op}")
    return err


def newton_reciprocal():
    """1/u by Newton's y <- y (2 - u y) from a linear start: products that ride on the previous
    step's truncation, and both inputs of y·(2 - u·y) hanging off one truncation."""
    b = Builder()
    u = b.input("u", (4, 8))
    y = b.add_public(b.mul_public(u, -0.5), 1.5)
    for _ in range(3):
        y = b.mul(y, b.add_public(b.neg(b.mul(u, y)), 2.0))
    b.output(y)
    return b.program, {"u": torch.linspace(0.5, 1.0, 32, dtype=torch.float64).view(4, 8)}


def run_processes(argv_of, envs: list[dict], timeout_s: float) -> None:
    """Start one process per environment (``argv_of(rank)``: its command line), wait for all, kill any left at the
    timeout; each must exit 0 (the failing one's last output in the message)."""
    import subprocess

    procs = [subprocess.Popen(argv_of(r), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r, env in enumerate(envs)]
    try:
        for p in procs:
            p.wait(timeout=timeout_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"process {r} failed: {p.stdout.read().decode()[-2000:]}"
