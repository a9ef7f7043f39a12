"""Truncation protocols on CrypTen ``ArithmeticSharedTensor`` shares (ring Z_2^64, precision 0).

``crypten``  CrypTen's own ``div_``: 2 parties divide their shares locally (0 rounds), 3 or more run
             the wraps protocol (2 rounds). Both ignore the wrap of x + r, so they fail — off by
             2^(64-k) — with probability about |x| / 2^64: plans for it need headroom (16 bits).
             Shares are divided toward zero, which is unbiased: no 2^(k-1) offset is added.
``exact``    one opening of c = x + 2^62 + r with dealer-made r, r >> k and msb(r) (from the dealer
             that is no computing party: ``dealer.py``). Because x + 2^62 < 2^63, the opened c
             wrapped iff msb(r) = 1 and msb(c) = 0, a *linear* function of the shared bit msb(r):
             the wrap is corrected exactly. The low-bit
             borrow is left in, so the result is floor(x / 2^k) + Bernoulli(frac(x / 2^k)) —
             stochastic rounding, unbiased, |error| < 1 LSB, for every |x| < 2^62 with no large
             failures. 1 round, any number of parties. (The msb trick: Escudero et al., CRYPTO 2020;
             Dalskov et al., PETS 2020.)

The result is y = P + S: P = (c >> k) − 2^(62−k) is public and S = w·msb(r) − (r >> k), with
w = 2^(64−k) if msb(c) = 0 else 0 public, is dealt material. So the exact truncation's opening can
carry products of y (or of public affine maps of it, p + a·S) without opening y again
(``core.fusion``): for y·z the same message opens e = z − b, and the dealer adds shares of b,
msb(r)·b and (r >> k)·b; for y·y it adds (r >> k)² and msb(r)·(r >> k). Then

    (p + a·S)·z             = p·e + p·b + a·(S·e + w·msb(r)·b − (r >> k)·b)
    (p1 + a1·S)(p2 + a2·S)  = p1·p2 + (p1·a2 + p2·a1)·S + a1·a2·(w²·msb(r) − 2w·msb(r)(r >> k) + (r >> k)²)

are linear in shares and public values: the product costs no round of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.ring import EXACT_MSB_LIMIT_BITS as EXACT_LIMIT_BITS
from ..core.ring import logical_shift
from .shares import add_public

PROTOCOLS = ("crypten", "exact")


def truncation_material(size, k: int, others: tuple = (), square: bool = False) -> dict:
    """This party's shares of the exact truncation's material, from the dealer (``dealer.py``):
    r, r >> k (unsigned), msb(r); per carried product with another operand of size ``others[j]``,
    b{j}, msb(r)·b{j}, (r >> k)·b{j}; with ``square``, (r >> k)² and msb(r)·(r >> k). The parties
    that open x + 2^62 + r and z − b must not know r or b."""
    import crypten.mpc

    provider = crypten.mpc.get_default_provider()
    if not hasattr(provider, "truncation_material"):
        raise RuntimeError("the exact truncation needs truncbridge's dealer: start the parties with "
                           "truncbridge.crypten.init() (or run_pi.py), not plain crypten.init()")
    return provider.truncation_material(torch.Size(size), k, tuple(torch.Size(s) for s in others), square)


def masked_for_opening(x, r: torch.Tensor, ast_cls, rank: int):
    """x + 2^62 + r, the value the exact truncation opens."""
    return ast_cls.from_shares(add_public(ast_cls, x, 1 << EXACT_LIMIT_BITS, rank).share + r, precision=0)


def masked_operand(z, b: torch.Tensor, ast_cls):
    """z − b, the value a carried product opens."""
    return ast_cls.from_shares(z.share - b, precision=0)


@dataclass
class Opened:
    """After the exact truncation's opening: y = P + S (module docstring), and the opened e_j = z_j − b_j."""
    rank: int
    k: int
    c: torch.Tensor
    e: list
    m: dict  # this party's material shares

    @property
    def public(self) -> torch.Tensor:  # P
        return logical_shift(self.c, self.k) - (1 << (EXACT_LIMIT_BITS - self.k))

    @property
    def w(self) -> torch.Tensor:  # msb(c) = 0: the sum wrapped iff msb(r) = 1
        return (self.c >= 0).long() << (64 - self.k)

    def s(self) -> torch.Tensor:
        return self.m["r_msb"] * self.w - self.m["r_hi"]

    def _own(self, public_term):
        return public_term if self.rank == 0 else 0  # one party adds the public part

    def result(self) -> torch.Tensor:
        """This party's share of y = floor(x / 2^k) + Bernoulli(frac)."""
        return self.s() + self._own(self.public)

    def times_other(self, j: int, p, a) -> torch.Tensor:
        """Share of (p + a·S)·z_j."""
        e, m = self.e[j], self.m
        return self._own(p * e) + p * m[f"b{j}"] + a * (self.s() * e + self.w * m[f"mb{j}"] - m[f"hb{j}"])

    def times_same(self, p1, a1, p2, a2) -> torch.Tensor:
        """Share of (p1 + a1·S)(p2 + a2·S)."""
        w, m = self.w, self.m
        s2 = w * w * m["r_msb"] - 2 * w * m["mh"] + m["h2"]
        return self._own(p1 * p2) + (p1 * a2 + p2 * a1) * self.s() + a1 * a2 * s2


def open_truncation(x, k: int, ast_cls, rank: int, others: tuple = (), square: bool = False) -> Opened:
    """One opening of x + 2^62 + r, and of z_j − b_j for every ``others`` operand, in one message."""
    m = truncation_material(x.share.shape, k, tuple(z.share.shape for z in others), square)
    masked = [masked_for_opening(x, m["r"], ast_cls, rank)]
    masked += [masked_operand(z, m[f"b{j}"], ast_cls) for j, z in enumerate(others)]
    opened = [masked[0].reveal()] if len(masked) == 1 else ast_cls.reveal_batch(masked)  # uniform: hides x, z
    return Opened(rank, k, opened[0], list(opened[1:]), m)


def exact_truncate(x, k: int, ast_cls, rank: int):
    """floor(x / 2^k) + Bernoulli(frac) on shares, for |x| < 2^62; one opening of a masked value."""
    return ast_cls.from_shares(open_truncation(x, k, ast_cls, rank).result(), precision=0)


def crypten_truncate(x, k: int):
    """CrypTen's own division of shares by 2^k (local with 2 parties, wraps protocol with more)."""
    return x.div(1 << k)
