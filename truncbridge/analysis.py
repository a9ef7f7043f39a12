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

import math
from dataclasses import dataclass

import torch

from .errors import UserError
from .execute import float_op
from .ir import Node, Program

BOUNDS_MODES = ("static", "calibrated")
STOCHASTIC_PRESERVING = {"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
                         "aten.expand.default", "aten.unsqueeze.default", "aten.slice.Tensor",
                         "aten.squeeze.dim", "aten.clone.default"}


@dataclass(frozen=True)
class Bound:
    value: float  # |x| <= value for every element
    source: str  # weight | input | rule | recipe | calibrated

    def bits(self) -> int:
        """Smallest m with |x| < 2^m."""
        return math.floor(math.log2(self.value)) + 1 if self.value > 0 else -1074


def calibrated_bounds(program: Program, maxabs: dict[int, float], margin_bits: int) -> dict[int, Bound]:
    if margin_bits < 0:
        raise UserError(f"calibration margin must be >= 0 bits, got {margin_bits}")
    return {n.id: Bound(maxabs.get(n.id, 0.0) * 2.0**margin_bits, "calibrated") for n in program.nodes}


class _Static:
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
            b = self.rule(node)
            declared = node.attrs.get("declared_bound")
            if declared is not None and declared < b.value:
                b = Bound(declared, node.attrs.get("declared_source", "recipe"))
            self.track_norms(node)
            if node.id in self.row and self.row[node.id] < b.value:  # |x_i| <= ||row||_2
                b = Bound(self.row[node.id], "rule")
            self.bounds[node.id] = b
            self.track_properties(node)
        return self.bounds

    def B(self, i: int) -> float:
        return self.bounds[i].value

    def rule(self, node: Node) -> Bound:
        op, ins = node.op, node.inputs
        if op == "weight" or (ins and all(i in self.exact for i in ins)):
            v = float_op(node, [self.exact[i] for i in ins], self.p)
            self.exact[node.id] = v
            return Bound(v.abs().max().item() if v.numel() else 0.0, "weight")
        if op == "input":
            if not node.attrs.get("integer"):
                raise UserError(f"input {node.attrs['name']} has no static bound; use calibrated bounds")
            self.onehot.add(node.id)
            return Bound(1.0, "input")
        if op == "add":
            return Bound(self.B(ins[0]) + self.B(ins[1]), "rule")
        if op in ("neg", "output"):
            return Bound(self.B(ins[0]), "rule")
        if op == "move":
            return Bound(max(self.B(i) for i in ins), "rule")
        if op == "pow2":
            return Bound(self.B(ins[0]) * 2.0 ** node.attrs["exp"], "rule")
        if op == "sum":
            shape = self.p[ins[0]].shape
            count = math.prod(shape[d] for d in node.attrs["dims"])
            return Bound(self.B(ins[0]) * count, "rule")
        if op == "mul_public":
            return Bound(self.B(ins[0]) * self._public_max(node), "rule")
        if op == "add_public":
            return Bound(self.B(ins[0]) + self._public_max(node), "rule")
        if op == "mul":
            return Bound(self.B(ins[0]) * self.B(ins[1]), "rule")
        if op == "matmul":
            return self.matmul(node)
        raise UserError(f"analysis: no bound rule for op {op!r}")

    def _public_max(self, node: Node) -> float:
        c = self.p.consts[node.attrs["const"]]
        return c.abs().max().item() if c.numel() else 0.0

    def matmul(self, node: Node) -> Bound:
        a, b = node.inputs
        if a in self.onehot:  # a one-hot row selects one row of b
            return Bound(self.B(b), "input")
        if a in self.stochastic:  # a convex (sub-)combination of b's rows
            return Bound(self.B(b), "rule")
        k = self.p[a].shape[-1]
        candidates = [k * self.B(a) * self.B(b)]
        if a in self.row and b in self.col:  # Cauchy-Schwarz on each (row, column) pair
            candidates.append(self.row[a] * self.col[b])
        if b in self.exact:  # x @ W: |y_j| <= max|x| * sum_k |W_kj|
            candidates.append(self.B(a) * self.exact[b].abs().sum(-2).max().item())
        if a in self.exact:  # W @ x: |y_i| <= max|x| * sum_k |W_ik|
            candidates.append(self.B(b) * self.exact[a].abs().sum(-1).max().item())
        return Bound(min(candidates), "rule")

    def track_properties(self, node: Node) -> None:
        if node.attrs.get("row_stochastic"):
            self.stochastic.add(node.id)
        elif node.op == "move" and node.inputs[0] in self.stochastic and node.attrs["fn"] in STOCHASTIC_PRESERVING:
            if self.p[node.inputs[0]].shape[-1:] == node.shape[-1:]:
                self.stochastic.add(node.id)

    def track_norms(self, node: Node) -> None:
        """l2 bounds of rows (last dim) and columns (dim -2), where a rule gives them."""
        i = node.id
        row, col = _norm_rule(self, node)
        declared = node.attrs.get("declared_row_l2")
        if declared is not None:
            row = min(row, declared) if row is not None else declared
        if row is not None:
            self.row[i] = row
        if col is not None:
            self.col[i] = col


