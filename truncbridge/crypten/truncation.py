"""Truncation protocols on CrypTen ``ArithmeticSharedTensor`` shares (ring Z_2^64, precision 0).

``crypten``  CrypTen's own ``div_``: 2 parties divide their shares locally (0 rounds), 3 or more run
             the wraps protocol (2 rounds). Both ignore the wrap of x + r, so they fail — off by
             2^(64-k) — with probability about |x| / 2^64: plans for it need headroom (16 bits).
             Shares are divided toward zero, which is unbiased: no 2^(k-1) offset is added.
``exact``    one opening of x + 2^62 + r with dealer-made r, r >> k and msb(r) (TFP, like CrypTen's
             triples). Because x + 2^62 < 2^63, the opened c wrapped iff msb(r) = 1 and msb(c) = 0,
             a *linear* function of the shared bit msb(r): the wrap is corrected exactly. The low-bit
             borrow is left in, so the result is floor(x / 2^k) + Bernoulli(frac(x / 2^k)) —
             stochastic rounding, unbiased, |error| < 1 LSB, for every |x| < 2^62 with no large
             failures. 1 round, any number of parties. (The msb trick: Escudero et al., CRYPTO 2020;
             Dalskov et al., PETS 2020.)
"""
from __future__ import annotations

import torch

from ..ring import EXACT_MSB_LIMIT_BITS as EXACT_LIMIT_BITS
from ..ring import logical_shift
from .shares import add_public, share_from

PROTOCOLS = ("crypten", "exact")


def truncation_pairs(ast_cls, size, k: int, rank: int):
    """Shares of (r, r >> k unsigned, msb(r)) for a uniform r, dealt by rank 0 (trusted dealer, as
    CrypTen's TFP triples); sharing costs no communication (pseudo-random zero shares), and the
    other parties only give the size."""
    from crypten.common.rng import generate_random_ring_element

    stacked = None
    if rank == 0:
        r = generate_random_ring_element(size)
        stacked = torch.stack([r, logical_shift(r, k), (r < 0).long()])
    shared = share_from(ast_cls, stacked, (3, *size), 0, rank)
    return shared[0], shared[1], shared[2]


def exact_truncate(x, k: int, ast_cls, rank: int):
    """floor(x / 2^k) + Bernoulli(frac) on shares, for |x| < 2^62; one opening of a masked value."""
    r, r_hi, r_msb = truncation_pairs(ast_cls, x.share.shape, k, rank)
    c = (add_public(ast_cls, x, 1 << EXACT_LIMIT_BITS, rank) + r).reveal()  # uniform: hides x
    wrapped_if_msb = (c >= 0).long() << (64 - k)  # msb(c) = 0: the sum wrapped iff msb(r) = 1
    share = r_msb.share * wrapped_if_msb - r_hi.share
    if rank == 0:
        share = share + logical_shift(c, k) - (1 << (EXACT_LIMIT_BITS - k))
    return ast_cls.from_shares(share, precision=0)


def crypten_truncate(x, k: int):
    """CrypTen's own division of shares by 2^k (local with 2 parties, wraps protocol with more)."""
    return x.div(1 << k)
