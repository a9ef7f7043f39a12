"""Correlated randomness: what each request is, and how the dealer splits it into shares.

A *request* names material by sizes only — ``("additive", size0, size1, op, args, kwargs)``,
``("square", size)``, ``("binary", size0, size1)``, ``("wraps", size)``, ``("B2A", size)`` (CrypTen's
five provider functions), ``("trunc", size, k, others, degree, other_degrees, pairs)`` (the exact
truncation's r, powers of r >> k and msb(r), and the material of the products its opening carries:
``truncation.py``) and ``("weight", size0, size1, op, side, owner)``: a Beaver triple for a product
whose operand ``side`` is known to the model owner (a weight), whose mask the owner alone draws
(``openings.half_opened``).
This is all the dealer ever receives.

Sharing follows CrypTen's TTP design: the dealer and each computing party share a stream
(``randomness.py``: AES-256-CTR under a key only the two of them hold). A *random* component (a
mask: a, b, r) is the sum (or XOR) of every party's draw from its stream, so no party knows it.
A *derived* component (c = a·b, r², wraps, r >> k, ...) is drawn by parties 1.. from their
streams; party 0's share is the dealer's *correction* ``value − Σ others`` — the only thing that
travels. A mask *drawn by* one party (a weight's, drawn by its owner) is that party's draw alone: the
others hold no share of it (zero), and the one who draws it is the only receiver that knows it — it
masks what that party knows already. Party and dealer expand a request with the
same code (``expand``), so their streams stay in step as long as the request sequence agrees.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...core.ring import broadcast_shape, logical_shift, matmul_mod64


@dataclass(frozen=True)
class Component:
    name: str
    size: tuple
    xor: bool = False  # XOR-shared (binary) rather than additively shared mod 2^64
    bits: int = 64  # random XOR components may be narrower (B2A's one bit)
    drawn_by: int | None = None  # a random component drawn by this party alone (the others' shares are zero)


R = "r"  # the exact truncation's mask; h = r >> k and m = msb(r) are made from it


class Part(NamedTuple):
    """A component of the exact truncation's material: m^msb · h^power · Π b_j over ``operands``
    (the masks of the operands its opening carries, at most two). The dealer deals it under
    ``name``; the runner (``truncation.Opened``) reads it by the same."""
    power: int = 0
    msb: bool = False
    operands: tuple[int, ...] = ()

    @property
    def name(self) -> str:  # "h2", "mh0", "b0", "h1b0", "mh1b0b1", ...: the key that travels
        masks = "".join(f"b{j}" for j in self.operands)
        return ("m" if self.msb else "") + (f"h{self.power}" if self.power or self.msb else "") + masks


def mask(j: int) -> str:
    """The name of b_j, the mask of the j-th operand a truncation's opening carries."""
    return Part(operands=(j,)).name


def request_key(fn: str, *parts) -> tuple:
    """A hashable, picklable request: torch.Size and lists become tuples."""
    def plain(x):
        if isinstance(x, (list, tuple, torch.Size)):
            return tuple(plain(v) for v in x)
        if isinstance(x, dict):
            return tuple(sorted((k, plain(v)) for k, v in x.items()))
        return x
    return (fn, *plain(parts))


# the products a Beaver triple may be for: a request names one, the dealer never looks a name up
PRODUCTS = {"mul": torch.mul, "matmul": torch.matmul}
# the same products on ring values, exact mod 2^64 on the fastest path: a matmul as float64 GEMMs on limbs
# (core.ring.matmul_mod64; tiny ones as torch's int64 matmul), 2-7x torch's int64 matmul at 32-128 x 768 x
# 3072 here. Shares, masks and masked openings are uniform 64-bit values: no magnitude to measure.
RING_PRODUCTS = {"mul": torch.mul, "matmul": functools.partial(matmul_mod64, a_bits=64, b_bits=64)}
KINDS = ("additive", "square", "binary", "wraps", "B2A", "trunc", "weight")
MASKS = ("a", "b")  # a triple's masks of operand 0 and operand 1
MAX_ELEMENTS = 1 << 28  # per component (2 GiB of int64): far above any plan run here, far below harm
MAX_DEGREE = 8  # powers of r >> k a truncation's opening carries (core.fusion carries at most a few)
MAX_SHIFT = 62  # a shift of 63 or more would leave no bits of a 64-bit ring value


