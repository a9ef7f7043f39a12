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


# -- randomized truncation protocols (Z_2^64 only) ------------------------------------------
# What an MPC truncation outputs, simulated on the shares the parties would hold. Each function
# takes the ring value x (int64, Z_2^64), the shift k >= 1 and a torch.Generator, and returns the
# opened result: the sum of the parties' output shares mod 2^64 (int64 wraps, as everywhere here).
# Steps that are linear in the shares (public corrections, dealer-shared helper values) are
# summed directly: their sharing cannot change the opened sum.

RING64_HALF = 1 << 63


def uniform_ring64(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """CrypTen's generate_random_ring_element: randint(-2^63, 2^63 - 1), so 2^63 - 1 is never drawn."""
    r = torch.randint(-RING64_HALF, RING64_HALF - 1, tuple(shape), generator=generator, dtype=torch.int64,
                      device=generator.device)
    return r.to(device)


def _random_shares(x: torch.Tensor, parties: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Additive shares of x: parties - 1 uniform, the last one x minus their sum (mod 2^64)."""
    shares = [uniform_ring64(x.shape, generator, x.device) for _ in range(parties - 1)]
    return shares + [x - sum(shares)]


def count_wraps(shares: list[torch.Tensor]) -> torch.Tensor:
    """CrypTen's common.util.count_wraps: +1 per signed overflow (two positive partial sums giving a
    negative one), -1 per underflow, adding the shares left to right. Like CrypTen, it tests the new
    partial sum for > 0, so -2^63 + -2^63 = 0 counts no underflow."""
    wraps = torch.zeros_like(shares[0])
    total = shares[0]
    for share in shares[1:]:  # a loop over parties, not elements
        new = total + share
        overflow = (total > 0) & (share > 0) & (new < 0)
        underflow = (total < 0) & (share < 0) & (new > 0)
        wraps = wraps + overflow.long() - underflow.long()
        total = new
    return wraps


def _div_toward_zero(share: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.div(share, 1 << shift, rounding_mode="trunc")


def trunc_crypten_local(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """CrypTen 0.4.1 ``div_`` with 2 parties: each party divides its share toward zero. That is
    unbiased (x / 2^k on average: the two shares round in opposite directions), so the backend adds
    no 2^(k-1) offset before it (an offset would bias every truncation by +1/2 LSB).
    With probability about |x| / 2^64 the shares wrapped and the result is off by -sign(x) 2^(64-k);
    with about |x| / 2^65 (both shares of x's sign, no wrap) it is -1 LSB (x > 0) or +2 (x < 0)."""
    return sum(_div_toward_zero(s, shift) for s in _random_shares(x, 2, generator))


def trunc_crypten_wraps(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """CrypTen 0.4.1 ``div_`` with 3 parties: beaver.truncate with beaver.wraps and the TFP wrap_rng.
    theta_x = theta_z + sum_i beta_i - theta_r is the number of wraps of x's shares, short of the
    eta term (the wrap of x + r itself) that CrypTen leaves out: off by 2^(64-k) with probability
    about |x| / 2^64; otherwise x / 2^k + (-3, 3) LSB, unbiased (three shares divided toward zero)."""
    xs = _random_shares(x, 3, generator)
    rs = [uniform_ring64(x.shape, generator, x.device) for _ in range(3)]  # rank 0 draws them and scatters
    theta_r = count_wraps(rs)  # computed by rank 0, then shared
    beta_xr = sum(count_wraps([xi, ri]) for xi, ri in zip(xs, rs))  # each party, locally
    theta_z = count_wraps([xi + ri for xi, ri in zip(xs, rs)])  # z's shares gathered at rank 0
    theta_x = theta_z + beta_xr - theta_r  # "TODO: Incorporate eta_xr" in CrypTen
    return sum(_div_toward_zero(s, shift) for s in xs) - theta_x * 4 * ((1 << 62) // (1 << shift))


EXACT_MSB_LIMIT_BITS = 62  # |x| < 2^62 keeps x + 2^62 below 2^63, where the wrap test is exact


def logical_shift(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bitwise_right_shift(t, k) & ((1 << (64 - k)) - 1)


def trunc_exact_msb(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """truncbridge.crypten.truncation.exact_truncate: open c = x + 2^62 + r for a dealer's uniform r
    (shared with r >> k and msb(r)), the wrap of c is msb(r) AND NOT msb(c). Equal to
    floor(x / 2^k) + [x mod 2^k + r mod 2^k >= 2^k] (stochastic rounding) for |x| < 2^62 — no
    2^(k-1) offset — and, like the protocol, wrong outside that range."""
    r = uniform_ring64(x.shape, generator, x.device)
    c = x + (1 << EXACT_MSB_LIMIT_BITS) + r
    wrapped_if_msb = torch.bitwise_left_shift((c >= 0).long(), 64 - shift)
    return ((r < 0).long() * wrapped_if_msb - logical_shift(r, shift) + logical_shift(c, shift)
            - (1 << (EXACT_MSB_LIMIT_BITS - shift)))
