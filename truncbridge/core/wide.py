"""Exact arithmetic in Z_2^l (65 <= l <= 128) and F_p (3 <= p < 2^127) on torch tensors, CPU or CUDA.

A value (``Wide``) is ``hi * 2^64 + unsigned(lo)``, two int64 tensors holding the 128-bit two's
complement of the signed representative; ``hi`` is None where the value fits int64 (``lo`` is it).
Plans keep values small, so most ops are one int64 op; two words rather than 32-bit limbs keep the
wide case to a few int64 ops. The path follows ``bound``, a proven bound on the magnitude: measured
(torch.aminmax) where a value is made or where measuring may find a cheaper path, else derived
from the operands' (a + b, a * b, k * a * b, ...). Matmuls are ``gemm.matmul_parts`` float64
GEMMs (as few as the magnitudes need) added up in this arithmetic. Z_2^l: arithmetic wraps mod
2^128, reducing sign-extends ``hi``. F_p: representatives are below 2^126, so a result bounded
below 2^127 is exact in 128 bits, then reduced by float64 quotients (~49 bits a step) and a last
+-p; results that may reach 2^127 (values near p/2, e.g. wrapped constants) are Python ints
(numpy object arrays, CPU): the elements that need it for products, the whole op for sums and
matmuls. ``PrimeField.bits``: the largest b with 2^(b-1) <= (p-1)/2 (every signed b-bit integer is
an element). ``linear`` (a local map other than add, neg, sum or a move) raises: its coefficients
are unknown, so int64 results cannot be widened exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import words as w
from .errors import UserError
from .gemm import magnitude_bits, matmul_parts
from .words import I64, I127, M32, M62, M64, Wide

__all__ = ["PrimeField", "Wide", "WideRing"]


class _Field:
    """Both fields; a subclass sets bits, prime, modulus, top / low (the largest / smallest element)
    and _reduce (an exact result into the field)."""

    prime: int | None = None

    def _py(self, c: int) -> int:
        c %= self.modulus
        return c - self.modulus if c > self.top else c

    def _fit(self, h, l, bound: int, tight: bool = False) -> Wide:
        """The element of an exact result (h None: the int64 l) with |result| <= bound (for F_p
        below 2^127; Z_2^l needs the result only mod 2^128); ``tight``: the bound was measured."""
        if bound > self.top:
            (h, l, bound), tight = self._reduce(h, l, bound), False
        return Wide(l, None if bound < I64 else h, bound, tight)

    def _const(self, c: int, like) -> Wide:
        c, dev, cache = self._py(c), like.device, self.__dict__.setdefault("_consts", {})
        if (c, dev) not in cache:
            hi = None if abs(c) < I64 else torch.tensor(c >> 64, device=dev)
            cache[c, dev] = Wide(torch.tensor(w.split(c)[1], device=dev), hi, abs(c), True)
        return cache[c, dev]

    def _from_ints(self, r, device) -> Wide:
        """Exact Python ints (F_p results that may reach 2^127) into the field, on ``device``."""
        r = np.asarray(r, dtype=object)
        flat = r.reshape(-1) % self.prime  # 1-d: numpy makes 0-d results Python ints
        flat = np.where(flat > self.top, flat - self.prime, flat)
        words = (flat >> 64).astype(np.int64), (flat & M64).astype(np.uint64).view(np.int64)
        return self._fit(*(torch.from_numpy(w.reshape(r.shape)).to(device) for w in words), self.top)

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, real: torch.Tensor, scale: int, public: bool = False) -> Wide:
        """round(real * 2^scale), which must fit the field (``public``: wraps into it instead)."""
        scaled = torch.round(real.double() * 2.0**scale)
        lo, hi = (float(t) for t in torch.aminmax(scaled)) if scaled.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) and public:
            raise UserError(f"public constant is not finite at {scale} fractional bits")
        if not public and not (math.isfinite(lo) and math.isfinite(hi) and self.low <= lo and hi <= self.top):
            worst = real.double().abs().max().item()
            raise UserError(f"value {worst:.4g} does not fit {self!r} at {scale} fractional bits")
        bound = max(-int(lo), int(hi))
        if bound < I64:
            return self._fit(None, scaled.long(), bound, True)
        if self.prime is None or bound < I127:
            return self._fit(*w.from_float(scaled), bound, True)
        return self._from_ints(np.frompyfunc(int, 1, 1)(scaled.cpu().numpy()), scaled.device)

    def encode_public(self, real: torch.Tensor, scale: int) -> Wide:
        return self.encode(real, scale, public=True)

    def decode(self, v: Wide, scale: int) -> torch.Tensor:
        return self.to_float(v) * 2.0 ** (-scale)

    def from_int64(self, x: torch.Tensor) -> Wide:
        return self._fit(None, x, Wide(x).bound, True)

    # -- arithmetic (``in_place``: the first operand may be overwritten, on int64 paths) ---------
    def add(self, a: Wide, b: Wide, in_place: bool = False) -> Wide:
        if a.bound + b.bound >= I64:
            a.measure(), b.measure()  # int64 may do after all
        bound = a.bound + b.bound
        if bound < I64 and a.hi is None and b.hi is None:
            return self._fit(None, a.lo.add_(b.lo) if in_place else a.lo + b.lo, bound)
        return self._fit(*w.add(*a.words(), *b.words()), bound)

    def neg(self, a: Wide, in_place: bool = False) -> Wide:
        if a.hi is None and a.bound < I64:
            return self._fit(None, a.lo.neg_() if in_place else -a.lo, a.bound)
        h, l = a.words()
        return self._fit(~h + (l == 0).long(), -l, a.bound)

    def mul(self, a: Wide, b: Wide, in_place: bool = False) -> Wide:
        if a.bound * b.bound >= I64:
            wide = self.prime is not None and a.bound * b.bound >= I127  # spares the Python-int path
            a.measure(wide), b.measure(wide)
        bound = a.bound * b.bound
        if a.hi is None and b.hi is None and bound < 1 << 112:
            if bound < I64:
                return self._fit(None, a.lo.mul_(b.lo) if in_place else a.lo * b.lo, bound)
            l = a.lo * b.lo  # wraps; the high word is (a b - l) / 2^64, < 1/4 off in float64 below 2^112
            h = (a.lo.double() * b.lo.double()).sub_(l.double()).mul_(2.0**-64).round_().long()
            return self._fit(h.add_(l >> 63), l, bound)
        if self.prime is not None and bound >= I127:
            return self._mul_exact(a, b)
        return self._fit(*w.mul(*a.words(), *b.words()), bound)

    def mul_add(self, a: Wide, b: Wide, c: int) -> Wide:
        """a * b + c for a public integer c (a truncation's rounding offset)."""
        return self.add(self.mul(a, b), self._const(c, a))

    def _mul_exact(self, a: Wide, b: Wide) -> Wide:
        """F_p products that may reach 2^127: 128-bit where the exponents allow (|fl(x)| < 2^e within
        2^-50: e_a + e_b <= 126 keeps |a b| < 2^127), Python ints elsewhere."""
        words = torch.broadcast_tensors(*a.words(), *b.words())
        ah, al, bh, bl = (w.reshape(-1) for w in words)
        big = torch.frexp(w.as_float(ah, al)).exponent + torch.frexp(w.as_float(bh, bl)).exponent > 126
        h, l = self._fit(*w.mul(ah, al, bh, bl), I127).words()  # wrong where big: replaced
        idx = big.nonzero().reshape(-1)
        if idx.numel():
            h[idx], l[idx] = self._from_ints(w.as_ints(ah[idx], al[idx]) * w.as_ints(bh[idx], bl[idx]), l.device).words()
        return self._fit(h.reshape(words[0].shape), l.reshape(words[0].shape), self.top)

    def shl(self, a: Wide, k: int, in_place: bool = False) -> Wide:
        """Times the public 2^k, any k >= 0."""
        if a.bound << k >= I64:
            a.measure()
        bound = a.bound << k
        if a.hi is None and bound < I64:
            k = min(k, 63)  # a larger k only reaches here for zeros
            return self._fit(None, a.lo.bitwise_left_shift_(k) if in_place else a.lo << k, bound)
        if self.prime is not None and bound >= I127:
            return self.mul(a, self._const(pow(2, k, self.prime), a))
        return self._fit(*w.shl(*a.words(), k), bound)

    def sum(self, a: Wide, dims: list[int], keepdim: bool) -> Wide:
        n = math.prod(a.shape[d] for d in dims) if dims else a.numel()
        if n * a.bound >= I64:
            a.measure(self.prime is not None and n * a.bound >= I127)
        bound = n * a.bound
        if a.hi is None and bound < I64:
            return self._fit(None, a.lo.sum(dims, keepdim), bound)
        if self.prime is not None and bound >= I127:
            return self._from_ints(w.as_ints(*a.words()).sum(axis=tuple(dims) or None, keepdims=keepdim), a.device)
        h, l = a.words()
        lo32, hi32 = (t.sum(dims, keepdim) for t in (l & M32, l >> 32 & M32))  # exact below 2^31 terms
        return self._fit(*w.add(h.sum(dims, keepdim) + (hi32 >> 32), hi32 << 32, 0, lo32), bound)

    def matmul(self, a, b, a_bits: int | None = None, b_bits: int | None = None) -> Wide:
        """torch.matmul of ``Wide`` values or int64 / float64 tensors of integers (with known magnitude
        bits, optionally): exact GEMM parts added up mod 2^128 (mod 2^64 when the sum fits int64)."""
        (la, ma), (lb, mb) = _limbs(a, a_bits), _limbs(b, b_bits)
        bound = a.shape[-1] << (ma + mb)
        if self.prime is not None and bound >= I127:  # F_p: below 2^126 by a float64 certificate, or Python ints
            if not w.certified_below(w.image(a), w.image(b), 2.0**126):
                a, b = (w.as_ints(*(x if isinstance(x, Wide) else Wide(x.long())).words()) for x in (a, b))
                return self._from_ints(np.matmul(a, b), la[0][0].device)
            bound = 1 << 126
        h = l = None
        for ta, wa, sa in la:
            for tb, wb, sb in lb:
                for p, s in matmul_parts(ta, tb, wa, wb):
                    s += sa + sb
                    if bound < I64 and s < 64:  # int64 wraps, and the sum fits it
                        p = p.bitwise_left_shift_(s) if s else p
                        l = p if l is None else l.add_(p)
                    elif bound >= I64 and s < 128:
                        ph, pl = w.shl(p >> 63, p, s)
                        h, l = (ph, pl) if l is None else w.add(h, l, ph, pl)
        return self._fit(h, l, bound)

    def trunc_floor(self, a: Wide, shift: int, in_place: bool = False) -> Wide:
        """floor(a / 2^shift) of the signed representative."""
        return self._floor(a, shift, 0, in_place)

    def trunc_nearest(self, a: Wide, shift: int, in_place: bool = False) -> Wide:
        """floor(reduce(a + 2^(shift-1)) / 2^shift), as ``Ring.trunc_nearest``."""
        if shift == 0:
            return a
        half = 1 << (shift - 1)
        if a.bound + half > self.top:  # a + half may wrap: reduce it first
            return self._floor(self.add(a, self._const(half, a), in_place), shift, 0, True)
        return self._floor(a, shift, half, in_place)

    def _floor(self, a: Wide, k: int, half: int, in_place: bool) -> Wide:
        """floor((a + half) / 2^k), 0 <= half < 2^k, where a + half needs no reduction."""
        bound = -(-(a.bound + half) >> k)  # ceil
        if a.hi is None and a.bound + half < I64:
            if half:
                return Wide((a.lo.add_(half) if in_place else a.lo + half).bitwise_right_shift_(min(k, 63)), None, bound)
            return Wide(a.lo.bitwise_right_shift_(min(k, 63)) if in_place else a.lo >> min(k, 63), None, bound)
        h, l = a.words()
        if k < 64 and bound < I64:  # the low word alone: h 2^(64-k) + (l_u >> k) + [l_u mod 2^k >= 2^k - half]
            low = (l >> k).bitwise_and_((1 << (64 - k)) - 1).add_(h << (64 - k))
            return Wide(low.add_((l & ((1 << k) - 1)) >= (1 << k) - half) if half else low, None, bound)
        return self._fit(*w.sar(*(w.add(h, l, *w.split(half)) if half else (h, l)), k), bound)

    def nonneg(self, a: Wide) -> Wide:
        return Wide(((a.lo if a.hi is None else a.hi) >= 0).long(), None, 1, True)

    def move(self, fn, xs: list[Wide]) -> Wide:
        """A data movement: the same on every word."""
        bound, lo = max(x.bound for x in xs), fn([x.lo for x in xs])
        return Wide(lo, None if all(x.hi is None for x in xs) else fn([x.words()[0] for x in xs]), bound)

    def linear(self, fn, xs: list[Wide]) -> Wide:
        raise UserError(f"{self!r}: this local op has no exact wide implementation (add, neg, sum and moves have)")

    # -- reading values -----------------------------------------------------------------------
    def outside_bits(self, v: Wide, bits: int) -> int:
        """Elements outside [-2^(bits-1), 2^(bits-1))."""
        half = 1 << (bits - 1) if bits >= 1 else 0
        return int((w.greater(v.hi, v.lo, half - 1) | ~w.greater(v.hi, v.lo, -half - 1)).sum()) if v.bound >= half else 0

    def to_float(self, v: Wide) -> torch.Tensor:
        return v.lo.double() if v.hi is None else w.as_float(v.hi, v.lo)

    def extremes(self, v: Wide) -> tuple[int, int]:
        return w.extremes(v.hi, v.lo)

    def to_ints(self, v: Wide) -> list:
        return v.lo.tolist() if v.hi is None else w.as_ints(v.hi, v.lo).tolist()


def _limbs(x, bits: int | None):
    """A matmul operand as (tensor, magnitude bits or None, shift) limbs, and its magnitude bits."""
    if isinstance(x, torch.Tensor):
        bits = magnitude_bits(x) if bits is None else bits
        return [(x, bits, 0)], bits
    bits = x.measure(wide=True).bit_length() if bits is None else bits
    if x.hi is None:
        return [(x.lo, bits, 0)], bits
    c1, c2 = w.sar(x.hi, x.lo, 62)[1] & M62, w.sar(x.hi, x.lo, 124)[1]
    return [(x.lo & M62, 62, 0), (c1, 62, 62), (c2, None, 124)], bits


class WideRing(_Field):
    """The ring Z_2^bits, 65 <= bits <= 128, with two's-complement signed representatives."""

    def __init__(self, bits: int):
        if not 65 <= bits <= 128:
            raise UserError(f"wide ring size must be between 65 and 128 bits, got {bits}")
        self.bits, self.modulus, self.top, self.low = bits, 1 << bits, (1 << (bits - 1)) - 1, -(1 << (bits - 1))

    def __repr__(self) -> str:
        return f"WideRing(Z_2^{self.bits})"

    def _reduce(self, h, l, bound):
        h, pad = l >> 63 if h is None else h, 128 - self.bits
        return (h << pad) >> pad if pad else h, l, 1 << (self.bits - 1)


class PrimeField(_Field):
    """The prime field F_p, 3 <= p < 2^127, with signed representatives in [-(p-1)/2, (p-1)/2]."""

    def __init__(self, p: int):
        if not 3 <= p < I127:
            raise UserError(f"prime field modulus must be in [3, 2^127), got {p}")
        from sympy import isprime  # slow to import: only for prime fields

        if not isprime(p):
            raise UserError(f"prime field modulus {p} is not prime")
        self.prime = self.modulus = int(p)
        self.top = self.prime // 2
        self.low, self.bits = -self.top, self.top.bit_length()

    def __repr__(self) -> str:
        return f"PrimeField(F_{self.prime})"

    def _reduce(self, h, l, bound):
        p, top = self.prime, self.top
        if h is None and p < I64:
            r = torch.remainder(l, p)
            return None, torch.where(r > top, r - p, r), top
        h = l >> 63 if h is None else h
        while bound >= p:  # x -= q * (p 2^t), q from float64 (|q| < 2^62): then |x| <= c/2 + |x| 2^-49
            c = p << max(0, bound.bit_length() - p.bit_length() - 60)
            q = torch.round(w.as_float(h, l) / float(c)).long()
            h, l = w.add(h, l, *w.mul(q >> 63, q, *w.split(-c)))
            bound = c // 2 + 1 + (bound >> 49)
        if bound > top:  # |x| < p: one +-p
            above, below = w.greater(h, l, top), ~w.greater(h, l, -top - 1)
            (ph, pl), (nh, nl) = w.split(p), w.split(-p)
            h, l = w.add(h, l, torch.where(above, nh, torch.where(below, ph, 0)),
                        torch.where(above, nl, torch.where(below, pl, 0)))
        return h, l, top
