"""Helpers for tests that build small IR programs by hand."""
from __future__ import annotations

import torch

from truncbridge.analysis import calibrated_bounds, place, static_bounds
from truncbridge.backends import RingExecutor, run_float
from truncbridge.core.ir import Program
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
                "truncation_model"}