def validate(req: tuple, parties: int | None = None) -> None:
    """Refuse a request that is not one the protocol makes: an unknown kind or product, extra
    arguments, sizes that are not shapes or exceed ``MAX_ELEMENTS``, a shift or degree out of
    range, a weight's owner who is not one of the ``parties``. The dealer checks every request
    before it draws anything."""
    def fail(why: str):
        raise ValueError(f"refused correlated-randomness request {str(req)[:120]}: {why}")

    if not isinstance(req, tuple) or not req or req[0] not in KINDS:
        fail(f"the kind must be one of {', '.join(KINDS)}")
    arity = {"additive": 6, "square": 2, "binary": 3, "wraps": 2, "B2A": 2, "trunc": 7, "weight": 6}[req[0]]
    if len(req) != arity:
        fail(f"{req[0]} takes {arity - 1} fields")
    if req[0] == "additive" and (req[3] not in PRODUCTS or req[4] != () or req[5] != ()):
        fail(f"a triple is for one of {', '.join(PRODUCTS)}, with no further arguments")
    if req[0] == "weight" and (req[3] not in PRODUCTS or req[4] not in (0, 1) or not isinstance(req[5], int)
                               or req[5] < 0 or parties is not None and req[5] >= parties):
        fail(f"a weight's triple is for one of {', '.join(PRODUCTS)}, a side 0 or 1 and its owner among the parties")
    if req[0] == "trunc":
        _, _, k, others, degree, other_degrees, pairs = req
        if not (isinstance(k, int) and 1 <= k <= MAX_SHIFT):
            fail(f"shift {k!r} outside 1..{MAX_SHIFT}")
        if not isinstance(others, tuple) or not isinstance(other_degrees, tuple) or len(other_degrees) != len(others):
            fail("one degree per carried operand")
        if not all(isinstance(d, int) and 0 <= d <= MAX_DEGREE for d in (degree, *other_degrees)):
            fail(f"degrees must lie in 0..{MAX_DEGREE}")
        if not isinstance(pairs, tuple) or not all(
                isinstance(p, tuple) and len(p) == 3 and all(isinstance(v, int) for v in p)
                and 0 <= p[0] < len(others) and 0 <= p[1] < len(others) and 0 <= p[2] <= MAX_DEGREE for p in pairs):
            fail("pairs name two carried operands and a degree")
    try:
        randoms, deriveds = layout(req)
    except (TypeError, ValueError, RuntimeError) as exc:  # shapes that do not broadcast or multiply
        fail(f"inconsistent sizes ({exc})")
    for c in randoms + deriveds:
        if not (isinstance(c.size, tuple) and len(c.size) <= 8 and all(isinstance(d, int) and d >= 0 for d in c.size)):
            fail(f"{c.name}'s size {c.size!r} is not a shape")
        if torch.Size(c.size).numel() > MAX_ELEMENTS:
            fail(f"{c.name} would hold {torch.Size(c.size).numel()} elements (at most {MAX_ELEMENTS})")


def _result_size(op: str, size0, size1) -> tuple:
    a = torch.empty(size0, dtype=torch.long, device="meta")
    b = torch.empty(size1, dtype=torch.long, device="meta")
    return tuple(PRODUCTS[op](a, b).shape)


def layout(req: tuple) -> tuple[list[Component], list[Component]]:
    """(random components, derived components) of a request."""
    fn = req[0]
    if fn == "additive":
        _, s0, s1, op, _, _ = req
        return [Component("a", s0), Component("b", s1)], [Component("c", _result_size(op, s0, s1))]
    if fn == "weight":  # the weight's mask is its owner's draw alone
        _, s0, s1, op, side, owner = req
        return ([Component("a", s0, drawn_by=owner if side == 0 else None),
                 Component("b", s1, drawn_by=owner if side == 1 else None)], [Component("c", _result_size(op, s0, s1))])
    if fn == "square":
        return [Component("r", req[1])], [Component("r2", req[1])]
    if fn == "binary":
        _, s0, s1 = req
        return ([Component("a", s0, xor=True), Component("b", s1, xor=True)],
                [Component("c", broadcast_shape(s0, s1), xor=True)])
    if fn == "wraps":
        return [Component("r", req[1])], [Component("theta_r", req[1])]
    if fn == "B2A":
        return [Component("rB", req[1], xor=True, bits=1)], [Component("rA", req[1])]
    if fn == "trunc":  # h = r >> k, m = msb(r): h^q (q >= 1) and m·h^q, times each b_j and b_j·b_l (``Part``)
        _, size, _, others, degree, other_degrees, pairs = req
        randoms = [Component(R, size)] + [Component(mask(j), other) for j, other in enumerate(others)]
        deriveds = _powers_times((), size, degree)
        for j, (other, d) in enumerate(zip(others, other_degrees)):
            deriveds += _powers_times((j,), broadcast_shape(size, other), d)
        for j, l, d in pairs:
            both = broadcast_shape(others[j], others[l])
            deriveds += [Component(Part(operands=(j, l)).name, both)]
            deriveds += _powers_times((j, l), broadcast_shape(size, both), d)
        return randoms, deriveds
    raise ValueError(f"unknown correlated-randomness request {fn!r}")


