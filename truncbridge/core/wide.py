"""Exact arithmetic in Z_2^l (65 <= l <= 128) and in F_p (3 <= p < 2^127) on torch tensors, CPU or CUDA.

Representation (``Wide``): a value is ``hi * 2^64 + unsigned(lo)``, two int64 tensors holding the
128-bit two's complement of the element's signed representative; ``hi`` is None when the value
fits int64 (then ``lo`` is it). Plans keep values small, so most ops are one int64 op and widen
only when a result may not fit. Which path runs is decided from ``bound``, a proven bound on the
magnitude (a Python int): measured (torch.aminmax) where a value is made, or where a tighter one
would pick a cheaper path, and otherwise derived from the operands' (a + b, a * b, k * a * b, ...).
Two int64 tensors, not four 32-bit limbs: the narrow case is then the int64 tensor itself, and
128-bit adds and shifts are a few int64 ops (a product is ~30, or ~8 below 2^112 via float64).

Z_2^l: 128-bit arithmetic wraps mod 2^128, and reducing is a sign extension of ``hi``.
F_p: signed representatives lie in [-(p-1)/2, (p-1)/2], below 2^126, so a result whose bound is
below 2^127 is exact in 128 bits; it is reduced by float64 quotient estimates (Barrett, ~49 bits
per step) and a last +-p. A product, sum or matrix product whose bound reaches 2^127 (values near
p/2, e.g. wrapped public constants) takes exact Python ints (numpy object arrays, on the CPU) on
just the elements that need it (a whole matmul, though). ``PrimeField.bits`` is the largest b with
2^(b-1) <= (p-1)/2: every signed b-bit integer is a field element.
Matrix products are float64 GEMMs (``gemm.matmul_parts``, as few as the magnitudes need) added up
in this arithmetic.
"""
from __future__ import annotations

import math

import numpy as np
import sympy
import torch

from .errors import UserError
from .gemm import magnitude_bits, matmul_parts

M32, M62, M64 = (1 << 32) - 1, (1 << 62) - 1, (1 << 64) - 1
I64, I127 = 1 << 63, 1 << 127  # |int64| < I64 (but -I64); the prime field's exact 128-bit results: |x| < I127
TWO64 = 2.0**64
FLOAT_HI_LIMIT = 1 << 112  # an int64 product below this gets its high word from float64 (error < 1/4)


def _split(c: int) -> tuple[int, int]:
    """A Python int in [-2^127, 2^127) as the int64 words (hi, lo)."""
    lo = c & M64
    return c >> 64, lo - (1 << 64) if lo >> 63 else lo


def _u(l):
    """The unsigned order of int64 words as the signed order: flip the sign bit."""
    return l ^ -I64


def _add(ah, al, bh, bl):
    l = al + bl
    return ah + bh + (_u(l) < _u(al)).long(), l


def _mul(ah, al, bh, bl):
    """a * b mod 2^128: the full product of the low words from 32-bit halves, the cross terms mod 2^64."""
    a0, a1, b0, b1 = al & M32, al >> 32 & M32, bl & M32, bl >> 32 & M32
    p01, p10 = a0 * b1, a1 * b0
    mid = ((a0 * b0) >> 32 & M32) + (p01 & M32) + (p10 & M32)
    return a1 * b1 + (p01 >> 32 & M32) + (p10 >> 32 & M32) + (mid >> 32) + ah * bl + al * bh, al * bl


def _mul_narrow(a, b):
    """The exact product of int64 tensors with |a * b| < 2^112: the low word wraps, the high word is
    (a * b - signed low word) / 2^64 from float64, off by < 1/4 before rounding."""
    l = a * b
    return torch.round((a.double() * b.double() - l.double()) * 2.0**-64).long() + (l >> 63), l


def _shl(h, l, k: int):
    if k >= 128:
        return torch.zeros_like(l), torch.zeros_like(l)
    if k >= 64:
        return l << (k - 64), torch.zeros_like(l)
    return ((h << k) | (l >> (64 - k) & ((1 << k) - 1)), l << k) if k else (h, l)


def _sar(h, l, k: int):
    """floor(x / 2^k)."""
    if k >= 64:
        return h >> 63, h >> min(k - 64, 63)
    return (h >> k, (l >> k & ((1 << (64 - k)) - 1)) | (h << (64 - k))) if k else (h, l)


def _gt(h, l, c: int):
    """x > c elementwise, for a Python int c."""
    if not (-I64 <= c < I64 if h is None else -I127 <= c < I127):
        return torch.full_like(l, c < 0, dtype=torch.bool)
    if h is None:
        return l > c
    ch, cl = _split(c)
    return (h > ch) | ((h == ch) & (_u(l) > (cl ^ -I64)))


