"""Which private products ride on a truncation's opening, and what its dealt material must hold.

The exact truncation (``crypten/truncation.py``) opens c = x + 2^62 + r; its result is y = P + S
with P public (a function of c) and S = w·msb(r) − (r >> k), w public: every share of y is public
data plus dealt material. In the same message it can open z − b for operands z computed before
it. Then any polynomial in S whose terms hold at most two such z (e = z − b is public, so
z·z'·S^i = (e + b)(e' + b')·S^i) is a public combination of dealt shares of S^i, S^i·b and
S^i·b·b', which the dealer makes from powers of r >> k, msb(r) and the b. So a
product of such values — elementwise (``mul``; a matrix product would need material for every
public pattern of wraps), of public affine maps of y (the ops with an ``affine`` entry in the op
table: negation, shift, public sum or product, scale relabel), of earlier operands and of
products carried already — needs no opening of its own: it costs no round. ``carried`` finds,
per truncation, the products that ride on it (in program order), the operands its message opens,
and the highest powers of S the material needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .ir import Node, Program
from .ops import spec

MAX_DEGREE = 3  # highest power of S a carried value may hold (the material grows with it)


def is_affine(node: Node) -> bool:
    """An elementwise map α·y + β with public α, β (``OpSpec.affine``): it carries what y carries."""
    return spec(node).affine is not None


class Pair(NamedTuple):
    """Two opened operands in one term of a carried value, j <= l, and the highest power of S
    multiplying them (the dealer deals b_j·b_l·S^i up to it): indices into ``Carried.others`` in
    a truncation's request, node ids while ``carried`` walks."""
    j: int
    l: int  # noqa: E741 (the j, l of the material's b_j·b_l)
    degree: int


class Side(NamedTuple):
    """One input side of a product that may ride (``ride_sites``)."""
    heads: frozenset[int]  # the nodes whose truncation would let it ride with this input truncated
    carriers: frozenset[int]  # the products on this side that carry it along if they ride


class Chain(NamedTuple):
    """An input of a product whose inputs may hang off one truncation (``shared_chains``)."""
    sites: tuple[tuple[int, bool], ...]  # its affine chain from the input back: (node, one of the shared sites)
    base: int | None  # the product at the chain's base, if it can ride


@dataclass
class Carried:
    """What one truncation's opening carries."""
    trunc: int
    products: list[int] = field(default_factory=list)  # product node ids, in program order
    others: list[int] = field(default_factory=list)  # operands z opened with it (z − b), first use first
    degree: int = 1  # highest power of S in any carried value
    other_degrees: list[int] = field(default_factory=list)  # per operand: highest power of S multiplying it
    pairs: list[Pair] = field(default_factory=list)  # operands in one term (indices into others)


@dataclass(frozen=True)
class _Shape:
    """A value riding on truncation ``trunc``: the highest power of S it holds, and per opened
    operand (by node id), and per pair of them in one term, the highest power of S multiplying it."""
    trunc: int
    degree: int
    others: tuple[tuple[int, int], ...] = ()  # ((operand id, degree), ...)
    pairs: tuple[Pair, ...] = ()  # by operand ids, in order

    def times(self, other: _Shape) -> _Shape | None:
        if self.pairs and (other.others or other.pairs) or other.pairs and self.others:
            return None  # three opened operands in one term: material for b·b'·b'' is not dealt
        others: dict = {}
        for z, d in [(z, d + other.degree) for z, d in self.others] + [(z, d + self.degree) for z, d in other.others]:
            others[z] = max(others.get(z, 0), d)
        pairs: dict = {}
        for z, y, d in ([(*sorted((z, y)), d + e) for z, d in self.others for y, e in other.others]
                        + [(z, y, d + other.degree) for z, y, d in self.pairs]
                        + [(z, y, d + self.degree) for z, y, d in other.pairs]):
            pairs[z, y] = max(pairs.get((z, y), 0), d)
        shape = _Shape(self.trunc, self.degree + other.degree, tuple(others.items()),
                       tuple(Pair(z, y, d) for (z, y), d in pairs.items()))
        return shape if max([shape.degree, *others.values(), *pairs.values()]) <= MAX_DEGREE else None


def _product_shape(program: Program, node, shapes: dict) -> _Shape | None:
    """How ``node`` (a mul) rides, on the later truncation one of its inputs rides on."""
    a, b = node.inputs
    best = None
    for mine, theirs in ((a, b), (b, a)):
        s = shapes.get(mine)
        if s is None:
            continue
        t = shapes.get(theirs)
        if t is None or t.trunc != s.trunc:  # the other input: an operand opened with the truncation
            if theirs >= s.trunc:
                continue  # not computed yet when the truncation runs
            t = _Shape(s.trunc, 0, ((theirs, 0),))
        shape = s.times(t)
        if shape is not None and (best is None or shape.trunc > best.trunc):
            best = shape
    return best


def carried(program: Program) -> dict[int, Carried]:
    """Truncation id -> what its opening carries, for every truncation that carries a product.

    A product rides only if the operands it would open with the truncation exist by the round the
    truncation could open in: riding it would hold the truncation, and all that follows from it,
    up a round, where opening on its own costs the product nothing later (``at``: the round a
    node is done in, one per opening, as ``core.waves`` schedules them)."""
    return ride_schedule(program)[0]


