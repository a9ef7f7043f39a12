"""Which field a plan computes in: the ring Z_2^l (2 <= l <= 128) or a prime field F_p (p < 2^127).

Everything downstream of the config sees one number, ``field_bits``: the integer bits (sign
included) a value may use. For Z_2^l that is l. For F_p with signed encoding (values are the
representatives in [-(p-1)/2, (p-1)/2]) it is the largest b with 2^(b-1) <= (p-1)/2, i.e.
floor(log2(p - 1)): analysis and placement then treat F_p exactly like a ring of b bits. The
arithmetic itself (``make_field``) is ``ring.Ring`` up to 64 bits (int64), ``wide.WideRing``
above, and ``wide.PrimeField`` for primes.
"""
from __future__ import annotations

from .errors import UserError

MAX_RING_BITS = 128
MAX_PRIME = 2**127


def prime_capacity_bits(p: int) -> int:
    """The bits a signed value may use in F_p: the largest b with 2^(b-1) <= (p-1)/2."""
    return (p - 1).bit_length() - 1


def check_prime(p: int) -> int:
    """``p`` if it can be a plan's field, else one clear error."""
    from sympy import isprime

    if p < 3:
        raise UserError(f"--prime must be an odd prime of at least 3, got {p}")
    if p >= MAX_PRIME:
        raise UserError(f"--prime must be below 2^127, got a {p.bit_length()}-bit number")
    if not isprime(p):
        raise UserError(f"--prime {p} is not prime")
    return p


def check_ring_bits(bits: int) -> int:
    if not 2 <= bits <= MAX_RING_BITS:
        raise UserError(f"--field-bits must be between 2 and {MAX_RING_BITS}, got {bits}")
    return bits


def field_name(field_bits: int, prime: int | None) -> str:
    """How reports name the field: Z_2^64, or F_p with p spelled near a power of two when it is."""
    if prime is None:
        return f"Z_2^{field_bits}"
    return f"F_p, p = {describe_prime(prime)}"


def describe_prime(p: int) -> str:
    top = p.bit_length()
    for k in (top, top - 1):
        gap = p - 2**k
        if abs(gap) < 2**32:
            return f"2^{k} {'-' if gap < 0 else '+'} {abs(gap)}" if gap else f"2^{k}"
    return str(p)


def make_field(field_bits: int, prime: int | None = None):
    """The exact arithmetic of a plan's field (see the module docstring)."""
    if prime is not None:
        from .wide import PrimeField

        return PrimeField(prime)
    if field_bits <= 64:
        from .ring import Ring

        return Ring(field_bits)
    from .wide import WideRing

    return WideRing(field_bits)