def _float(h, l):
    """float64 of x, within 2^-50 relative (exactly rounded where x fits int64)."""
    lf = l.double()
    return torch.where(h == l >> 63, lf, h.double() * TWO64 + torch.where(l < 0, lf + TWO64, lf))


def _from_float(t):
    """An integer-valued float64 tensor as (hi, lo), exactly mod 2^128 (every float op here is exact)."""
    small = t.abs() < 2.0**63
    ls = torch.where(small, t, 0.0).long()
    hf = torch.floor(t * 2.0**-64)
    lf = t - hf * TWO64  # in [0, 2^64) and a multiple of t's ulp (>= 2^10 where |t| >= 2^63)
    hf = torch.fmod(hf, TWO64)
    hf = hf - TWO64 * (hf >= 2.0**63) + TWO64 * (hf < -(2.0**63))
    lb = torch.where(lf >= 2.0**63, lf - TWO64, lf).long()
    return torch.where(small, ls >> 63, hf.long()), torch.where(small, ls, lb)


def _extremes(h, l) -> tuple[int, int]:
    if h is None:
        lo, hi = torch.aminmax(l)
        return int(lo), int(hi)
    hmin, hmax = torch.aminmax(h)
    lmin = torch.where(h == hmin, _u(l), I64 - 1).min()
    lmax = torch.where(h == hmax, _u(l), -I64).max()
    return (int(hmin) << 64) + int(lmin) + I64, (int(hmax) << 64) + int(lmax) + I64


def _obj(h, l) -> np.ndarray:
    """Exact Python ints (a numpy object array, CPU)."""
    return h.cpu().numpy().astype(object) * (1 << 64) + l.cpu().numpy().view(np.uint64).astype(object)


def _unobj(r, device):
    r = np.asarray(r, dtype=object)
    flat = r.reshape(-1)  # numpy gives Python ints, not arrays, for 0-d object results
    lo = (flat & M64).astype(np.uint64).view(np.int64).reshape(r.shape)
    hi = (flat >> 64).astype(np.int64).reshape(r.shape)
    return torch.from_numpy(hi).to(device), torch.from_numpy(lo).to(device)


class Wide:
    """Field elements: hi * 2^64 + unsigned(lo), or the int64 ``lo`` itself where ``hi`` is None.
    Every |value| <= ``bound``; ``tight``: the bound was measured (measuring again gains nothing)."""

    __slots__ = ("lo", "hi", "bound", "tight")

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor | None = None, bound: int | None = None, tight=False):
        self.lo, self.hi = lo, hi
        if bound is None:
            lo_, hi_ = _extremes(hi, lo) if lo.numel() else (0, 0)
            bound, tight = max(-lo_, hi_), True
        self.bound, self.tight = bound, tight

    shape = property(lambda self: self.lo.shape)
    device = property(lambda self: self.lo.device)

    def numel(self) -> int:
        return self.lo.numel()

    def to(self, device) -> Wide:
        return Wide(self.lo.to(device), None if self.hi is None else self.hi.to(device), self.bound, self.tight)

    def cpu(self) -> Wide:
        return self.to("cpu")

    def words(self):
        """(hi, lo), with hi made where the value is narrow."""
        return (self.lo >> 63 if self.hi is None else self.hi), self.lo

    def measure(self) -> int:
        """Tighten ``bound`` to the exact maximum magnitude, and drop ``hi`` if every value fits int64."""
        if not self.tight:
            fresh = Wide(self.lo, self.hi)
            self.bound, self.tight = fresh.bound, True
            if self.hi is not None and self.bound < I64:
                self.hi = None
        return self.bound


def _as_wide(x) -> Wide:
    return x if isinstance(x, Wide) else Wide(x.to(torch.int64))