def ride_schedule(program: Program, truncated: frozenset[int] | set[int] = frozenset(),
                  own_rounds=lambda node: float(spec(node).cost is not None),
                  truncation_rounds: float = 1.0, fuse: bool = True) -> tuple[dict[int, Carried], dict[int, float]]:
    """``carried``'s walk, and the round each node is done in (nothing rides unless ``fuse``).
    ``truncated``: on a program without truncation nodes (a placement's source), the nodes
    truncated right after they are made — the node's id then stands for its truncation's, and
    its round includes it."""
    shapes: dict[int, _Shape] = {}
    out: dict[int, Carried] = {}
    at: dict[int, float] = {}
    for node in program.nodes:
        ready = max((at[i] for i in node.inputs), default=0.0)
        at[node.id] = ready + own_rounds(node)
        if node.op == "trunc":
            shapes[node.id] = _Shape(node.id, 1)
        elif is_affine(node) and node.inputs[0] in shapes:
            shapes[node.id] = shapes[node.inputs[0]]
        elif node.op == "mul" and fuse:
            _ride(program, node, shapes, out, at)
        if node.id in truncated:
            shapes[node.id] = _Shape(node.id, 1)
            at[node.id] += truncation_rounds
    return out, at


def _ride(program: Program, node, shapes: dict, out: dict[int, Carried], at: dict) -> None:
    """Let product ``node`` ride on a truncation if it can without holding it up."""
    shape = _product_shape(program, node, shapes)
    if shape is None or any(at[z] >= at[shape.trunc] for z, _ in shape.others):
        return
    shapes[node.id], at[node.id] = shape, at[shape.trunc]
    c = out.setdefault(shape.trunc, Carried(shape.trunc))
    c.products.append(node.id)
    c.degree = max(c.degree, shape.degree)
    for z, d in shape.others:
        if z not in c.others:
            c.others.append(z)
            c.other_degrees.append(0)
        j = c.others.index(z)
        c.other_degrees[j] = max(c.other_degrees[j], d)
    for z, y, d in shape.pairs:
        j, l = sorted((c.others.index(z), c.others.index(y)))
        k = next((k for k, p in enumerate(c.pairs) if (p.j, p.l) == (j, l)), None)
        if k is None:
            c.pairs.append(Pair(j, l, d))
        else:
            c.pairs[k] = c.pairs[k]._replace(degree=max(c.pairs[k].degree, d))


def carried_products(program: Program) -> set[int]:
    return {p for c in carried(program).values() for p in c.products}


def _affine_chain(program: Program, i: int) -> list[int]:
    """i and the nodes it is a public affine map of, back to the first that is not one."""
    chain = [i]
    while is_affine(program[chain[-1]]):
        chain.append(program[chain[-1]].inputs[0])
    return chain


def ride_sites(program: Program) -> dict[int, tuple[Side, ...]]:
    """For placement, on a program without truncations: mul id -> per input side (one for a
    square), (the nodes whose truncation would let it ride with that input as the truncated one,
    the products on that side that would carry it along if they ride). A truncation placed after
    a node heads an affine chain to the input, or a riding product does, and the other input is
    made before it or hangs off the same chain. (``carried``'s limits on powers of S and on
    operands per term are left out: the cost model, run on the placed plan, counts.)"""
    out: dict[int, tuple[Side, ...]] = {}
    for node in program.nodes:
        if node.op != "mul":
            continue
        a, b = node.inputs
        ca, cb = _affine_chain(program, a), _affine_chain(program, b)
        sides = []
        for mine, other, theirs in ((ca, b, cb), (cb, a, ca))[:1 if a == b else 2]:
            heads = frozenset(u for u in mine if other < u or u in theirs)
            sides.append(Side(heads, frozenset(u for u in heads if u in out)))  # riding products carry it along
        if any(side.heads for side in sides):
            out[node.id] = tuple(sides)
    return out


def opened_sides(program: Program, rides: dict) -> dict[int, tuple[bool, ...]]:
    """For placement: mul id -> per side in ``rides``, whether riding with that side truncated
    always opens the other input (it hangs off none of the side's sites). The product then holds
    an opened operand, and the side's value must not hold two already (``_Shape.times``)."""
    out = {}
    for m, sides in rides.items():
        a, b = program[m].inputs
        chains = set(_affine_chain(program, a)), set(_affine_chain(program, b))
        out[m] = tuple(not side.heads & chains[1 - s] for s, side in enumerate(sides))
    return out


def shared_sites(program: Program, rides: dict) -> dict[int, frozenset[int]]:
    """For placement: mul id -> the nodes whose truncation both its inputs could hang off (each a
    public affine map of it or a product riding on it: ``ride_sites``), so that riding on it opens
    neither. (Whether the products between do ride is left to the cost model, as above.)"""
    hang: dict[int, frozenset[int]] = {}
    out: dict[int, frozenset[int]] = {}
    for node in program.nodes:
        h = {node.id}
        if is_affine(node):
            h |= hang[node.inputs[0]]
        elif node.id in rides:
            a, b = node.inputs
            if a != b and (common := hang[a] & hang[b]):
                out[node.id] = common
            for side in rides[node.id]:
                h |= side.heads
                for c in side.carriers:
                    h |= hang[c]
        hang[node.id] = frozenset(h)
    return out


def shared_chains(program: Program, rides: dict, shared: dict) -> dict[int, tuple[Chain, ...]]:
    """For placement: mul id in ``shared`` -> per distinct input, (its affine chain from the input
    back, each site with whether it is one of the mul's shared sites; the product at the chain's
    base if it can ride, else None). The input hangs off a shared site only if the first
    truncated site on its chain is one, or none is and the base rides."""
    out = {}
    for m, sites in shared.items():
        chains = []
        for x in dict.fromkeys(program[m].inputs):
            chain = _affine_chain(program, x)
            chains.append(Chain(tuple((u, u in sites) for u in chain), chain[-1] if chain[-1] in rides else None))
        out[m] = tuple(chains)
    return out