def _powers(operands: tuple[int, ...], degree: int) -> list[Part]:
    """h^q·Π b (q = 1..degree) and m·h^q·Π b (q = 0..degree−1): what S^i·Π b needs for i <= degree."""
    return [Part(q, False, operands) for q in range(1, degree + 1)] + [Part(q, True, operands) for q in range(degree)]


def _powers_times(operands: tuple[int, ...], size: tuple, degree: int) -> list[Component]:
    return [Component(part.name, size) for part in _powers(operands, degree)]


def derive(req: tuple, plain: dict[str, torch.Tensor], shares: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The derived components' values from the random ones' values (``plain``) and every party's
    shares of them (``shares``: the wraps count needs those)."""
    fn = req[0]
    if fn in ("additive", "weight"):
        return {"c": RING_PRODUCTS[req[3]](plain["a"], plain["b"])}
    if fn == "square":
        return {"r2": plain["r"] * plain["r"]}
    if fn == "binary":
        return {"c": plain["a"] & plain["b"]}
    if fn == "wraps":
        return {"theta_r": count_wraps(shares["r"])}
    if fn == "B2A":
        return {"rA": plain["rB"]}
    if fn == "trunc":
        r, k, degree, other_degrees, pairs = plain[R], req[2], req[4], req[5], req[6]
        h, m = logical_shift(r, k), (r < 0).long()
        powers = [torch.ones_like(h)]  # h^0, h^1, ... (wrapping mod 2^64)
        for _ in range(max([degree, *other_degrees, *(d for *_, d in pairs)])):
            powers.append(powers[-1] * h)

        def times(operands: tuple[int, ...], b, d: int) -> dict:
            return {part.name: (m if part.msb else 1) * powers[part.power] * b for part in _powers(operands, d)}

        out = times((), 1, degree)
        for j, d in enumerate(other_degrees):
            out |= times((j,), plain[mask(j)], d)
        for j, l, d in pairs:
            both = out[Part(operands=(j, l)).name] = plain[mask(j)] * plain[mask(l)]
            out |= times((j, l), both, d)
        return out
    raise ValueError(f"unknown correlated-randomness request {fn!r}")


def combine(parts: list[torch.Tensor], xor: bool) -> torch.Tensor:
    """The value a list of shares stands for (sum mod 2^64, or XOR)."""
    out = parts[0].clone()
    for p in parts[1:]:
        out = out ^ p if xor else out + p
    return out


def count_wraps(shares: list[torch.Tensor]) -> torch.Tensor:
    """How often the sum of the shares wraps around 2^64: CrypTen's own count, which its wraps
    protocol expects of the dealer."""
    from crypten.common.util import count_wraps as crypten_count_wraps

    return crypten_count_wraps(shares)


def draw(stream, comp: Component) -> torch.Tensor:
    """One party's draw for a component (its share, or part of a mask) from its stream."""
    return stream.bits(comp.size, comp.bits)


def expand(req: tuple, streams: dict) -> dict[str, dict[int, torch.Tensor]]:
    """Draw, for every party whose stream is given, its shares of a request: random components
    for every party (or only the one that draws it alone), derived ones for parties 1.. (party 0
    gets a correction)."""
    randoms, deriveds = layout(req)
    out: dict[str, dict[int, torch.Tensor]] = {c.name: {} for c in randoms + deriveds}
    for p, stream in sorted(streams.items()):
        for c in randoms:
            if c.drawn_by in (None, p):
                out[c.name][p] = draw(stream, c)
        if p != 0:
            for c in deriveds:
                out[c.name][p] = draw(stream, Component(c.name, c.size, c.xor))
    return out


def corrections(req: tuple, drawn: dict[str, dict[int, torch.Tensor]], parties: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The dealer's side (it holds every generator): party 0's corrections of the derived
    components, and the plaintext of the random ones (the masks, for the audit)."""
    randoms, deriveds = layout(req)
    shares = {c.name: [drawn[c.name][p] for p in range(parties) if p in drawn[c.name]] for c in randoms}
    masks = {c.name: combine(shares[c.name], c.xor) for c in randoms}
    derived = derive(req, masks, shares)
    fixes = {}
    for c in deriveds:  # party 0's share: the value less (or XOR) every other party's draw
        fixes[c.name] = derived[c.name].clone()
        for p in range(1, parties):
            fixes[c.name] = fixes[c.name] ^ drawn[c.name][p] if c.xor else fixes[c.name] - drawn[c.name][p]
    if req[0] == "wraps":  # the wraps protocol opens each party's x_i + r_i to party 0
        masks.update({f"r@{p}": drawn["r"][p] for p in range(parties)})
    return fixes, masks
