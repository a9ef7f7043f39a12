"""Each op's bound rules, as the op table (``ops.py``) names them.

Interval rules take the analysis context ``st`` (``analysis.bounds``: ``st.B(i)`` the bound of
input i, ``st.exact`` owner-known values, ``st.onehot`` / ``st.stochastic`` node sets, ``st.row`` /
``st.col`` l2 norms of rows (last dim) and columns (dim -2), ``st.p`` the program) and return a
float (an interval rule's bound), or (float, source) where the bound comes from the input's
form. Norm rules return (row, column) l2 bounds of the output, None where unknown.
"""
from __future__ import annotations

import math

from .errors import UserError
from .weight_stats import col_l1, max_abs, row_l1, spectral

Norms = tuple[float | None, float | None]

# moves that keep "rows non-negative, summing to at most 1" when the last dim is unchanged
STOCHASTIC_PRESERVING = {"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
                         "aten.expand.default", "aten.unsqueeze.default", "aten.slice.Tensor",
                         "aten.squeeze.dim", "aten.clone.default"}


# -- interval rules ------------------------------------------------------------------------------
def input_bound(st, node) -> tuple[float, str]:
    """An integer input is the one-hot token matrix; a real-valued one has the bound its owner declared."""
    if not node.attrs.get("integer"):
        if node.facts.bound is None:
            raise UserError(f"input {node.attrs['name']} has no static bound; use calibrated bounds")
        return node.facts.bound, "input"
    st.onehot.add(node.id)
    return 1.0, "input"


def unit_bound(st, node) -> float:
    return 1.0


def same_bound(st, node) -> float:
    return st.B(node.inputs[0])


def add_bound(st, node) -> float:
    return st.B(node.inputs[0]) + st.B(node.inputs[1])


def move_bound(st, node) -> float:
    return max(st.B(i) for i in node.inputs)


def pow2_bound(st, node) -> float:
    return st.B(node.inputs[0]) * 2.0 ** node.attrs["exp"]


def sum_bound(st, node) -> float:
    shape = st.p[node.inputs[0]].shape
    return st.B(node.inputs[0]) * math.prod(shape[d] for d in node.attrs["dims"])


def _public_max(st, node) -> float:
    c = st.p.consts[node.attrs["const"]]
    return c.abs().max().item() if c.numel() else 0.0


def mul_public_bound(st, node) -> float:
    return st.B(node.inputs[0]) * _public_max(st, node)


def add_public_bound(st, node) -> float:
    return st.B(node.inputs[0]) + _public_max(st, node)


def mul_bound(st, node) -> float:
    return st.B(node.inputs[0]) * st.B(node.inputs[1])


def matmul_bound(st, node) -> float | tuple[float, str]:
    a, b = node.inputs
    if a in st.onehot:  # a one-hot row selects one row of b
        return st.B(b), "input"
    if a in st.stochastic:  # a convex (sub-)combination of b's rows
        return st.B(b)
    candidates = [st.p[a].shape[-1] * st.B(a) * st.B(b)]
    if a in st.row and b in st.col:  # Cauchy-Schwarz on each (row, column) pair
        candidates.append(st.row[a] * st.col[b])
    if b in st.exact:  # x @ W: |y_j| <= max|x| * sum_k |W_kj| (a vector W: one column)
        candidates.append(st.B(a) * col_l1(st.exact[b]))
    if a in st.exact:  # W @ x: |y_i| <= max|x| * sum_k |W_ik|
        candidates.append(st.B(b) * row_l1(st.exact[a]))
    return min(candidates)


# -- l2 norms of rows (last dim) and columns (dim -2) --------------------------------------------
def _row(st, i: int, node) -> float | None:
    """Input ``i``'s row norm, if its rows are the output's rows: an input broadcast along the
    last dim repeats its entries along each output row, whose norm its own does not bound."""
    return st.row.get(i) if st.p[i].shape[-1:] == node.shape[-1:] else None


