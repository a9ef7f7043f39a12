"""Exact field integers for every op kind (``core.interpret``): the emulator's backend.

What makes it fast without touching what it computes:

* **folding** — values that depend on weights alone (a weight, its transpose) are computed once
  per executor, not once per run (``precomputed``); those read only by matrix products are kept
  as float64 with their magnitude known, so a product runs one float64 GEMM with no conversion or
  measurement of the weight (``core.gemm``);
* **in place** — an elementwise op whose input was freshly made by the op before it and is read
  by nothing else overwrites it instead of allocating (decided once, from the program);
* **fused offsets** — a product read only by a round-to-nearest truncation adds the truncation's
  offset right after it, leaving the truncation a shift (``_fused_offsets``);
* **one-hot rows** — a matrix product whose left operand is an input that holds a one-hot matrix
  (the client's tokens: exactly one 1 per row, checked on the values every run) is a row gather
  of the right operand (``gemm.select_rows``), not a GEMM over the vocabulary;
* the field's own fast paths (``core.ring``, ``core.wide``).
"""
from __future__ import annotations

from collections import Counter

import torch

from ..core.fields import make_field
from ..core.gemm import FLOAT64_EXACT_BITS, magnitude_bits, one_hot_rows, select_rows
from ..core.interpret import schedule
from ..core.ops import Public, spec
from ..core.ring import Ring
from ..core.types import Plan
from .truncation_models import sample_truncation

FRESH_KINDS = ("product", "public", "shift", "truncate", "compare")  # each makes a new tensor
FRESH_LOCAL_OPS = ("add", "neg", "sum")  # local ops that make a new tensor (moves may return views)
IN_PLACE_OPS = ("add", "neg", "mul", "mul_public", "add_public", "shl", "trunc")


class RingBackend:
    """Field integers for every op kind; public constants are encoded once, on ``device``."""

    def __init__(self, plan: Plan, device: torch.device, truncation: str, generator: torch.Generator | None):
        self.plan, self.device = plan, device
        self.field = make_field(plan.field_bits, plan.prime)
        self.truncation, self.generator = truncation, generator
        program = plan.program
        self.encoded = {n.id: self.field.encode_public(program.consts[n.attrs["const"]], _const_scale(n)).to(device)
                        for n in program.nodes if spec(n).kind == "public"}
        self.consts = {k: v.to(device) for k, v in program.consts.items()}  # index tensors of moves
        self.inputs: dict[str, torch.Tensor] = {}
        self.bits: dict[int, int] = {}  # magnitude bits of folded values kept as float64
        self.precomputed = self._fold()
        self.schedule = schedule(program)  # the program is fixed: the interpreter's order and drops, once
        self.in_place = _in_place_nodes(plan, set(self.precomputed))
        fuse = truncation == "nearest" and hasattr(self.field, "mul_add")
        self.offsets = _fused_offsets(plan) if fuse else {}  # product id -> the rounding offset it adds
        self.selectors = {program[n.inputs[0]].id for n in program.nodes  # inputs that may hold a one-hot matrix
                          if n.op == "matmul" and program[n.inputs[0]].op == "input"}
        self.rows: dict[int, torch.Tensor | None] = {}  # this run's one-hot inputs: the 1's column per row

    # -- folding ----------------------------------------------------------------------------
    def _fold(self) -> dict[int, object]:
        """Values of weights and of local ops on them alone: node id -> value, or None where no
        unfolded node reads it (so it is not kept). One weight at a time: an intermediate is
        dropped after its last folded reader, so folding never holds two copies of the model."""
        program, ids = self.plan.program, set()
        for node in program.nodes:
            if node.op == "weight" or (spec(node).kind == "local" and node.inputs and all(i in ids for i in node.inputs)):
                ids.add(node.id)
        readers: dict[int, set[str]] = {}
        last_folded_reader: dict[int, int] = {}
        for node in program.nodes:
            for i in node.inputs:
                if node.id in ids:
                    last_folded_reader[i] = node.id
                else:
                    readers.setdefault(i, set()).add(node.op)
        values, kept = {}, {}
        for node in (n for n in program.nodes if n.id in ids):
            if node.op == "weight":
                value = self.field.encode(program.weights[node.attrs["name"]], node.scale).to(self.device)
            else:
                value = self.local(node, spec(node), [values[i] for i in node.inputs])
            values[node.id] = value
            if node.id in readers or node.id in program.outputs:
                narrow = value if isinstance(value, torch.Tensor) else value.lo if value.hi is None else None
                as_gemm = readers.get(node.id) == {"matmul"} and narrow is not None  # wide fields: an int64 word
                kept[node.id] = self._as_float64(node.id, narrow) if as_gemm else value
            else:
                kept[node.id] = None
            for i in [*node.inputs, node.id]:
                if last_folded_reader.get(i, node.id) <= node.id and i in values:
                    del values[i]
        return kept

    def _as_float64(self, nid: int, value: torch.Tensor):
        """A GEMM operand as float64 (exact below 2^53) with its magnitude remembered. (float32
        storage, exact below 2^24, would halve the memory but widening it at every use cost 5 % of
        the emulation time at GPT-2-small shape, measured side by side.)"""
        bits = magnitude_bits(value)
        if bits > FLOAT64_EXACT_BITS:
            return value if isinstance(self.field, Ring) else self.field.from_int64(value)
        self.bits[nid] = bits
        return value.contiguous().to(torch.float64)

    # -- one method per op kind ---------------------------------------------------------------
    def source(self, node, op, xs):
        given = self.inputs[node.attrs["name"]].to(self.device)
        if node.id in self.selectors:  # a one-hot at scale 0 (or given as integers): its elements are its 0s and 1s
            rows = self.rows[node.id] = one_hot_rows(given) if given.dtype == torch.int64 or node.scale == 0 else None
            if rows is not None:
                return self.field.from_int64(given.to(torch.int64))
        # int64 inputs are field elements already; floats are real values to encode
        return self.field.from_int64(given) if given.dtype == torch.int64 else self.field.encode(given, node.scale)

    def local(self, node, op, xs):
        f = self.field
        if node.op == "add":
            return f.add(*xs, **self._mode(node))
        if node.op == "neg":
            return f.neg(xs[0], **self._mode(node))
        if node.op == "sum":
            return f.sum(xs[0], node.attrs["dims"], node.attrs["keepdim"])
        if node.op == "move":
            return f.move(lambda ts: op.real(ts, node, self), xs)  # self.consts: index tensors on the device
        return f.linear(lambda ts: op.real(ts, node, self), xs)  # any other linear map (ops.py)

    def product(self, node, op, xs):
        rows = self.rows.get(node.inputs[0]) if node.op == "matmul" else None
        if rows is not None and isinstance(xs[1], torch.Tensor) and xs[1].dim() == 2:
            return self.field.from_int64(select_rows(xs[1], rows))  # one_hot @ table: exactly the table's rows
        if node.op == "matmul":
            a_bits, b_bits = (self.bits.get(i) for i in node.inputs)
            return self.field.matmul(*xs, a_bits=a_bits, b_bits=b_bits)
        return self._times(node, *xs)

    def public(self, node, op, xs):  # α·x + β (the op table's ``affine``): one of them the encoded constant
        alpha, beta = op.affine(node)
        x = xs[0] if alpha == 1 else self._times(node, xs[0], self._coefficient(node, alpha))
        return x if beta == 0 else self.field.add(x, self._coefficient(node, beta), **self._mode(node))

    def _coefficient(self, node, c):
        if isinstance(c, Public):
            return self.encoded[node.id]
        return self.field.encode_public(torch.tensor(float(c)), 0).to(self.device)  # a ring integer

    def _times(self, node, a, b):
        """a * b, plus its truncation's rounding offset where that is fused in (``offsets``)."""
        if node.id in self.offsets:
            return self.field.mul_add(a, b, self.offsets[node.id])
        return self.field.mul(a, b, **self._mode(node))

    def relabel(self, node, op, xs):  # a power-of-two rescale only relabels the scale
        return xs[0]

    output = relabel

    def shift(self, node, op, xs):
        return self.field.shl(xs[0], node.attrs["shift"], **self._mode(node))

    def compare(self, node, op, xs):  # on the signed value the field element stands for
        return self.field.nonneg(xs[0])

    def truncate(self, node, op, xs):
        shift = node.attrs["shift"]
        if self.truncation != "nearest":
            return sample_truncation(self.truncation, xs[0], shift, self.generator)
        if node.inputs[0] in self.offsets:  # the offset 2^(shift-1) was added with the product
            return self.field.trunc_floor(xs[0], shift, **self._mode(node))
        if node.attrs.get("rounding", "nearest") == "nearest":
            return self.field.trunc_nearest(xs[0], shift, **self._mode(node))
        return self.field.trunc_floor(xs[0], shift, **self._mode(node))

    def _mode(self, node) -> dict:
        return {"in_place": True} if node.id in self.in_place else {}


