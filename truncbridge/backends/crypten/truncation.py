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
carry products (``core.fusion``): in the same message it opens e_j = z_j − b_j for operands z_j
computed before it, and any polynomial in S whose terms hold at most two z_j is then linear in
dealt shares of S^i, S^i·b_j and S^i·b_j·b_l with public coefficients. With h = r >> k and m = msb(r) (so
m^l = m), S^i = (−h)^i + Σ_{l=1..i} C(i,l) w^l (−h)^{i−l} m: the dealer deals h^q and m·h^q (and
their products with b_j and b_j·b_l), and the products cost no round of their own (``Poly``,
``Opened.share``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ...core.ring import EXACT_MSB_LIMIT_BITS as EXACT_LIMIT_BITS
from ...core.ring import logical_shift
from . import openings
from .material import Part, R, mask
from .openings import Pending
from .shares import add_public

PROTOCOLS = ("crypten", "exact")


def truncation_material(size, k: int, others: tuple = (), degree: int = 1, other_degrees: tuple = (),
                        pairs: tuple = ()) -> dict:
    """This party's shares of the exact truncation's material, from the dealer (``dealer.py``):
    r, h^q = (r >> k)^q for q = 1..degree, m·h^q (m = msb(r)) for q = 0..degree−1; per operand
    z_j of size ``others[j]``, b_j and h^q·b_j, m·h^q·b_j up to ``other_degrees[j]``; per
    (j, l, d) in ``pairs``, b_j·b_l and its products with h^q, m·h^q up to d (``material.layout``,
    named by ``material.Part``).
    The parties that open x + 2^62 + r and z − b must not know r or b."""
    import crypten.mpc

    provider = crypten.mpc.get_default_provider()
    if not hasattr(provider, "truncation_material"):
        raise RuntimeError("the exact truncation needs truncbridge's dealer: start the parties with "
                           "truncbridge.crypten.init() (or run_pi.py), not plain crypten.init()")
    return provider.truncation_material(torch.Size(size), k, tuple(torch.Size(s) for s in others), degree,
                                        tuple(other_degrees), tuple(map(tuple, pairs)))


def masked_for_opening(x, r: torch.Tensor, ast_cls, rank: int):
    """x + 2^62 + r, the value the exact truncation opens."""
    return ast_cls.from_shares(add_public(ast_cls, x, 1 << EXACT_LIMIT_BITS, rank).share + r, precision=0)


def masked_operand(z, b: torch.Tensor, ast_cls):
    """z − b, the value a carried product opens."""
    return ast_cls.from_shares(z.share - b, precision=0)


class Term(NamedTuple):
    """A term of a carried value: S^power times the masks b_j of ``operands`` (sorted; at most two:
    ``core.fusion``). ``Term()`` is the public constant 1."""
    power: int = 0
    operands: tuple[int, ...] = ()

    def __mul__(self, other: Term) -> Term:  # operands gathered, powers of S added
        operands = tuple(sorted(self.operands + other.operands))
        if len(operands) > 2:
            raise ValueError("a term with three opened operands is not carried (core.fusion)")
        return Term(self.power + other.power, operands)


ONE = Term()


class Poly(dict):
    """A value carried by a truncation's opening: public coefficients (values) of its ``Term``s."""

    def __add__(self, other: Poly) -> Poly:
        out = Poly(self)
        for term, c in other.items():
            out[term] = out[term] + c if term in out else c
        return out

    def scaled(self, c) -> Poly:
        return Poly({term: v * c for term, v in self.items()})

    def plus_public(self, c) -> Poly:
        return self + Poly({ONE: c})

    def __mul__(self, other: Poly) -> Poly:
        out = Poly()
        for ta, ca in self.items():
            for tb, cb in other.items():
                term, c = Term.__mul__(ta, tb), ca * cb
                out[term] = out[term] + c if term in out else c
        return out


@dataclass
class Opened:
    """After the exact truncation's opening: y = P + S (module docstring) and e_j = z_j − b_j."""
    rank: int
    k: int
    c: torch.Tensor
    e: list
    m: dict  # this party's material shares
    _made: dict = field(default_factory=dict)  # P, w and shares of S^i·b made so far: every product reuses them

    @property
    def public(self) -> torch.Tensor:  # P
        if "P" not in self._made:
            self._made["P"] = logical_shift(self.c, self.k) - (1 << (EXACT_LIMIT_BITS - self.k))
        return self._made["P"]

    @property
    def w(self) -> torch.Tensor:  # msb(c) = 0: the sum wrapped iff msb(r) = 1
        if "w" not in self._made:
            self._made["w"] = (self.c >= 0).long() << (64 - self.k)
        return self._made["w"]

    def y(self) -> Poly:
        return Poly({ONE: self.public, Term(1): 1})

    def operand(self, j: int) -> Poly:
        """z_j = e_j + b_j."""
        return Poly({ONE: self.e[j], Term(0, (j,)): 1})

    def _power(self, term: Term):
        """This party's share of S^i·Π b_j (the term's power and operands), from the material's
        ``Part``s: (−h)^i + Σ_{l=1..i} C(i,l) w^l (−h)^(i−l) m, each times Π b_j."""
        if term in self._made:
            return self._made[term]
        i, operands = term
        share = (-1) ** i * self.m[Part(i, False, operands).name]
        w_l = 1
        for l in range(1, i + 1):
            if l * (64 - self.k) >= 64:
                break  # w^l = 2^(l(64−k))·[msb(c) = 0] is 0 mod 2^64 from here on
            w_l = w_l * self.w  # w^l, wrapping mod 2^64 like every share
            share = share + math.comb(i, l) * (-1) ** (i - l) * w_l * self.m[Part(i - l, True, operands).name]
        self._made[term] = share
        return share

    def share(self, value: Poly) -> torch.Tensor:
        """This party's share of a carried value: public terms on party 0 only."""
        out = 0
        for term, c in value.items():
            if term == ONE:
                out = out + (c if self.rank == 0 else 0)
            else:
                out = out + c * self._power(term)
        return out

    def result(self) -> torch.Tensor:
        """This party's share of y = floor(x / 2^k) + Bernoulli(frac)."""
        return self.share(self.y())


def prepare_truncation(x, k: int, ast_cls, rank: int, others: tuple = (), degree: int = 1,
                       other_degrees: tuple = (), pairs: tuple = ()) -> Pending:
    """The exact truncation's step, ready to open with others (``openings.reveal_together``):
    x + 2^62 + r, and z_j − b_j for every ``others`` operand; its result is the ``Opened``."""
    m = truncation_material(x.share.shape, k, tuple(z.share.shape for z in others), degree, other_degrees, pairs)
    masked = [masked_for_opening(x, m[R], ast_cls, rank)]  # uniform: hides x
    masked += [masked_operand(z, m[mask(j)], ast_cls) for j, z in enumerate(others)]
    return Pending("trunc", (x, *others), masked, lambda opened: Opened(rank, k, opened[0], list(opened[1:]), m))


def open_truncation(x, k: int, ast_cls, rank: int, others: tuple = (), degree: int = 1,
                    other_degrees: tuple = (), pairs: tuple = ()) -> Opened:
    """One opening of x + 2^62 + r, and of z_j − b_j for every ``others`` operand, in one message."""
    step = prepare_truncation(x, k, ast_cls, rank, others, degree, other_degrees, pairs)
    openings.reveal_together([step])  # looked up here: the audit wraps it
    return step.result


def exact_truncate(x, k: int, ast_cls, rank: int):
    """floor(x / 2^k) + Bernoulli(frac) on shares, for |x| < 2^62; one opening of a masked value."""
    return ast_cls.from_shares(open_truncation(x, k, ast_cls, rank).result(), precision=0)


def crypten_truncate(x, k: int):
    """CrypTen's own division of shares by 2^k (local with 2 parties, wraps protocol with more)."""
    return x.div(1 << k)