def _col(st, i: int, node) -> float | None:
    """Input ``i``'s column norm, if its columns (dim -2) are the output's (no broadcast there)."""
    return st.col.get(i) if len(st.p[i].shape) >= 2 and st.p[i].shape[-2:] == node.shape[-2:] else None


def _scaled(v: float | None, f: float) -> float | None:
    return None if v is None else v * f


def same_norms(st, node) -> Norms:
    return st.row.get(node.inputs[0]), st.col.get(node.inputs[0])


def pow2_norms(st, node) -> Norms:
    f = 2.0 ** node.attrs["exp"]
    return _scaled(st.row.get(node.inputs[0]), f), _scaled(st.col.get(node.inputs[0]), f)


def mul_public_norms(st, node) -> Norms:
    x, f = node.inputs[0], _public_max(st, node)
    return _scaled(_row(st, x, node), f), _scaled(_col(st, x, node), f)


def mul_norms(st, node) -> Norms:
    for x, w in (node.inputs, node.inputs[::-1]):
        if w in st.exact and _row(st, x, node) is not None:  # x scaled elementwise by known weights
            return st.row[x] * max_abs(st.exact[w]), None
    return None, None


def add_norms(st, node) -> Norms:
    r = [_row(st, i, node) for i in node.inputs]
    c = [_col(st, i, node) for i in node.inputs]
    return (sum(r) if None not in r else None), (sum(c) if None not in c else None)


def matmul_norms(st, node) -> Norms:
    a, b = node.inputs
    if b in st.exact and a in st.row and st.exact[b].dim() >= 2:  # rows of x @ W: ||W||_2 ||x||
        return st.row[a] * spectral(st.exact[b]), None
    return None, None


def move_norms(st, node) -> Norms:
    fn = node.attrs["fn"]
    if fn == "aten.cat.default":
        rows = [st.row.get(i) for i in node.inputs]
        if None in rows:
            return None, None
        args, kwargs = node.attrs["args"], node.attrs.get("kwargs") or {}
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        last = dim % len(node.shape) == len(node.shape) - 1
        return (math.sqrt(sum(r * r for r in rows)) if last else max(rows)), None  # rows joined / stacked
    if len(node.inputs) != 1:
        return None, None
    return _one_input_move_norms(st, node, fn, st.p[node.inputs[0]].shape)


def _one_input_move_norms(st, node, fn: str, src: tuple) -> Norms:
    x, out = node.inputs[0], node.shape
    row, col = st.row.get(x), st.col.get(x)
    if fn == "aten.slice.Tensor":  # parts of rows and columns are no longer than they were
        return row, col
    if fn in ("aten.expand.default", "aten.clone.default", "aten.unsqueeze.default"):
        keeps_tail = src[-2:] == out[-2:] if len(src) >= 2 and len(out) >= 2 else False
        return row if src[-1:] == out[-1:] else None, col if keeps_tail else None
    if fn == "aten.permute.default":
        perm = [d % len(src) for d in node.attrs["args"][1]]
        last, second = len(src) - 1, len(src) - 2
        if perm[-2:] == [second, last]:
            return row, col
        if perm[-2:] == [last, second]:
            return col, row
        return (row if perm[-1] == last else None), None
    if fn in ("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default"):
        if src[-1] == out[-1]:
            return row, (col if len(src) >= 2 and len(out) >= 2 and src[-2] == out[-2] else None)
        if row is not None and src[-1] % out[-1] == 0:  # rows split: each piece is no longer
            return row, None
        if row is not None and out[-1] % src[-1] == 0:  # r rows joined: sqrt(r) times
            return row * math.sqrt(out[-1] // src[-1]), None
    return None, None


def keeps_stochastic(st, node) -> bool:
    """A row-stochastic input stays row-stochastic through this op (a move along other dims)."""
    x = node.inputs[0] if node.inputs else None
    return (node.op == "move" and x in st.stochastic and node.attrs["fn"] in STOCHASTIC_PRESERVING
            and st.p[x].shape[-1:] == node.shape[-1:])
