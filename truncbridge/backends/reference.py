"""The float64 reference backend: the IR's own real-valued result.

That is the float model with every nonlinearity replaced by its recipe, and no rounding;
placement's ``trunc`` / ``shl`` are identities here. Calibration reads node magnitudes from it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.interpret import interpret
from ..core.ir import Node, Program


class RealBackend:
    def __init__(self, program: Program, inputs: dict[str, torch.Tensor]):
        self.program, self.inputs = program, inputs

    def source(self, node, op, xs):
        if node.op == "input":
            return self.inputs[node.attrs["name"]].double()
        return op.real(xs, node, self.program)

    def _real(self, node, op, xs):
        return op.real(xs, node, self.program)

    local = product = public = relabel = shift = truncate = compare = output = _real


def run_float(program: Program, inputs: dict[str, torch.Tensor],
              visit: Callable[[Node, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Real-valued execution in float64; ``visit(node, value)`` sees every node's value."""
    return interpret(program, RealBackend(program, inputs), visit)
