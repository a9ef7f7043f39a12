"""Bit-width analysis: a magnitude bound for every IR value, and where it came from.

Static bounds hold for every input (given the recipes' input ranges, which the plan records):

    weight      the model owner knows weights exactly: any value computed from weights alone is
                evaluated, and its maximum is its bound
    input       the one-hot token matrix is 0/1; an embedding lookup is bounded by the table
    rule        interval rules: |a + b| <= A + B, |a b| <= A B, |sum_K| <= K A, x @ W <= X times
                W's largest column l1 norm (linear layers by weight norms), p @ v <= V when p's
                rows are non-negative and sum to at most 1 (softmax outputs); and Cauchy-Schwarz:
                bounds on the l2 norms of rows (last dim) and columns (dim -2) are carried along
                (RMS-normalised rows have norm sqrt(n), x @ W multiplies it by W's spectral norm,
                moves keep or split rows), so |a @ b| <= |a row| |b column|
    recipe      bounds recipes declare for their own nodes (by construction, or evaluated on a
                dense grid of the input range the recipe was built for); RMS normalisation
                x / sqrt(mean(x^2)) is bounded by sqrt(n) by construction
    range       the input range a recipe was built for (calibrated, then widened): outside it the
                recipe is wrong anyway, so the range is also a bound — an assumption, not a proof,
                and ``emulate --check`` verifies it; mean(x^2) <= H also bounds |x| by sqrt(n H)
Where two apply, the tighter wins. Calibrated bounds instead take the largest value seen on the
calibration windows, times 2^margin_bits.
"""
from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.ir import Node, Program
from ..core.op_bounds import keeps_stochastic
from ..core.ops import check_node, real_value, spec
from ..core.types import Bound
from ..core.weight_stats import WeightStats, max_abs, moved, row_col_l2


def calibrated_bounds(program: Program, maxabs: dict[int, float], margin_bits: int) -> dict[int, Bound]:
    if margin_bits < 0:
        raise UserError(f"calibration margin must be >= 0 bits, got {margin_bits}")
    return {n.id: Bound(maxabs.get(n.id, 0.0) * 2.0**margin_bits, "calibrated") for n in program.nodes}


class _Static:
    """The analysis state the op table's rules read (``core.op_bounds``)."""

    def __init__(self, program: Program):
        self.p = program
        self.bounds: dict[int, Bound] = {}
        self.exact: dict[int, torch.Tensor] = {}  # owner-known values (functions of weights only)
        self.stochastic: set[int] = set()  # rows non-negative with sum <= 1 along the last dim
        self.onehot: set[int] = set()
        self.row: dict[int, float] = {}  # bound on the l2 norm along the last dim
        self.col: dict[int, float] = {}  # bound on the l2 norm along dim -2

    def run(self) -> dict[int, Bound]:
        for node in self.p.nodes:
            check_node(node)
            b = self.rule(node)
            facts = node.facts
            if facts.bound is not None and facts.bound < b.value:
                b = Bound(facts.bound, facts.bound_source)
            self.track_norms(node)
            if node.id in self.row and self.row[node.id] < b.value:  # |x_i| <= ||row||_2
                b = Bound(self.row[node.id], "rule")
            self.bounds[node.id] = b
            if facts.row_stochastic or keeps_stochastic(self, node):
                self.stochastic.add(node.id)
        return self.bounds

    def B(self, i: int) -> float:
        return self.bounds[i].value

    def rule(self, node: Node) -> Bound:
        op, ins = spec(node), node.inputs
        if node.op == "weight" or (ins and all(i in self.exact for i in ins)):
            v = self.owner_value(node)
            if v is not None:
                self.exact[node.id] = v
                return Bound(max_abs(v), "weight")
        if op.bound is None:
            raise UserError(f"analysis: no bound rule for op {node.op!r}")
        found = op.bound(self, node)
        return Bound(*found) if isinstance(found, tuple) else Bound(found, "rule")

    def owner_value(self, node: Node):
        """A weight, or a function of weights alone: its value, or its statistics where the
        weights are known only by statistics (``WeightStats``: a full-size plan without the model;
        only moves that keep or transpose a matrix carry them, anything else uses the rules).
        Weights and their moves stay in the model's dtype (no float64 copy of the model: the
        statistics compute in float64); any other op computes in float64."""
        if node.op == "weight":
            w = self.p.weights[node.attrs["name"]]
            return self.p.weight_stats[node.attrs["name"]] if w.is_meta else w
        xs = [self.exact[i] for i in node.inputs]
        if not any(isinstance(x, WeightStats) for x in xs):
            return real_value(node, xs if node.op == "move" else [x.double() for x in xs], self.p)
        if node.op == "move" and len(xs) == 1:
            return moved(xs[0], node.attrs["fn"], node.attrs["args"], node.shape)
        return None

    def track_norms(self, node: Node) -> None:
        """l2 bounds of rows (last dim) and columns (dim -2), where a rule gives them."""
        row, col = self._norms(node)
        declared = node.facts.row_l2
        if declared is not None:
            row = min(row, declared) if row is not None else declared
        if row is not None:
            self.row[node.id] = row
        if col is not None:
            self.col[node.id] = col

    def _norms(self, node: Node) -> tuple[float | None, float | None]:
        if node.id in self.exact:
            v = self.exact[node.id]
            if node.numel and v.dim() >= 2:
                return row_col_l2(v)
            return None, None
        norms = spec(node).norms
        return norms(self, node) if norms is not None else (None, None)


def static_bounds(program: Program) -> dict[int, Bound]:
    return _Static(program).run()
