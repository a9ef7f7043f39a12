"""Emitting a placed program: the source nodes in order, with scales, and ``trunc`` / ``shl``
nodes inserted where a policy asks (``greedy.py``, or an optimal solution)."""
from __future__ import annotations

from ..core.errors import UserError
from ..core.fields import MAX_RING_BITS
from ..core.ir import Facts, Node, Program
from ..core.ops import spec
from ..core.types import Bound, needed_bits
from .scales import scale_rule


class Emitter:
    """Rebuilds the node list in order with scales, remapping ids as trunc / shl nodes are inserted."""

    def __init__(self, src: Program, frac_bits: int, bounds: dict[int, Bound], budget: int,
                 floors: list[int] | None = None):
        self.src, self.f, self.src_bounds, self.budget = src, frac_bits, bounds, budget
        self.floors = floors  # per source node, the lowest scale a truncation may take (default f)
        self.out = Program(consts=src.consts, weights=src.weights)
        self.bounds: dict[int, Bound] = {}
        self.current: dict[int, int] = {}  # source id -> placed id users read now
        self.source_of: dict[int, int] = {}  # placed id -> source id, for emitted (not inserted) nodes
        self.truncated: dict[int, int] = {}  # placed id -> its truncation to its floor (lazy reuse)

    def scale(self, nid: int) -> int:
        return self.out[nid].scale

    def bits(self, nid: int, scale: int | None = None) -> int:
        return needed_bits(self.bounds[nid], self.scale(nid) if scale is None else scale, self.f)

    def _append(self, op, inputs, shape, attrs, origin, recipe, scale, bound, facts=None) -> int:
        nid = len(self.out.nodes)
        self.out.nodes.append(Node(nid, op, tuple(inputs), tuple(shape), attrs, origin, recipe, scale,
                                   facts if facts is not None else Facts()))
        self.bounds[nid] = bound
        return nid

    def derived(self, base: int, op: str, scale: int, **attrs) -> int:
        """A trunc / shl of placed node ``base``."""
        src = self.out[base]
        return self._append(op, (base,), src.shape, attrs, src.origin, src.recipe, scale, self.bounds[base])

    def to_scale(self, nid: int, scale: int) -> int:
        have = self.scale(nid)
        if have > scale:
            return self.derived(nid, "trunc", scale, shift=have - scale, rounding="nearest")
        if have < scale:
            return self.derived(nid, "shl", scale, shift=scale - have)
        return nid

    def floor(self, nid: int) -> int:
        """The lowest scale placed node ``nid`` may be truncated to: frac_bits, or its source
        node's precision floor."""
        if self.floors is None or nid not in self.source_of:
            return self.f
        return self.floors[self.source_of[nid]]

    def truncate_down(self, nid: int) -> int:
        """A version of placed node ``nid`` at its floor (made once). The truncation is hoisted above
        negations, public additions, relabels and non-shrinking moves, which are then re-emitted
        on the truncated value: it touches no more elements, and sits where optimal may put one."""
        if nid in self.truncated:
            return self.truncated[nid]
        node = self.src[self.source_of[nid]] if nid in self.source_of else None
        movable = node is not None and spec(node).hoistable
        if movable and (len(node.inputs) == 1 and not spec(node).site(node, self.src) or self._aligned_up(nid)):
            bases = [self.truncate_down(i) for i in self.out[nid].inputs]
            scale, extra = self.natural_scale(node, bases)
            out = self.emit(node, bases, scale, extra)
        elif node is None and self.out[nid].op == "shl":  # an operand shifted up to align: what it shifted is enough
            out = self.truncate_down(self.out[nid].inputs[0])
        else:
            out = self.to_scale(nid, min(self.floor(nid), self.scale(nid)))
        self.truncated[nid] = out
        return out

    def _aligned_up(self, nid: int) -> bool:
        """A data move of several operands, one shifted up to the others' scale (a KV cache at frac_bits joined
        with a new token's keys at a product's scale): truncating the operands above their floors touches
        only those (the new token's), not the whole joined tensor."""
        ins = self.out[nid].inputs
        return len(ins) > 1 and any(self.out[i].op == "shl" and i not in self.source_of for i in ins)

    def natural_scale(self, node: Node, ins: list[int]) -> tuple[int, dict]:
        """Scale of a node's result computed from placed inputs (before any truncation of it)."""
        return scale_rule(self.src, node, [self.scale(i) for i in ins], self.f)

    def fits(self, node: Node, ins: list[int], scale: int) -> bool:
        """The result, and for additions each operand shifted up to the result scale, fit the budget."""
        if needed_bits(self.src_bounds[node.id], scale, self.f) > self.budget:
            return False
        return not spec(node).aligned(node) or all(self.bits(i, scale) <= self.budget for i in ins)

    def emit(self, node: Node, ins: list[int], scale: int, extra: dict) -> int:
        if node.op == "output" and node.attrs.get("state"):  # a cache tensor: the next plan reads it at frac_bits
            ins, scale = [self.to_scale(ins[0], self.f)], self.f
        if spec(node).aligned(node):
            ins = [self.to_scale(i, scale) for i in ins]
        if node.op == "add_public" and self.scale(ins[0]) < scale:  # a fractional constant needs fraction bits
            ins = [self.to_scale(ins[0], scale)]  # (``scales.scale_rule``, which every placement model shares)
        attrs = {**node.attrs, **extra}
        nid = self._append(node.op, ins, node.shape, attrs, node.origin, node.recipe, scale, self.src_bounds[node.id],
                           node.facts)
        self.current[node.id] = nid
        self.source_of[nid] = node.id
        return nid

    def finish(self) -> Program:
        self.out.inputs = {k: self.current[v] for k, v in self.src.inputs.items()}
        self.out.outputs = [self.current[o] for o in self.src.outputs]
        return self.out


def too_small(node: Node, bits: int, budget: int, bound: Bound, scale: int, fits: int, fitted: dict | None = None) -> UserError:
    """``fits``: the field size that would hold every value of the placement; ``fitted``: the recipe
    parameters of the use the node belongs to (its input range: what a wide range costs)."""
    fitted_on = f" fitted on [{fitted['lo']:.4g}, {fitted['hi']:.4g}]" if fitted and "lo" in fitted else ""
    where = node.origin + (f" [{node.recipe}{fitted_on}]" if node.recipe else "")
    way = (f"a field of {fits} bits would fit (--field-bits {fits})" if fits <= MAX_RING_BITS else
           f"it needs a field of {fits} bits, wider than any ({MAX_RING_BITS}): narrow the input range "
           "(--bounds calibrated) or the model's")
    return UserError(f"field too small: {node.op} at {where} needs {bits} bits "
                     f"(|value| <= {bound.value:.4g} ({bound.source}) at scale {scale}) but the budget is {budget} bits; {way}")
