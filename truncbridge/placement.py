"""Placement: give every IR node a fixed-point scale and insert the truncations.

``eager`` is CrypTen's rule: every product (private or with a public fraction) is truncated back to
``frac_bits`` at once. Free rescales (``pow2``) only relabel the scale; additions align their
operands by shifting the lower-scale one up (a local multiplication by a public 2^k, no truncation).

The result is a ``Plan``: the same node list with ``scale`` set on every node, ``trunc`` / ``shl``
nodes inserted, and each node's promised magnitude bound (real-valued bits, from calibration).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import UserError
from .ir import PRIVATE_MULS, Node, Program

POLICIES = ("eager",)
INTEGER_CONST_LIMIT = 2**20  # public integer constants up to this size are encoded at scale 0
BOUND_MARGIN_BITS = 1  # calibrated magnitudes are promised with this many bits of headroom
ROUNDING_FLOOR_BITS = 8  # no real bound is below 2^8 LSBs of frac_bits: tiny values carry rounding error


@dataclass
class Plan:
    program: Program  # nodes carry .scale; trunc / shl inserted
    field_bits: int
    frac_bits: int
    policy: str
    magnitude: dict[int, int] = field(default_factory=dict)  # node id -> m with |real value| < 2^m

    def bound_bits(self, node: Node) -> int:
        """Promised bits of the node's ring integer, sign included."""
        return max(self.magnitude[node.id], ROUNDING_FLOOR_BITS - self.frac_bits) + node.scale + 1

    def counts(self) -> dict[str, int]:
        nodes = self.program.nodes
        truncs = [n for n in nodes if n.op == "trunc"]
        return {
            "mul_private": sum(n.op in PRIVATE_MULS for n in nodes),
            "mul_public": sum(n.op == "mul_public" for n in nodes),
            "truncations": len(truncs),
            "truncated_elements": sum(n.numel for n in truncs),
            "comparisons": 0,
        }

    def private_mul_elements(self) -> int:
        """Scalar private products: elementwise outputs, and out-elements x inner size for matmuls."""
        total = 0
        for n in self.program.nodes:
            if n.op == "mul":
                total += n.numel
            elif n.op == "matmul":
                total += n.numel * self.program[n.inputs[0]].shape[-1]
        return total


def _is_small_integer(t: torch.Tensor) -> bool:
    return bool(torch.all(t == torch.round(t))) and bool(t.abs().max() < INTEGER_CONST_LIMIT) if t.numel() else True


class _Placer:
    """Rebuilds the node list in order, remapping ids as trunc / shl nodes are inserted."""

    def __init__(self, program: Program, frac_bits: int, magnitude: dict[int, int]):
        self.src = program
        self.f = frac_bits
        self.src_magnitude = magnitude
        self.out = Program(consts=program.consts, weights=program.weights)
        self.magnitude: dict[int, int] = {}
        self.new_id: dict[int, int] = {}

    def add(self, node: Node, inputs: tuple[int, ...], scale: int, magnitude: int, **attrs) -> int:
        nid = len(self.out.nodes)
        self.out.nodes.append(Node(nid, node.op, inputs, node.shape, {**node.attrs, **attrs},
                                   node.origin, node.recipe, scale))
        self.magnitude[nid] = magnitude
        return nid

    def derived(self, base: int, op: str, scale: int, **attrs) -> int:
        """Insert a trunc / shl of node ``base``."""
        src = self.out[base]
        nid = len(self.out.nodes)
        self.out.nodes.append(Node(nid, op, (base,), src.shape, attrs, src.origin, src.recipe, scale))
        self.magnitude[nid] = self.magnitude[base]
        return nid

    def to_scale(self, nid: int, scale: int) -> int:
        have = self.out[nid].scale
        if have > scale:
            return self.derived(nid, "trunc", scale, shift=have - scale, rounding="nearest")
        if have < scale:
            return self.derived(nid, "shl", scale, shift=scale - have)
        return nid

    def run(self) -> Program:
        for node in self.src.nodes:
            ins = tuple(self.new_id[i] for i in node.inputs)
            m = self.src_magnitude[node.id]
            self.new_id[node.id] = self.place(node, ins, m)
        self.out.inputs = {k: self.new_id[v] for k, v in self.src.inputs.items()}
        self.out.outputs = [self.new_id[o] for o in self.src.outputs]
        return self.out

    def place(self, node: Node, ins: tuple[int, ...], m: int) -> int:
        f, op = self.f, node.op
        scales = [self.out[i].scale for i in ins]
        if op == "input":
            return self.add(node, ins, 0 if node.attrs.get("integer") else f, m)
        if op == "weight":
            return self.add(node, ins, f, m)
        if op in ("add", "move") and len(ins) > 1:
            s = max(scales)
            return self.add(node, tuple(self.to_scale(i, s) for i in ins), s, m)
        if op in ("neg", "sum", "move", "output"):
            return self.add(node, ins, scales[0], m)
        if op == "pow2":
            return self.add(node, ins, scales[0] - node.attrs["exp"], m)
        if op == "add_public":
            a = ins[0]
            c = self.src.consts[node.attrs["const"]]
            if scales[0] < f and not _is_small_integer(c * 2.0 ** scales[0]):
                a = self.to_scale(a, f)
            return self.add(node, (a,), self.out[a].scale, m)
        if op in PRIVATE_MULS:
            return self.truncated(node, ins, sum(scales), m)
        if op == "mul_public":
            c = self.src.consts[node.attrs["const"]]
            cs = 0 if _is_small_integer(c) else f
            return self.truncated(node, ins, scales[0] + cs, m, const_scale=cs)
        raise UserError(f"placement: unexpected op {op!r} (node {node.id})")

    def truncated(self, node: Node, ins: tuple[int, ...], scale: int, m: int, **attrs) -> int:
        """Eager: a product above frac_bits is truncated back to frac_bits right away."""
        nid = self.add(node, ins, scale, m, **attrs)
        return self.to_scale(nid, self.f) if scale > self.f else nid


def magnitudes(program: Program, maxabs: dict[int, float]) -> dict[int, int]:
    """m per node with |value| < 2^m, from calibrated maxima plus BOUND_MARGIN_BITS."""
    out = {}
    for node in program.nodes:
        top = maxabs.get(node.id, 0.0)
        m = math.floor(math.log2(top)) + 1 if top > 0 else 0
        out[node.id] = m + BOUND_MARGIN_BITS
    return out


def place(program: Program, policy: str, field_bits: int, frac_bits: int, maxabs: dict[int, float]) -> Plan:
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if not 0 < frac_bits < field_bits:
        raise UserError(f"frac bits must be between 1 and field bits - 1 (got {frac_bits} with a {field_bits}-bit field)")
    placer = _Placer(program, frac_bits, magnitudes(program, maxabs))
    planned = placer.run()
    plan = Plan(planned, field_bits, frac_bits, policy, placer.magnitude)
    _check_fits(plan)
    return plan


def _check_fits(plan: Plan) -> None:
    for node in plan.program.nodes:
        need = plan.bound_bits(node)
        if need > plan.field_bits:
            where = node.origin + (f" [{node.recipe}]" if node.recipe else "")
            raise UserError(f"field too small: {node.op} at {where} needs {need} bits "
                            f"(|value| < 2^{plan.magnitude[node.id]} at scale {node.scale}) but the field has {plan.field_bits}")