def _const_scale(node) -> int:
    """The scale the op table's ``affine`` gives its constant: a multiplier's own (placement's
    ``const_scale``), an addend's the node's."""
    return spec(node).constant(node).scale


def _in_place_nodes(plan: Plan, folded: set[int]) -> set[int]:
    """Elementwise nodes that may overwrite their first input: it was made fresh by its producer
    in this run (not a view, an alias, a folded or a kept value), this node is its only reader and
    reads it once, and the output has its shape (a broadcast would not fit)."""
    program = plan.program
    readers = Counter(i for node in program.nodes for i in set(node.inputs))
    outputs = set(program.outputs)
    found = set()
    for node in program.nodes:
        if node.op not in IN_PLACE_OPS or not node.inputs:
            continue
        first = program[node.inputs[0]]
        fresh = ((spec(first).kind in FRESH_KINDS or first.op in FRESH_LOCAL_OPS) and first.id not in folded
                 and not (first.op == "trunc" and first.attrs["shift"] == 0))  # a 0-bit truncation returns its input
        if (fresh and readers[first.id] == 1 and node.inputs.count(first.id) == 1 and first.id not in outputs
                and tuple(first.shape) == tuple(node.shape)):
            found.add(node.id)
    return found


def _fused_offsets(plan: Plan) -> dict[int, int]:
    """Elementwise products (private or public) read only by a round-to-nearest truncation: the
    truncation's offset 2^(k-1) is added with the product (``Ring.mul_add``) and the truncation is
    a shift — the same ring result, reduce(a b + 2^(k-1)) >> k."""
    program = plan.program
    readers = Counter(i for node in program.nodes for i in node.inputs)
    outputs = set(program.outputs)
    found = {}
    for node in program.nodes:
        if node.op != "trunc" or node.attrs.get("rounding", "nearest") != "nearest" or node.attrs["shift"] == 0:
            continue
        first = program[node.inputs[0]]
        if first.op in ("mul", "mul_public") and readers[first.id] == 1 and first.id not in outputs:
            found[first.id] = 1 << (node.attrs["shift"] - 1)
    return found
