"""Exact integer matrix products from float64 GEMMs, with as few limbs as the operands need.

A float64 GEMM is exact when every partial sum is an integer of magnitude <= 2^53: with
|a| < 2^ma, |b| < 2^mb and inner size k <= 2^kb, every partial sum is below 2^(ma + mb + kb). So
one GEMM suffices when ma + mb + kb <= 53, which fixed-point plans usually satisfy (the plan keeps
values small); otherwise the operands are cut into limbs of wa and wb bits with wa + wb + kb <= 53
and each pair of limbs is one exact GEMM. ``matmul_parts`` yields those exact partial products
with their weights 2^shift; a ring adds them up in its own arithmetic (int64 wraps mod 2^64; the
wide rings carry into a second limb).

Operands are int64 tensors (signed integers) or float64 tensors that hold integers exactly (the
emulator keeps weights that only feed products that way, converted once).

A product whose left operand is a one-hot matrix (the client's tokens, ``one_hot(ids) @ table``)
needs no GEMM at all: each row of the result is one row of the table (``one_hot_rows``,
``select_rows``) — the same integers, exactly, whatever the table holds.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .errors import UserError

FLOAT64_EXACT_BITS = 53


def magnitude_bits(x: torch.Tensor) -> int:
    """Smallest m with |x| < 2^m for every element (0 for an all-zero or empty tensor)."""
    if x.numel() == 0:
        return 0
    lo, hi = torch.aminmax(x)
    if x.dtype == torch.int64:
        top = max(-int(lo), int(hi))  # Python ints: -(-2^63) does not overflow
    else:
        top = int(max(-float(lo), float(hi)))
    return top.bit_length()


def limb_plan(a_bits: int, b_bits: int, k: int) -> tuple[int, int]:
    """Limb widths (wa, wb) with wa + wb + ceil(log2 k) <= 53 that need the fewest GEMMs (ties: split
    ``a``, the activation, rather than ``b``, a weight kept whole in float64)."""
    budget = FLOAT64_EXACT_BITS - math.ceil(math.log2(max(k, 1)))
    if budget < 2:
        raise UserError(f"matrix product with inner dimension {k} is too long for exact float64 limbs")
    if a_bits + b_bits <= budget:
        return max(a_bits, 1), max(b_bits, 1)
    best = None
    for wb in range(1, budget):
        wa = budget - wb
        count = _limbs(a_bits, wa) * _limbs(b_bits, wb)
        key = (count, _limbs(b_bits, wb))
        if best is None or key < best[0]:
            best = (key, wa, wb)
    return best[1], best[2]


def _limbs(bits: int, width: int) -> int:
    return max(1, math.ceil(bits / width))


def split(x: torch.Tensor, bits: int, width: int) -> list[torch.Tensor]:
    """x = sum_i limb_i * 2^(width * i) as float64 limbs: the low ones unsigned in [0, 2^width),
    the top one signed with |top| <= 2^width (|x| < 2^bits)."""
    n = _limbs(bits, width)
    if n == 1:
        return [x if x.dtype == torch.float64 else x.double()]
    x = x if x.dtype == torch.int64 else x.to(torch.int64)
    mask = (1 << width) - 1
    limbs = [torch.bitwise_and(torch.bitwise_right_shift(x, width * i), mask).double() for i in range(n - 1)]
    return limbs + [torch.bitwise_right_shift(x, width * (n - 1)).double()]


def matmul_parts(a: torch.Tensor, b: torch.Tensor, a_bits: int | None = None,
                 b_bits: int | None = None) -> Iterator[tuple[torch.Tensor, int]]:
    """Exact integer partial products (int64, each |p| <= 2^53) and their shifts: a @ b equals
    sum(p * 2^shift) exactly. ``a_bits`` / ``b_bits``: known magnitude bits (else measured)."""
    a_bits = magnitude_bits(a) if a_bits is None else a_bits
    b_bits = magnitude_bits(b) if b_bits is None else b_bits
    wa, wb = limb_plan(a_bits, b_bits, a.shape[-1])
    a_limbs, b_limbs = split(a, a_bits, wa), split(b, b_bits, wb)
    for i, al in enumerate(a_limbs):
        for j, bl in enumerate(b_limbs):
            yield _as_int64(torch.matmul(al, bl)), wa * i + wb * j


def _as_int64(x: torch.Tensor) -> torch.Tensor:
    """A fresh float64 tensor of integers (|x| <= 2^53) as int64, in its own memory where it is
    contiguous: the GEMM's output is not written twice (at the head, 128 x 50257, that second
    buffer was 51 MB and most of the conversion's time in page faults)."""
    same_size = x.dtype == torch.float64 and x.is_contiguous()
    return x.view(torch.int64).copy_(x) if same_size else x.to(torch.int64)


def gemm_count(a_bits: int, b_bits: int, k: int) -> int:
    """How many float64 GEMMs ``matmul_parts`` runs for these magnitudes."""
    wa, wb = limb_plan(a_bits, b_bits, k)
    return _limbs(a_bits, wa) * _limbs(b_bits, wb)


def one_hot_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The column of the single 1 in each row (last dim) of ``x`` — an int64 tensor of x.shape[:-1] —
    where every row of ``x`` holds exactly one 1 and 0 elsewhere; else None. Checked on the values
    themselves (any real dtype), so whoever made ``x`` cannot make a product that uses it inexact."""
    if x.dim() == 0 or x.shape[-1] == 0 or x.dtype == torch.bool or x.is_complex():
        return None
    flat = x.reshape(-1, x.shape[-1])
    if not bool((flat.sum(-1) == 1).all()):  # checked first, it keeps nonzero()'s list short on other inputs
        return None
    where = torch.nonzero(flat)  # (row, column) pairs in row-major order
    n = flat.shape[0]
    if where.shape[0] != n or not torch.equal(where[:, 0], torch.arange(n, device=x.device)):
        return None  # some row has no nonzero, or several
    return where[:, 1].reshape(x.shape[:-1])  # a row's one nonzero is its sum, 1


def select_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """one_hot(rows, K) @ table for a 2-D ``table`` (K, N) of integers (int64, or float64 holding
    them exactly), as int64: a row gather, exact — each output entry is 1 * one table entry."""
    if table.dim() != 2:
        raise ValueError(f"select_rows needs a 2-D table, got shape {tuple(table.shape)}")
    picked = table.index_select(0, rows.reshape(-1)).reshape(*rows.shape, table.shape[1])
    return picked if picked.dtype == torch.int64 else picked.to(torch.int64)
