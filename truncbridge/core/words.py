"""128-bit integers as pairs of int64 tensors, CPU or CUDA: the words of ``core.wide``'s values.

``Wide`` holds ``hi * 2^64 + unsigned(lo)`` (the 128-bit two's complement of a field element), or
just the int64 ``lo`` where ``hi`` is None, with a proven bound on the magnitude. The functions
take and return words: (hi, lo) pairs of int64 tensors (or Python ints for constants), exact mod
2^128; ``as_ints`` / ``split`` convert to and from Python ints.
"""
from __future__ import annotations

import numpy as np
import torch

M32, M62, M64 = (1 << 32) - 1, (1 << 62) - 1, (1 << 64) - 1
I64, I127, TWO64 = 1 << 63, 1 << 127, 2.0**64


def split(c: int) -> tuple[int, int]:
    """A Python int in [-2^127, 2^127) as int64 words (hi, lo)."""
    lo = c & M64
    return c >> 64, lo - (1 << 64) if lo >> 63 else lo


def _u(l):
    return l ^ -I64  # unsigned order of words as signed order


def add(ah, al, bh, bl):
    l = al + bl
    return ah + bh + (_u(l) < _u(al)).long(), l


def mul(ah, al, bh, bl):
    """a * b mod 2^128: the full product of the low words from 32-bit halves, cross terms mod 2^64."""
    a0, a1, b0, b1 = al & M32, al >> 32 & M32, bl & M32, bl >> 32 & M32
    p01, p10 = a0 * b1, a1 * b0
    mid = ((a0 * b0) >> 32 & M32) + (p01 & M32) + (p10 & M32)
    return a1 * b1 + (p01 >> 32 & M32) + (p10 >> 32 & M32) + (mid >> 32) + ah * bl + al * bh, al * bl


def shl(h, l, k: int):
    if k >= 64:
        return (l << (k - 64) if k < 128 else torch.zeros_like(l)), torch.zeros_like(l)
    return ((h << k) | (l >> (64 - k) & ((1 << k) - 1)), l << k) if k else (h, l)


def sar(h, l, k: int):  # floor(x / 2^k)
    if k >= 64:
        return h >> 63, h >> min(k - 64, 63)
    return (h >> k, (l >> k & ((1 << (64 - k)) - 1)) | (h << (64 - k))) if k else (h, l)


def greater(h, l, c: int):
    """x > c elementwise (h None: x is l)."""
    if not (-I64 <= c < I64 if h is None else -I127 <= c < I127):
        return torch.full_like(l, c < 0, dtype=torch.bool)
    ch, cl = split(c)
    return l > c if h is None else (h > ch) | ((h == ch) & (_u(l) > (cl ^ -I64)))


def as_float(h, l):
    """float64 of x within 2^-50 relative (correctly rounded where x fits int64)."""
    lf = l.double()
    return torch.where(h == l >> 63, lf, h.double() * TWO64 + torch.where(l < 0, lf + TWO64, lf))


def image(x) -> torch.Tensor:
    """float64 of a matmul operand (a ``Wide``, or a tensor of integers), within 2^-50 relative."""
    return x.double() if isinstance(x, torch.Tensor) else as_float(*x.words())


def certified_below(a: torch.Tensor, b: torch.Tensor, limit: float) -> bool:
    """Whether every entry of the exact integer product a @ b is below ``limit`` in magnitude, from
    float64 images within 2^-50 of them: the float product is within (2^-48 + k 2^-52) sum|a||b| of
    the exact one (the images' rounding, then the GEMM's), and |a| @ |b| bounds that sum to within
    its own rounding (k 2^-52)."""
    k = a.shape[-1]
    slack = (2.0**-48 + k * 2.0**-52) * (1 + k * 2.0**-52) * (1 + 2.0**-47)
    worst = torch.matmul(a, b).abs() + torch.matmul(a.abs(), b.abs()) * slack
    return bool((worst < limit * (1 - 2.0**-50)).all())


def from_float(t):
    """Integer-valued float64 as (hi, lo), exactly mod 2^128 (each float op here is exact)."""
    small = t.abs() < 2.0**63
    ls = torch.where(small, t, 0.0).long()
    hf = torch.floor(t * 2.0**-64)
    lf = t - hf * TWO64  # in [0, 2^64) and a multiple of t's ulp (>= 2^10 where |t| >= 2^63)
    hf = torch.fmod(hf, TWO64)
    hf = hf - TWO64 * (hf >= 2.0**63) + TWO64 * (hf < -(2.0**63))
    lb = torch.where(lf >= 2.0**63, lf - TWO64, lf).long()
    return torch.where(small, ls >> 63, hf.long()), torch.where(small, ls, lb)


def extremes(h, l) -> tuple[int, int]:
    if not l.numel():
        return 0, 0
    if h is None:
        return tuple(int(t) for t in torch.aminmax(l))
    hmin, hmax = torch.aminmax(h)
    lmin = torch.where(h == hmin, _u(l), I64 - 1).min()
    lmax = torch.where(h == hmax, _u(l), -I64).max()
    return (int(hmin) << 64) + int(lmin) + I64, (int(hmax) << 64) + int(lmax) + I64


def as_ints(h, l) -> np.ndarray:
    """Exact Python ints (numpy object array, CPU)."""
    hi, lo = h.cpu().numpy().astype(object), l.cpu().numpy().view(np.uint64).astype(object)
    return np.asarray(hi * (1 << 64) + lo, dtype=object)  # numpy makes 0-d results Python ints


class Wide:
    """Field elements: hi * 2^64 + unsigned(lo), or the int64 ``lo`` where ``hi`` is None. Every
    |value| <= ``bound``; ``tight``: it was measured (measuring again gains nothing)."""

    __slots__ = ("lo", "hi", "bound", "tight")

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor | None = None, bound: int | None = None, tight=False):
        self.lo, self.hi, self.bound, self.tight = lo, hi, bound, tight
        if bound is None:
            lo_, hi_ = extremes(hi, lo)
            self.bound, self.tight = max(-lo_, hi_), True

    shape = property(lambda self: self.lo.shape)
    device = property(lambda self: self.lo.device)

    def numel(self) -> int:
        return self.lo.numel()

    def to(self, device) -> Wide:
        return Wide(self.lo.to(device), None if self.hi is None else self.hi.to(device), self.bound, self.tight)

    def cpu(self) -> Wide:
        return self.to("cpu")

    def words(self):
        return (self.lo >> 63 if self.hi is None else self.hi), self.lo

    def measure(self, wide: bool = False) -> int:
        """Tighten ``bound`` by measuring (wide values only if asked: it costs ~8 passes), and drop
        ``hi`` where every value fits int64."""
        if not self.tight and (wide or self.hi is None):
            self.bound, self.tight = Wide(self.lo, self.hi).bound, True
            self.hi = None if self.bound < I64 else self.hi
        return self.bound