class _Field:
    """Shared by both fields; a subclass sets bits, prime, top (the largest element), low (the
    smallest) and defines _reduce (into the field, from an exact result) and _py (the same on a Python int)."""

    prime: int | None = None

    def __init__(self):
        self._consts: dict = {}

    def _fit(self, h, l, bound: int) -> Wide:
        """The field element of an exact result (h None: the int64 l), |result| <= bound; for F_p,
        bound < 2^127 (Z_2^l needs it only mod 2^128)."""
        if bound > self.top:
            h, l, bound = self._reduce(h, l, bound)
        return Wide(l, None if bound < I64 else h, bound)

    def _const(self, c: int, like) -> Wide:
        c = self._py(c)
        key = (c, like.device)
        if key not in self._consts:
            h, l = _split(c)
            hi = None if abs(c) < I64 else torch.tensor(h, device=like.device)
            self._consts[key] = Wide(torch.tensor(l, device=like.device), hi, abs(c), True)
        return self._consts[key]

    def _exact(self, fn, *vs) -> Wide:
        """fn on exact Python ints (numpy object arrays, CPU), reduced mod p: results of 2^127 and beyond."""
        return self._from_ints(fn(*(_obj(*v.words()) for v in vs)), vs[0].device)

    def _from_ints(self, r, device) -> Wide:
        r = np.asarray(r, dtype=object) % self.prime
        return self._fit(*_unobj(np.where(r > self.top, r - self.prime, r), device), self.top)

    # -- encoding ---------------------------------------------------------------------------
    def _extent(self, scaled: torch.Tensor):
        """(min, max) of an integer-valued float64 tensor as exact ints; None if one is not finite."""
        if not scaled.numel():
            return 0, 0
        lo, hi = (float(t) for t in torch.aminmax(scaled))
        return (int(lo), int(hi)) if math.isfinite(lo) and math.isfinite(hi) else None

    def _from_scaled(self, scaled: torch.Tensor, bound: int) -> Wide:
        if bound < I64:
            return self._fit(None, scaled.long(), bound)
        if self.prime is None or bound < I127:
            return self._fit(*_from_float(scaled), bound)
        return self._from_ints(np.frompyfunc(int, 1, 1)(scaled.cpu().numpy()), scaled.device)  # beyond 2^127

    def encode(self, real: torch.Tensor, scale: int) -> Wide:
        """Fixed-point encoding: round(real * 2^scale), which must fit the field."""
        scaled = torch.round(real.double() * 2.0**scale)
        ext = self._extent(scaled)
        if ext is None or ext[0] < self.low or ext[1] > self.top:
            worst = real.double().abs().max().item()
            raise UserError(f"value {worst:.4g} does not fit {self!r} at {scale} fractional bits")
        return self._from_scaled(scaled, max(-ext[0], ext[1]))

    def encode_public(self, real: torch.Tensor, scale: int) -> Wide:
        """round(real * 2^scale), wrapped into the field (only the result of a public op has to fit)."""
        scaled = torch.round(real.double() * 2.0**scale)
        ext = self._extent(scaled)
        if ext is None:
            raise UserError(f"public constant is not finite at {scale} fractional bits")
        return self._from_scaled(scaled, max(-ext[0], ext[1]))

    def decode(self, v: Wide, scale: int) -> torch.Tensor:
        return self.to_float(v) * 2.0 ** (-scale)

    def from_int64(self, x: torch.Tensor) -> Wide:
        v = Wide(x)
        return self._fit(None, x, v.bound)

    # -- arithmetic (``in_place``: the first operand may be overwritten; used on int64 paths) -----
    def add(self, a: Wide, b: Wide, in_place: bool = False) -> Wide:
        if a.bound + b.bound >= I64:
            a.measure(), b.measure()  # may find both fit int64 after all
        bound = a.bound + b.bound
        if bound < I64 and a.hi is None and b.hi is None:
            return self._fit(None, a.lo.add_(b.lo) if in_place else a.lo + b.lo, bound)
        return self._fit(*_add(*a.words(), *b.words()), bound)

    def neg(self, a: Wide, in_place: bool = False) -> Wide:
        if a.hi is None and a.bound < I64:
            return self._fit(None, a.lo.neg_() if in_place else -a.lo, a.bound)
        h, l = a.words()
        return self._fit(~h + (l == 0).long(), -l, a.bound)

    def mul(self, a: Wide, b: Wide, in_place: bool = False) -> Wide:
        if a.bound * b.bound >= I64:
            a.measure(), b.measure()
        bound = a.bound * b.bound
        if a.hi is None and b.hi is None and bound < FLOAT_HI_LIMIT:
            if bound < I64:
                return self._fit(None, a.lo.mul_(b.lo) if in_place else a.lo * b.lo, bound)
            return self._fit(*_mul_narrow(a.lo, b.lo), bound)
        if self.prime is not None and bound >= I127:
            return self._mul_exact(a, b)
        return self._fit(*_mul(*a.words(), *b.words()), bound)

    def _mul_exact(self, a: Wide, b: Wide) -> Wide:
        """F_p products where some may reach 2^127: 128-bit where the operands' exponents allow
        (|fl(x)| < 2^e, fl within 2^-50: e_a + e_b <= 126 keeps |a b| < 2^127), Python ints elsewhere."""
        words = torch.broadcast_tensors(*a.words(), *b.words())
        shape = words[0].shape
        ah, al, bh, bl = (w.reshape(-1) for w in words)
        big = torch.frexp(_float(ah, al)).exponent + torch.frexp(_float(bh, bl)).exponent > 126
        h, l = self._fit(*_mul(ah, al, bh, bl), I127).words()  # wrong where big: replaced below
        idx = big.nonzero().reshape(-1)
        if idx.numel():
            exact = self._from_ints(_obj(ah[idx], al[idx]) * _obj(bh[idx], bl[idx]), l.device)
            h, l = h.clone(), l.clone()
            h[idx], l[idx] = exact.words()
        return self._fit(h.reshape(shape), l.reshape(shape), self.top)

    def shl(self, a: Wide, k: int, in_place: bool = False) -> Wide:
        """Multiply by the public integer 2^k (any k >= 0)."""
        if a.bound << k >= I64:
            a.measure()
        bound = a.bound << k
        if a.hi is None and bound < I64:
            return self._fit(None, a.lo.bitwise_left_shift_(k) if in_place else a.lo << k, bound)
        if self.prime is not None and bound >= I127:
            return self.mul(a, self._const(pow(2, k, self.prime), a))
        return self._fit(*_shl(*a.words(), k), bound)

    def sum(self, a: Wide, dims: list[int], keepdim: bool) -> Wide:
        n = math.prod(a.shape[d] for d in dims) if dims else a.numel()
        if n * a.bound >= I64:
            a.measure()
        bound = n * a.bound
        if a.hi is None and bound < I64:
            return self._fit(None, a.lo.sum(dims, keepdim), bound)
        if self.prime is not None and bound >= I127:
            return self._exact(lambda x: x.sum(axis=tuple(dims) or None, keepdims=keepdim), a)
        h, l = a.words()
        lo32, hi32 = (t.sum(dims, keepdim) for t in (l & M32, l >> 32 & M32))  # exact below 2^31 terms
        return self._fit(*_add(h.sum(dims, keepdim) + (hi32 >> 32), hi32 << 32, 0, lo32), bound)

    def matmul(self, a, b, a_bits: int | None = None, b_bits: int | None = None) -> Wide:
        """torch.matmul of field elements (``Wide``, or int64 / float64 tensors of integers with
        optional known magnitude bits): exact GEMM parts added up mod 2^128 (mod 2^64 when small)."""
        (la, ma), (lb, mb) = self._limbs(a, a_bits), self._limbs(b, b_bits)
        bound = a.shape[-1] << (ma + mb)
        if self.prime is not None and bound >= I127:
            return self._exact(np.matmul, _as_wide(a), _as_wide(b))
        parts = ((p, s + sa + sb) for ta, wa, sa in la for tb, wb, sb in lb for p, s in matmul_parts(ta, tb, wa, wb))
        h = l = None
        for p, s in parts:
            if bound < I64:  # the sum fits int64: int64 wraps like every partial sum
                if s < 64:
                    l = p.bitwise_left_shift_(s) if l is None else l.add_(p.bitwise_left_shift_(s))
            elif s < 128:
                ph, pl = _shl(p >> 63, p, s)
                h, l = (ph, pl) if l is None else _add(h, l, ph, pl)
        return self._fit(h, l, bound)

    @staticmethod
    def _limbs(x, bits: int | None):
        """A matmul operand as (tensor, magnitude bits or None, shift) limbs, and its magnitude bits."""
        if isinstance(x, torch.Tensor):
            bits = magnitude_bits(x) if bits is None else bits
            return [(x, bits, 0)], bits
        if bits is None:
            bits = x.measure().bit_length()
        if x.hi is None:
            return [(x.lo, bits, 0)], bits
        c1, c2 = _sar(x.hi, x.lo, 62)[1] & M62, _sar(x.hi, x.lo, 124)[1]
        return [(x.lo & M62, 62, 0), (c1, 62, 62), (c2, None, 124)], bits

    def trunc_floor(self, a: Wide, shift: int, in_place: bool = False) -> Wide:
        """floor(a / 2^shift) of the signed representative."""
        bound = -(-a.bound >> shift)  # ceil(bound / 2^shift)
        if a.hi is None:
            k = min(shift, 63)
            return self._fit(None, a.lo.bitwise_right_shift_(k) if in_place else a.lo >> k, bound)
        return self._fit(*_sar(a.hi, a.lo, shift), bound)

    def trunc_nearest(self, a: Wide, shift: int, in_place: bool = False) -> Wide:
        """floor(reduce(a + 2^(shift-1)) / 2^shift), as ``Ring.trunc_nearest``."""
        if shift == 0:
            return a
        return self.trunc_floor(self.add(a, self._const(1 << (shift - 1), a), in_place), shift, True)

    def nonneg(self, a: Wide) -> Wide:
        return Wide(((a.lo if a.hi is None else a.hi) >= 0).long(), None, 1, True)

    def move(self, fn, xs: list[Wide]) -> Wide:
        """A data movement, the same on every word."""
        bound = max(x.bound for x in xs)
        if all(x.hi is None for x in xs):
            return Wide(fn([x.lo for x in xs]), None, bound)
        return Wide(fn([x.lo for x in xs]), fn([x.words()[0] for x in xs]), bound)

    def linear(self, fn, xs: list[Wide]) -> Wide:
        raise UserError(f"{self!r}: this local op has no exact wide implementation (add, neg, sum and moves have)")

    # -- reading values -----------------------------------------------------------------------
    def outside_bits(self, v: Wide, bits: int) -> int:
        """Elements outside [-2^(bits-1), 2^(bits-1))."""
        half = 1 << (bits - 1) if bits >= 1 else 0
        if v.bound < half:
            return 0
        return int((_gt(v.hi, v.lo, half - 1) | ~_gt(v.hi, v.lo, -half - 1)).sum())

    @staticmethod
    def to_float(v: Wide) -> torch.Tensor:
        return v.lo.double() if v.hi is None else _float(v.hi, v.lo)

    @staticmethod
    def extremes(v: Wide) -> tuple[int, int]:
        return _extremes(v.hi, v.lo) if v.numel() else (0, 0)

    @staticmethod
    def to_ints(v: Wide) -> list:
        return v.lo.tolist() if v.hi is None else _obj(v.hi, v.lo).tolist()


