"""Calibration: value ranges of every ATen node of the captured graph on sample inputs.

Recipes need input ranges to pick their parameters (the shift of an exp, the normalisation and
iteration count of a Newton–Raphson, the interval of a Chebyshev fit). Ranges measured here come
with a safety margin applied by the consumer, and the plan records that they are calibrated.
Entries at or below ``MASK_VALUE`` are structural -inf (attention masks) and are not ranged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import Captured

MASK_VALUE = -1e4


@dataclass
class Range:
    lo: float
    hi: float

    def merge(self, other: Range) -> Range:
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))


def _range_of(value: torch.Tensor) -> Range | None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
        return None
    hi = value.max().item()
    if hi <= MASK_VALUE:
        return None
    lo = torch.where(value > MASK_VALUE, value, hi).min().item()
    return Range(lo, hi)


def centered_scores(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Scores minus their row mean over unmasked entries (masked entries stay <= MASK_VALUE)."""
    live = scores > MASK_VALUE
    mean = (scores * live).sum(dim, keepdim=True) / live.sum(dim, keepdim=True).clamp(min=1)
    return torch.where(live, scores - mean, scores)


class _Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, ranges: dict[str, Range]):
        super().__init__(module)
        self.ranges = ranges

    def run_node(self, node: torch.fx.Node):
        out = super().run_node(node)
        if node.op != "call_function":
            return out
        if node.target == torch.ops.aten._softmax.default:
            # a softmax is ranged by its input scores minus their row mean: what its recipe needs
            r = _range_of(centered_scores(self.env[node.args[0]], node.args[1]))
        elif node.target == torch.ops.aten.native_layer_norm.default:
            r = _range_of(out[2].double() ** -2)  # var + eps, the input of its rsqrt: 1 / rstd^2
        else:
            r = _range_of(out)
        if r is not None:
            self.ranges[node.name] = self.ranges[node.name].merge(r) if node.name in self.ranges else r
        return out


@torch.no_grad()
def calibrate(captured: Captured, batches: list[torch.Tensor]) -> dict[str, Range]:
    """Min/max of every floating-point ATen node over the calibration batches."""
    ranges: dict[str, Range] = {}
    recorder = _Recorder(captured.exported.graph_module, ranges)
    for ids in batches:
        recorder.run(*captured.placeholder_values(ids))
    return ranges
