"""Calibration: value ranges of every ATen node of the captured graph on sample inputs.

Recipes need input ranges to pick their parameters (the shift of an exp, the normalisation and
iteration count of a Newton–Raphson, the interval of a Chebyshev fit). Ranges measured here come
with a safety margin applied by the consumer, and the plan records that they are calibrated.
Entries at or below ``MASK_VALUE`` are structural -inf (attention masks) and are not ranged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError
from .capture import Captured, LazyWeight
from .recipe_base import public_range

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
    lo, hi = (v.item() for v in torch.aminmax(value))
    if hi <= MASK_VALUE:
        return None
    if lo <= MASK_VALUE:  # structural -inf entries are not ranged
        lo = torch.where(value > MASK_VALUE, value, hi).min().item()
    return Range(lo, hi)


def centered_scores(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Scores minus their row mean over unmasked entries (masked entries stay <= MASK_VALUE)."""
    live = scores > MASK_VALUE
    mean = (scores * live).sum(dim, keepdim=True) / live.sum(dim, keepdim=True).clamp(min=1)
    return torch.where(live, scores - mean, scores)


def input_dependent(graph: torch.fx.Graph, client_input: str | set[str]) -> set[str]:
    """Nodes whose value depends on the client's input (or a KV cache, which depends on it): the only
    ones a recipe can read (weights alone, or public tables, are owner-known or public and never ranged)."""
    out = {client_input} if isinstance(client_input, str) else set(client_input)
    for node in graph.nodes:
        if any(a.name in out for a in node.all_input_nodes):
            out.add(node.name)
    return out


def weight_order(captured: Captured) -> list[str]:
    """Parameter names in the order the recorder asks for them: each op's positional arguments
    in turn (a tied weight once per read)."""
    order = []
    for node in captured.graph.nodes:
        for arg in node.args if node.op == "call_function" else ():
            w = captured.weights.get(arg.name) if isinstance(arg, torch.fx.Node) else None
            if w is not None and w.is_meta:
                order.append(captured.parameter_names[arg.name])
    return order


class _Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, ranges: dict[str, Range], client_input: str | set[str],
                 generate=None):
        super().__init__(module)  # values are dropped after their last use: one weight at a time
        self.ranges = ranges
        self.ranged = input_dependent(module.graph, client_input)
        self.generate = generate

    def fetch_args_kwargs_from_env(self, n):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if self.generate is not None:
            args = tuple(self.generate(a.name) if isinstance(a, LazyWeight) else a for a in args)
        return args, kwargs

    def run_node(self, node: torch.fx.Node):
        out = super().run_node(node)
        if node.op not in ("call_function", "placeholder") or node.name not in self.ranged:
            return out  # a placeholder is ranged only where it is the client's input (real-valued)
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
def calibrate(captured: Captured, batches: list[torch.Tensor], states: list[dict] | None = None) -> dict[str, Range]:
    """Min/max of every floating-point ATen node that depends on the client's input (token ids,
    or a real-valued tensor), over the calibration batches; ``states``: each batch's KV cache, where
    the graph reads one (``capture_cached``)."""
    ranges: dict[str, Range] = {}
    sources = {captured.client_input, *captured.state_inputs}
    recorder = _Recorder(captured.exported.graph_module, ranges, sources, captured.generate)
    if captured.generate is not None and len(batches) == 1:
        captured.generate.prefetch(weight_order(captured))
    for k, ids in enumerate(batches):
        recorder.run(*captured.placeholder_values(ids, None if states is None else states[k]))
    return ranges


RANGE_MARGIN = 0.25  # widen calibrated intervals by this fraction of their span on each side
SCORE_RANGE_MARGIN = 0.5  # softmax scores: held-out text went 5% past +25% (docs/placement.md, "Range assumptions")


POSITIVE_MARGIN = 4.0  # positive ranges (rsqrt, reciprocal inputs): lo / 4, hi * 4


def widened(r: Range, margin: float = RANGE_MARGIN) -> tuple[float, float]:
    """A recipe's input range: the calibrated one widened by ``margin`` of its span on each side,
    then rounded out to the public grid (``recipe_base.public_range``)."""
    pad = margin * max(r.hi - r.lo, 1e-3)
    return public_range(r.lo - pad, r.hi + pad)


def positive_range(r: Range, name: str) -> tuple[float, float]:
    """A positive recipe input's range: lo / 4, hi * 4, rounded out to the public grid."""
    if r.lo <= 0:
        raise UserError(f"{name} input was not strictly positive in calibration (min {r.lo:.4g})")
    return public_range(r.lo / POSITIVE_MARGIN, r.hi * POSITIVE_MARGIN)
