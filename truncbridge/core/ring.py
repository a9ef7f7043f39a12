"""Exact arithmetic in the ring Z_2^l (1 <= l <= 64), on int64 tensors, CPU or CUDA.

Every value is kept as its signed representative in [-2^(l-1), 2^(l-1)): int64 arithmetic wraps
mod 2^64, and reducing mod 2^l is a sign extension from bit l-1, so results are exact in Z_2^l.
Matrix products are computed exactly mod 2^64 as well: by float64 GEMMs on as few limbs as the
operands' magnitudes need (``gemm``: usually one, since plans keep values small), or on CPU by
torch's int64 matmul (which wraps like every other int64 op) where limbs would cost more.
"""
from __future__ import annotations

import math

import torch

from .errors import UserError
from .gemm import gemm_count, magnitude_bits, matmul_parts


class Ring:
    """The ring Z_2^bits with two's-complement signed representatives."""

    prime = None  # a ring, not a prime field

    def __init__(self, bits: int):
        if not 2 <= bits <= 64:
            raise UserError(f"ring size must be between 2 and 64 bits, got {bits}")
        self.bits = bits
        self._pad = 64 - bits
        self._consts: dict = {}  # public offsets as 0-dim tensors, per device

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
        scaled = real.to(torch.float64, copy=True).mul_(2.0**scale).round_()  # one float64 buffer (a head's: 309 MB)
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
        return x.to(torch.float64, copy=True).mul_(2.0 ** (-scale))  # one new buffer, not two

    def from_int64(self, x: torch.Tensor) -> torch.Tensor:
        """Integers given as int64: their signed representatives."""
        return self.reduce(x)

    # -- arithmetic (``in_place``: the first operand may be overwritten) -----------------------
    def _reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """``reduce`` in place on a tensor this ring just made."""
        if self._pad:
            x.bitwise_left_shift_(self._pad).bitwise_right_shift_(self._pad)
        return x

    def add(self, a: torch.Tensor, b: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        return self._reduce_(a.add_(b) if in_place else a + b)

    def neg(self, a: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        return self._reduce_(a.neg_() if in_place else -a)

    def mul(self, a: torch.Tensor, b: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        return self._reduce_(a.mul_(b) if in_place else a * b)

    def mul_add(self, a: torch.Tensor, b: torch.Tensor, c: int) -> torch.Tensor:
        """a * b + c for a public integer c."""
        key = ((c + 2**63) % 2**64 - 2**63, a.device)  # as an int64 (the ring wraps anyway)
        if key not in self._consts:
            self._consts[key] = torch.tensor(key[0], dtype=torch.int64, device=a.device)
        return self._reduce_(torch.mul(a, b).add_(self._consts[key]))  # addcmul with a 0-dim tensor: 1.4x slower

    def shl(self, a: torch.Tensor, k: int, in_place: bool = False) -> torch.Tensor:
        """Multiply by the public integer 2^k."""
        if k >= 64:
            return a.zero_() if in_place else torch.zeros_like(a)
        return self._reduce_(a.bitwise_left_shift_(k) if in_place else torch.bitwise_left_shift(a, k))

    def sum(self, a: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
        return self._reduce_(a.sum(dim=dims, keepdim=keepdim))

    def matmul(self, a: torch.Tensor, b: torch.Tensor, a_bits: int | None = None, b_bits: int | None = None):
        return self._reduce_(matmul_mod64(a, b, a_bits=a_bits, b_bits=b_bits))

    @staticmethod
    def trunc_floor(a: torch.Tensor, shift: int, in_place: bool = False) -> torch.Tensor:
        """Exact (faithful) truncation: floor(a / 2^shift) of the signed representative (a shift past
        bit 63 leaves the sign, as shifting by 63 does)."""
        shift = min(shift, 63)
        return a.bitwise_right_shift_(shift) if in_place else torch.bitwise_right_shift(a, shift)

    def trunc_nearest(self, a: torch.Tensor, shift: int, in_place: bool = False) -> torch.Tensor:
        """floor((a + 2^(shift-1)) / 2^shift): round to nearest. The public offset is a local
        addition in MPC, so this costs the same truncation protocol as a floor, and its error is
        unbiased (a floor's -1/2 LSB average adds up coherently along a chain of products)."""
        if shift == 0:
            return a
        half = (1 << (shift - 1)) % 2**64  # 2^(shift-1) as a ring element (int64 wraps)
        half = half - 2**64 if half >= 2**63 else half
        return self._reduce_(a.add_(half) if in_place else a + half).bitwise_right_shift_(min(shift, 63))

    def nonneg(self, a: torch.Tensor) -> torch.Tensor:
        """1 where the signed value is >= 0, else 0 (a comparison's result, at scale 0)."""
        return (a >= 0).to(torch.int64)

    def move(self, fn, xs: list[torch.Tensor]) -> torch.Tensor:
        """A data movement (view, permute, cat, index, ...): the same on ring integers."""
        return fn(xs)

    def linear(self, fn, xs: list[torch.Tensor]) -> torch.Tensor:
        """Any other integer-linear local map: int64 wraps mod 2^64, reducing gives Z_2^l."""
        return self.reduce(fn(xs))

    # -- reading values -----------------------------------------------------------------------
    def outside_bits(self, v: torch.Tensor, bits: int) -> int:
        """Elements outside [-2^(bits-1), 2^(bits-1)): those that left a promised bit width."""
        if bits >= 64:
            return 0
        half = 1 << (bits - 1) if bits >= 1 else 0
        return int(((v >= half) | (v < -half)).sum())

    @staticmethod
    def to_float(v: torch.Tensor) -> torch.Tensor:
        return v.double()

    @staticmethod
    def to_ints(v: torch.Tensor) -> list:
        return v.tolist()


CPU_MAX_FLOAT64_GEMMS = 2  # up to this many limb GEMMs a CPU product always takes them; more, and tiny, it goes int64:
CPU_INT64_MACS_PER_GEMM = 2**15  # an int64 matmul wins only below this many multiply-adds per limb GEMM. torch 2.13,
# 1 thread: 2-4 ns per multiply-add, 25-65x one float64 GEMM from 128^3 up and 3-5x nine of them (128x768x3072: 1.16 s
# against 18 ms for one GEMM, 208 ms for nine); at 8^3 and 32x64x32 a GEMM's own overhead loses


LIMB_BLOCK_ELEMENTS = 1 << 22  # a larger right operand is cut into limbs a block at a time: a wide one (the head's
# 768 x 50257) a block of columns, a tall one (a one-hot embedding's 50257 x 768) a block of the inner dimension, whose
# products add up mod 2^64. Its float64 limbs (up to ~4 copies of it) never all exist at once; the products are the
# same integers.
LIMB_BLOCK_MIN_COLUMNS = 512  # narrower blocks split the left operand again for too little work: a one-hot
# embedding's 128 x 50257 by 50257 x 768 took 6.1 s in blocks of 83 columns against 1.7 s whole


def matmul_mod64(a: torch.Tensor, b: torch.Tensor, method: str = "auto", a_bits: int | None = None,
                 b_bits: int | None = None) -> torch.Tensor:
    """torch.matmul of integer tensors (int64, or float64 holding integers), exact mod 2^64.

    ``method``: "auto" (float64 GEMMs on as few limbs as the operands' magnitudes need; on CPU an
    int64 matmul instead for tiny products of many limbs, CPU_INT64_MACS_PER_GEMM), "int64" (CPU only) or
    "split" (always the float64 limbs; CUDA has no int64 GEMM). ``a_bits`` / ``b_bits``: known
    magnitude bits of the operands (``gemm.magnitude_bits``), else measured.
    """
    if method == "auto" and a.device.type == "cpu":
        a_bits = magnitude_bits(a) if a_bits is None else a_bits
        b_bits = magnitude_bits(b) if b_bits is None else b_bits
        count, macs = gemm_count(a_bits, b_bits, a.shape[-1]), math.prod(_product_shape(a, b)) * a.shape[-1]
        if count > CPU_MAX_FLOAT64_GEMMS and macs <= CPU_INT64_MACS_PER_GEMM * count:
            method = "int64"
    if method == "int64":
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    if b.dim() == 2 and b.numel() > LIMB_BLOCK_ELEMENTS and b.shape[0] > b.shape[1]:  # tall: inner blocks, added
        rows = max(1, LIMB_BLOCK_ELEMENTS // b.shape[1])
        parts = (matmul_mod64(a[..., k:k + rows], b[k:k + rows], "split", a_bits, b_bits) for k in range(0, b.shape[0], rows))
        out = next(parts)
        for part in parts:
            out.add_(part)
        return out
    cols = max(LIMB_BLOCK_MIN_COLUMNS, LIMB_BLOCK_ELEMENTS // max(b.shape[0], 1)) if b.dim() == 2 else 0
    if b.numel() > LIMB_BLOCK_ELEMENTS and 0 < cols < b.shape[1]:  # a column block at a time
        return torch.cat([matmul_mod64(a, b[:, j:j + cols], "split", a_bits, b_bits) for j in range(0, b.shape[1], cols)],
                         dim=-1)
    out = None
    for part, shift in matmul_parts(a, b, a_bits, b_bits):
        if shift >= 64:  # a multiple of 2^64
            continue
        if shift:
            part.bitwise_left_shift_(shift)
        out = part if out is None else out.add_(part)
    return out if out is not None else torch.zeros(_product_shape(a, b), dtype=torch.int64, device=a.device)


def _product_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    return broadcast_shape(tuple(a.shape[:-2]), tuple(b.shape[:-2])) + (a.shape[-2], b.shape[-1])


def broadcast_shape(x, y) -> tuple[int, ...]:
    """torch.broadcast_shapes of two shapes, in plain Python: torch's takes ~1 ms a call, more than a
    small product's whole matmul or a whole step of the online pass's bookkeeping."""
    x, y = tuple(x), tuple(y)
    n = max(len(x), len(y))
    x, y = (1,) * (n - len(x)) + x, (1,) * (n - len(y)) + y
    if any(p != q and 1 not in (p, q) for p, q in zip(x, y)):
        raise RuntimeError(f"shapes {x} and {y} do not broadcast")
    return tuple(q if p == 1 else p for p, q in zip(x, y))


EXACT_MSB_LIMIT_BITS = 62  # |x| < 2^62 keeps x + 2^62 below 2^63, where the wrap test is exact


def logical_shift(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bitwise_right_shift(t, k) & ((1 << (64 - k)) - 1)
