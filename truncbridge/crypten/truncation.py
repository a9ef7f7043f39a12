"""Truncation protocols on CrypTen ``ArithmeticSharedTensor`` shares (ring Z_2^64, precision 0).

``crypten``  CrypTen's own ``div_``: 2 parties divide their shares locally (0 rounds), 3 or more run
             the wraps protocol (2 rounds). Both ignore the wrap of x + r, so they fail — off by
             2^(64-k) — with probability about |x| / 2^64: plans for it need headroom (16 bits).
             Shares are divided toward zero, which is unbiased: no 2^(k-1) offset is added.
``exact``    one opening of x + 2^62 + r with dealer-made r, r >> k and msb(r) (from the dealer
             that is no computing party: ``dealer.py``). Because x + 2^62 < 2^63, the opened c
             wrapped iff msb(r) = 1 and msb(c) = 0, a *linear* function of the shared bit msb(r):
             the wrap is corrected exactly. The low-bit
             borrow is left in, so the result is floor(x / 2^k) + Bernoulli(frac(x / 2^k)) —
             stochastic rounding, unbiased, |error| < 1 LSB, for every |x| < 2^62 with no large
             failures. 1 round, any number of parties. (The msb trick: Escudero et al., CRYPTO 2020;
             Dalskov et al., PETS 2020.)
"""
from __future__ import annotations

import torch

from ..core.ring import EXACT_MSB_LIMIT_BITS as EXACT_LIMIT_BITS
from ..core.ring import logical_shift
from .shares import add_public

PROTOCOLS = ("crypten", "exact")


def truncation_pairs(size, k: int):
    """Shares of (r, r >> k unsigned, msb(r)) for a uniform r, from the dealer (``dealer.py``):
    the parties that open x + 2^62 + r must not know r."""
    import crypten.mpc

    provider = crypten.mpc.get_default_provider()
    if not hasattr(provider, "truncation_pairs"):
        raise RuntimeError("the exact truncation needs truncbridge's dealer: start the parties with "
                           "truncbridge.crypten.init() (or run_pi.py), not plain crypten.init()")
    return provider.truncation_pairs(torch.Size(size), k)


def exact_truncate(x, k: int, ast_cls, rank: int):
    """floor(x / 2^k) + Bernoulli(frac) on shares, for |x| < 2^62; one opening of a masked value."""
    r, r_hi, r_msb = truncation_pairs(x.share.shape, k)
    c = (add_public(ast_cls, x, 1 << EXACT_LIMIT_BITS, rank) + r).reveal()  # uniform: hides x
    wrapped_if_msb = (c >= 0).long() << (64 - k)  # msb(c) = 0: the sum wrapped iff msb(r) = 1
    share = r_msb.share * wrapped_if_msb - r_hi.share
    if rank == 0:
        share = share + logical_shift(c, k) - (1 << (EXACT_LIMIT_BITS - k))
    return ast_cls.from_shares(share, precision=0)


def crypten_truncate(x, k: int):
    """CrypTen's own division of shares by 2^k (local with 2 parties, wraps protocol with more)."""
    return x.div(1 << k)
