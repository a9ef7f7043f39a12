"""What a ``trunc`` node outputs: exact round-to-nearest (the plan's semantics), or a sample of
what an MPC protocol's truncation would open, simulated on the ring value (Z_2^64 only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.errors import UserError
from ..core.ring import EXACT_MSB_LIMIT_BITS, logical_shift

if TYPE_CHECKING:
    from ..core.protocols import Protocol

TRUNCATION_MODELS = {
    # name: what a trunc node by k bits outputs (x: its ring value); the MPC protocols add no
    # 2^(k-1) offset: each is unbiased on its own
    "nearest": "floor((x + 2^(k-1)) / 2^k), or floor(x / 2^k) for rounding 'floor'; deterministic",
    "crypten-local": "CrypTen 0.4.1, 2 parties: each party divides its share toward zero (no offset)",
    "crypten-wraps": "CrypTen 0.4.1, 3 parties: beaver.truncate with the wraps protocol (TFP; no offset)",
    "exact-msb": "truncbridge's exact_truncate: floor(x / 2^k) + Bernoulli(frac), |x| < 2^62, no offset",
}
PROTOCOL_TRUNCATION_MODELS = {  # protocol profile truncation.kind -> model
    "faithful": "nearest",
    "probabilistic-local": "crypten-local",  # also SecureML: local truncation of 2 additive shares
    "probabilistic-aby3": "crypten-local",  # ABY3 Trunc1 truncates a 2-out-of-2 view (x1, x2 + x3) locally
    "probabilistic-wraps": "crypten-wraps",
    "exact-msb": "exact-msb",
}


def truncation_model_for(protocol: Protocol) -> str:
    """The RingExecutor truncation model that samples what ``protocol``'s truncation outputs.
    SecureML and ABY3 (Trunc1) divide two additive shares locally, like CrypTen with 2 parties; their
    per-share rounding differs in detail (floor of unsigned shares vs CrypTen's division toward
    zero), not in the error class: 1 LSB, and 2^(l-k) with probability ~ |x| / 2^l."""
    model = PROTOCOL_TRUNCATION_MODELS.get(protocol.truncation_kind)
    if model is None:
        raise UserError(f"protocol {protocol.name}: no truncation model for its kind {protocol.truncation_kind!r}")
    return model



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


def trunc_exact_msb(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """truncbridge.backends.crypten.truncation.exact_truncate: open c = x + 2^62 + r for a dealer's uniform r
    (shared with r >> k and msb(r)), the wrap of c is msb(r) AND NOT msb(c). Equal to
    floor(x / 2^k) + [x mod 2^k + r mod 2^k >= 2^k] (stochastic rounding) for |x| < 2^62 — no
    2^(k-1) offset — and, like the protocol, wrong outside that range."""
    r = uniform_ring64(x.shape, generator, x.device)
    c = x + (1 << EXACT_MSB_LIMIT_BITS) + r
    wrapped_if_msb = torch.bitwise_left_shift((c >= 0).long(), 64 - shift)
    return ((r < 0).long() * wrapped_if_msb - logical_shift(r, shift) + logical_shift(c, shift)
            - (1 << (EXACT_MSB_LIMIT_BITS - shift)))


def sample_truncation(model: str, x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """What the MPC truncation ``model`` (not "nearest") opens for ring value x shifted by k."""
    if shift == 0:  # division by 1: every protocol returns x
        return x
    sampler = {"crypten-local": trunc_crypten_local, "crypten-wraps": trunc_crypten_wraps,
               "exact-msb": trunc_exact_msb}[model]
    return sampler(x, shift, generator)  # the protocols are unbiased already: no rounding offset
