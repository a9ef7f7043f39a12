"""Exact arithmetic in the ring Z_2^l (1 <= l <= 64), on int64 tensors, CPU or CUDA.

Every value is kept as its signed representative in [-2^(l-1), 2^(l-1)): int64 arithmetic wraps
mod 2^64, and reducing mod 2^l is a sign extension from bit l-1, so results are exact in Z_2^l.
Matrix products are computed exactly mod 2^64 as well: on CPU torch's int64 matmul wraps like
every other int64 op; CUDA has no int64 GEMM, so there one float64 GEMM is used when the operands
are small enough for every partial sum to be an exact integer (< 2^53), else 16-bit limbs in float64.
"""
from __future__ import annotations

import math

import torch

from .errors import UserError

FLOAT64_EXACT_BITS = 53
LIMB_BITS = 16
LIMBS = 64 // LIMB_BITS


class Ring:
    """The ring Z_2^bits with two's-complement signed representatives."""

    def __init__(self, bits: int):
        if not 2 <= bits <= 64:
            raise UserError(f"ring size must be between 2 and 64 bits, got {bits}")
        self.bits = bits
        self._pad = 64 - bits

    def __repr__(self) -> str:
        return f"Ring(Z_2^{self.bits})"

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Signed representative mod 2^bits of an int64 tensor (already exact mod 2^64)."""
        if self._pad == 0:
            return x
        return torch.bitwise_right_shift(torch.bitwise_left_shift(x, self._pad), self._pad)

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, real: torch.Tensor, scale: int) -> torch.Tensor:
        """Fixed-point encoding: round(real * 2^scale), which must fit the ring."""
        scaled = torch.round(real.double() * 2.0**scale)
        limit = 2.0 ** (self.bits - 1)
        if scaled.numel() and (not torch.isfinite(scaled).all() or scaled.max() >= limit or scaled.min() < -limit):
            worst = real.double().abs().max().item()
            raise UserError(
                f"value {worst:.4g} does not fit a {self.bits}-bit ring at {scale} fractional bits"
            )
        return scaled.to(torch.int64)

    def encode_public(self, real: torch.Tensor, scale: int) -> torch.Tensor:
        """round(real * 2^scale) mod 2^bits: a public operand of an addition or product may wrap,
        since only the result has to fit (the ring is a ring)."""
        scaled = torch.round(real.double() * 2.0**scale)
        if scaled.numel() and not torch.isfinite(scaled).all():
            raise UserError(f"public constant is not finite at {scale} fractional bits")
        wrapped = torch.fmod(scaled, 2.0**64)  # exact in IEEE arithmetic
        wrapped = torch.where(wrapped >= 2.0**63, wrapped - 2.0**64, wrapped)
        wrapped = torch.where(wrapped < -(2.0**63), wrapped + 2.0**64, wrapped)
        return self.reduce(wrapped.to(torch.int64))

    @staticmethod
    def decode(x: torch.Tensor, scale: int) -> torch.Tensor:
        return x.double() * 2.0 ** (-scale)

    # -- arithmetic -------------------------------------------------------------------------
    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.reduce(a + b)

    def neg(self, a: torch.Tensor) -> torch.Tensor:
        return self.reduce(-a)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.reduce(a * b)

    def shl(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """Multiply by the public integer 2^k."""
        return self.reduce(torch.bitwise_left_shift(a, k)) if k < 64 else torch.zeros_like(a)

    def sum(self, a: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
        return self.reduce(a.sum(dim=dims, keepdim=keepdim))

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.reduce(matmul_mod64(a, b))

    @staticmethod
    def trunc_floor(a: torch.Tensor, shift: int) -> torch.Tensor:
        """Exact (faithful) truncation: floor(a / 2^shift) of the signed representative."""
        return torch.bitwise_right_shift(a, shift)

    def trunc_nearest(self, a: torch.Tensor, shift: int) -> torch.Tensor:
        """floor((a + 2^(shift-1)) / 2^shift): round to nearest. The public offset is a local
        addition in MPC, so this costs the same truncation protocol as a floor, and its error is
        unbiased (a floor's -1/2 LSB average adds up coherently along a chain of products)."""
        if shift == 0:
            return a
        return torch.bitwise_right_shift(self.reduce(a + (1 << (shift - 1))), shift)


def magnitude_bits(x: torch.Tensor) -> int:
    """Smallest m with |x| < 2^m for every element (0 for an all-zero tensor)."""
    if x.numel() == 0:
        return 0
    top = x.abs().max().item()
    # abs(-2^63) overflows to itself: treat as 64 bits.
    return 64 if top < 0 else int(top).bit_length()


def matmul_mod64(a: torch.Tensor, b: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """torch.matmul of int64 tensors, exact mod 2^64 (batched and broadcast like torch.matmul).

    ``method``: "auto" (int64 on CPU; elsewhere one float64 GEMM when that is exact, else limbs),
    "int64" (CPU only) or "limbs" (always the limb path; used to test it on CPU).
    """
    if method == "int64" or (method == "auto" and a.device.type == "cpu"):
        return torch.matmul(a, b)
    k = a.shape[-1]
    if method != "limbs" and magnitude_bits(a) + magnitude_bits(b) + math.ceil(math.log2(max(k, 1))) <= FLOAT64_EXACT_BITS:
        return torch.matmul(a.double(), b.double()).to(torch.int64)
    if LIMBS * k * (2**LIMB_BITS - 1) ** 2 >= 2**FLOAT64_EXACT_BITS:
        raise UserError(f"matrix product with inner dimension {k} is too long for exact limb arithmetic")
    a_limbs = [_limb(a, i) for i in range(LIMBS)]
    b_limbs = [_limb(b, i) for i in range(LIMBS)]
    out = torch.zeros(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                      dtype=torch.int64, device=a.device)
    for s in range(LIMBS):
        # All limb pairs (i, s - i) contribute at weight 2^(16 s): one GEMM over a K*(s+1) inner dim.
        lhs = torch.cat([a_limbs[i] for i in range(s + 1)], dim=-1)
        rhs = torch.cat([b_limbs[s - i] for i in range(s + 1)], dim=-2)
        partial = torch.matmul(lhs, rhs).to(torch.int64)  # < 2^53: exact
        out = out + torch.bitwise_left_shift(partial, LIMB_BITS * s)
    return out


def _limb(x: torch.Tensor, i: int) -> torch.Tensor:
    """The i-th unsigned 16-bit limb of x's 64-bit two's-complement pattern, as float64."""
    return torch.bitwise_and(torch.bitwise_right_shift(x, LIMB_BITS * i), (1 << LIMB_BITS) - 1).double()


EXACT_MSB_LIMIT_BITS = 62  # |x| < 2^62 keeps x + 2^62 below 2^63, where the wrap test is exact


def logical_shift(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bitwise_right_shift(t, k) & ((1 << (64 - k)) - 1)