def _norm_rule(st: _Static, node: Node) -> tuple[float | None, float | None]:
    ins, op, p = node.inputs, node.op, st.p
    if node.id in st.exact and node.numel:
        v = st.exact[node.id]
        if v.dim() >= 2:
            return v.norm(dim=-1).max().item(), v.norm(dim=-2).max().item()
        return None, None
    if op in ("neg", "output"):
        return st.row.get(ins[0]), st.col.get(ins[0])
    if op == "pow2":
        f = 2.0 ** node.attrs["exp"]
        return _scaled(st.row.get(ins[0]), f), _scaled(st.col.get(ins[0]), f)
    if op == "mul_public":
        f = p.consts[node.attrs["const"]].abs().max().item() if p.consts[node.attrs["const"]].numel() else 0.0
        return _scaled(_row(st, ins[0], node), f), _scaled(_col(st, ins[0], node), f)
    if op == "mul":
        for x, w in ((ins[0], ins[1]), (ins[1], ins[0])):
            if w in st.exact and _row(st, x, node) is not None:  # x scaled elementwise by known weights
                return st.row[x] * st.exact[w].abs().max().item(), None
        return None, None
    if op == "add":
        r = [_row(st, i, node) for i in ins]
        c = [_col(st, i, node) for i in ins]
        return (sum(r) if None not in r else None), (sum(c) if None not in c else None)
    if op == "matmul":
        a, b = ins
        if b in st.exact and a in st.row and st.exact[b].dim() >= 2:  # rows of x @ W: ||W||_2 ||x||
            return st.row[a] * torch.linalg.matrix_norm(st.exact[b], ord=2).max().item(), None
        return None, None
    if op == "move":
        return _move_norms(st, node)
    return None, None


def _row(st: _Static, i: int, node: Node) -> float | None:
    """Input ``i``'s row norm, if its rows are the output's rows: an input broadcast along the
    last dim repeats its entries along each output row, whose norm its own does not bound."""
    return st.row.get(i) if st.p[i].shape[-1:] == node.shape[-1:] else None


def _col(st: _Static, i: int, node: Node) -> float | None:
    """Input ``i``'s column norm, if its columns (dim -2) are the output's (no broadcast there)."""
    return st.col.get(i) if len(st.p[i].shape) >= 2 and st.p[i].shape[-2:] == node.shape[-2:] else None


def _scaled(v: float | None, f: float) -> float | None:
    return None if v is None else v * f


def _move_norms(st: _Static, node: Node) -> tuple[float | None, float | None]:
    fn, x = node.attrs["fn"], node.inputs[0]
    if fn == "aten.cat.default":
        rows = [st.row.get(i) for i in node.inputs]
        if None in rows:
            return None, None
        dim = node.attrs["args"][1] if len(node.attrs["args"]) > 1 else 0
        last = dim % len(node.shape) == len(node.shape) - 1
        return (math.sqrt(sum(r * r for r in rows)) if last else max(rows)), None  # rows joined / stacked
    if len(node.inputs) != 1:
        return None, None
    src = st.p[x].shape
    row, col = st.row.get(x), st.col.get(x)
    if fn == "aten.slice.Tensor":  # parts of rows and columns are no longer than they were
        return row, col
    if fn in ("aten.expand.default", "aten.clone.default", "aten.unsqueeze.default"):
        keeps_tail = src[-2:] == node.shape[-2:] if len(src) >= 2 and len(node.shape) >= 2 else False
        return row if src[-1:] == node.shape[-1:] else None, col if keeps_tail else None
    if fn == "aten.permute.default":
        perm = [d % len(src) for d in node.attrs["args"][1]]
        last, second = len(src) - 1, len(src) - 2
        if perm[-2:] == [second, last]:
            return row, col
        if perm[-2:] == [last, second]:
            return col, row
        return (row if perm[-1] == last else None), None
    if fn in ("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default"):
        if src[-1] == node.shape[-1]:
            return row, (col if len(src) >= 2 and len(node.shape) >= 2 and src[-2] == node.shape[-2] else None)
        if row is not None and src[-1] % node.shape[-1] == 0:  # rows split: each piece is no longer
            return row, None
        if row is not None and node.shape[-1] % src[-1] == 0:  # r rows joined: sqrt(r) times
            return row * math.sqrt(node.shape[-1] // src[-1]), None
    return None, None


def static_bounds(program: Program) -> dict[int, Bound]:
    return _Static(program).run()