class WideRing(_Field):
    """The ring Z_2^bits, 65 <= bits <= 128, with two's-complement signed representatives."""

    def __init__(self, bits: int):
        if not 65 <= bits <= 128:
            raise UserError(f"wide ring size must be between 65 and 128 bits, got {bits}")
        super().__init__()
        self.bits, self.top, self.low = bits, (1 << (bits - 1)) - 1, -(1 << (bits - 1))

    def __repr__(self) -> str:
        return f"WideRing(Z_2^{self.bits})"

    def _py(self, c: int) -> int:
        c &= (1 << self.bits) - 1
        return c - (1 << self.bits) if c > self.top else c

    def _reduce(self, h, l, bound):
        h = l >> 63 if h is None else h
        pad = 128 - self.bits
        return (h << pad) >> pad if pad else h, l, 1 << (self.bits - 1)


class PrimeField(_Field):
    """The prime field F_p, 3 <= p < 2^127, with signed representatives in [-(p-1)/2, (p-1)/2]."""

    def __init__(self, p: int):
        if not 3 <= p < I127:
            raise UserError(f"prime field modulus must be in [3, 2^127), got {p}")
        if not sympy.isprime(p):
            raise UserError(f"prime field modulus {p} is not prime")
        super().__init__()
        self.prime, self.top = int(p), int(p) // 2
        self.low, self.bits = -self.top, self.top.bit_length()

    def __repr__(self) -> str:
        return f"PrimeField(F_{self.prime})"

    def _py(self, c: int) -> int:
        c %= self.prime
        return c - self.prime if c > self.top else c

    def _reduce(self, h, l, bound):
        p, top = self.prime, self.top
        if h is None:
            if p < I64:
                r = torch.remainder(l, p)
                return None, torch.where(r > top, r - p, r), top
            h = l >> 63
        while bound >= p:  # subtract q * (p 2^t), q from float64 (|q| < 2^62): |x| <= c/2 + |x| 2^-49 after
            c = p << max(0, bound.bit_length() - p.bit_length() - 60)
            q = torch.round(_float(h, l) / float(c)).long()
            h, l = _add(h, l, *_mul(q >> 63, q, *_split(-c)))
            bound = c // 2 + 1 + (bound >> 49)
        if bound > top:  # |x| < p: one +-p
            above, below = _gt(h, l, top), ~_gt(h, l, -top - 1)
            (ph, pl), (nh, nl) = _split(p), _split(-p)
            dh = torch.where(above, nh, torch.where(below, ph, 0))
            h, l = _add(h, l, dh, torch.where(above, nl, torch.where(below, pl, 0)))
        return h, l, top
