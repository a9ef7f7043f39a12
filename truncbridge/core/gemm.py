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
            yield torch.matmul(al, bl).to(torch.int64), wa * i + wb * j


def gemm_count(a_bits: int, b_bits: int, k: int) -> int:
    """How many float64 GEMMs ``matmul_parts`` runs for these magnitudes."""
    wa, wb = limb_plan(a_bits, b_bits, k)
    return _limbs(a_bits, wa) * _limbs(b_bits, wb)
