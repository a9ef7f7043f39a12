"""The IR's operations, each declared once.

An ``OpSpec`` says all that the stages need to know about an op:

* ``kind`` — how a backend executes it (``interpret.py``): ``source`` (input, weight), ``local``
  (a linear map that acts alike on reals, ring integers and additive shares: no communication),
  ``product`` (a private product: a Beaver multiplication), ``public`` (with a public constant),
  ``relabel`` (a power-of-two rescale that fixed point does for free), ``shift`` / ``truncate``
  (inserted by placement), ``compare`` (a secret comparison, the one nonlinear protocol step that
  is not a product), ``output``;
* ``real`` — its real-valued semantics, which the float backend runs, the ring backend applies to
  integers for local ops, and the analysis evaluates on weights;
* ``scaling`` — how its fixed-point scale follows its inputs' (``analysis.scales``);
  ``aligns``: operands are brought to one scale first;
* ``affine`` — for an elementwise public affine map y ↦ α·y + β (negation, shift, public sum or
  product, relabel), α and β as the ring integers the parties compute with (``Public``: a program
  constant at a scale). ``core.fusion`` lets such a map of a truncation's result ride on its
  opening, the CrypTen runner applies it to carried values and to shares, ``backends.extremes``
  maps a value's extremes through it;
* ``bound`` / ``norms`` — its interval rule and, where known, its l2 row/column rule
  (``op_bounds.py``, read by ``analysis.bounds``);
* ``site`` — whether a truncation right after it can pay off; ``hoistable``: a truncation of its
  result may move onto its input instead;
* ``params`` (the attrs it takes), ``cost`` (the protocol operation it costs,
  ``analysis.cost``) and ``count`` (its bucket in ``Plan.counts``).

A new op is one entry here (and a ``Builder`` helper to emit it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

import torch

from . import op_bounds as rules
from .ir import Node, Program, aten_op, resolve_args


class _Named(str, Enum):
    """A str-valued enum that prints and formats as its value (plans and messages read as before)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Kind(_Named):
    """How a backend executes an op: the name of the backend method ``core.interpret`` calls."""
    SOURCE = "source"  # input, weight
    LOCAL = "local"  # a linear map that acts alike on reals, ring integers and additive shares
    PRODUCT = "product"  # a private product: a Beaver multiplication
    PUBLIC = "public"  # with a public constant
    RELABEL = "relabel"  # a power-of-two rescale that fixed point does for free
    SHIFT = "shift"  # shl, inserted by placement
    TRUNCATE = "truncate"  # trunc, inserted by placement
    COMPARE = "compare"  # a secret comparison
    OUTPUT = "output"


class Scaling(_Named):
    """How an op's fixed-point scale follows its inputs' (``analysis.scales``)."""
    SOURCE = "source"  # fixed by the source
    SAME = "same"  # its input's
    MAX = "max"  # the highest of its (aligned) operands'
    SUM = "sum"  # the sum of its operands' (a private product)
    PUBLIC = "public"  # its input's plus the public multiplier's
    RELABEL = "relabel"  # its input's minus the exponent
    PLACED = "placed"  # set by placement (trunc, shl)
    INTEGER = "integer"  # scale 0


KINDS = tuple(k.value for k in Kind)


class Public(NamedTuple):
    """A program constant as a ring integer at ``scale``: a coefficient of a public affine map."""
    const: str
    scale: int


Coefficient = int | Public  # a public α or β: a ring integer, or a program constant encoded at a scale


def _never(node: Node, program: Program) -> bool:
    return False


def _always(node: Node, program: Program) -> bool:
    return True


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: Kind
    arity: int | None  # None: one or more
    scaling: Scaling
    real: Callable[[list, Node, Program], torch.Tensor] | None = None
    bound: Callable | None = None  # (analysis context, node) -> float
    norms: Callable | None = None  # (analysis context, node) -> (row l2 or None, column l2 or None)
    aligns: bool = False  # operands are brought to one scale (when there are several)
    site: Callable[[Node, Program], bool] = _never
    hoistable: bool = False
    params: tuple[str, ...] = ()  # the attrs it takes (public: the parties compute with them)
    cost: str | None = None  # the protocol operation it costs (protocols/*.json): mul | truncation
    count: str | None = None  # its bucket in Plan.counts()
    affine: Callable[[Node], tuple[Coefficient, Coefficient]] | None = None  # (α, β) of y -> α·y + β, elementwise
    doc: str = ""

    def __post_init__(self):  # names are accepted where enums are meant (and a wrong one refused)
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "scaling", Scaling(self.scaling))

    def constant(self, node: Node) -> Public | None:
        """The program constant a public affine map computes with, at the scale it is encoded at."""
        return next((c for c in self.affine(node) if isinstance(c, Public)), None) if self.affine else None

    @property
    def product(self) -> bool:
        """Its scale is the sum of its operands' (a private or public product): eager truncates after it."""
        return self.scaling in (Scaling.SUM, Scaling.PUBLIC)

    def aligned(self, node: Node) -> bool:
        return self.aligns and len(node.inputs) > 1

    def scalar_products(self, node: Node, program: Program) -> int:
        """Scalar private products: an elementwise output each, an inner product of k for matmuls."""
        if node.op == "matmul":
            return node.numel * program[node.inputs[0]].shape[-1]
        return node.numel if self.kind == Kind.PRODUCT else 0


def _const(node: Node, program: Program) -> torch.Tensor:
    return program.consts[node.attrs["const"]]


def _move(xs: list, node: Node, program: Program) -> torch.Tensor:
    a, consts = node.attrs, program.consts
    xs = [x.contiguous() for x in xs]  # clones are folded away, views need contiguous inputs
    return aten_op(a["fn"])(*resolve_args(a["args"], xs, consts), **resolve_args(a.get("kwargs", {}), xs, consts))


def _identity(xs: list, node: Node, program: Program) -> Any:
    return xs[0]


def _shrinking_move(node: Node, program: Program) -> bool:
    """A move that joins tensors or drops elements: truncating before it would touch more."""
    return len(node.inputs) > 1 or node.numel < max(program[i].numel for i in node.inputs)


_SPECS = [
    OpSpec("input", "source", 0, "source", params=("name", "integer"), bound=rules.input_bound,
           doc="secret input of the client (attrs: name, integer): the one-hot token matrix"),
    OpSpec("weight", "source", 0, "source", params=("name",), real=lambda xs, n, p: p.weights[n.attrs["name"]].double(),
           doc="secret tensor of the model owner (attrs: name)"),
    OpSpec("add", "local", 2, "max", real=lambda xs, n, p: xs[0] + xs[1], bound=rules.add_bound,
           norms=rules.add_norms, aligns=True, site=_always, doc="private addition"),
    OpSpec("neg", "local", 1, "same", real=lambda xs, n, p: -xs[0], bound=rules.same_bound,
           norms=rules.same_norms, hoistable=True, affine=lambda n: (-1, 0), doc="private negation"),
    OpSpec("sum", "local", 1, "same", params=("dims", "keepdim"),
           real=lambda xs, n, p: xs[0].sum(dim=n.attrs["dims"], keepdim=n.attrs["keepdim"]),
           bound=rules.sum_bound, site=_always, doc="sum over dims (attrs: dims, keepdim)"),
    OpSpec("move", "local", None, "max", params=("fn", "args", "kwargs"), real=_move, bound=rules.move_bound,
           norms=rules.move_norms, aligns=True, site=_shrinking_move, hoistable=True,
           doc='data movement (attrs: fn = ATen op name, args with "$i" input / "@name" const refs)'),
    OpSpec("mul", "product", 2, "sum", real=lambda xs, n, p: xs[0] * xs[1], bound=rules.mul_bound,
           norms=rules.mul_norms, site=_always, cost="mul", count="mul_private",
           doc="private elementwise product (Beaver: one round)"),
    OpSpec("matmul", "product", 2, "sum", real=lambda xs, n, p: torch.matmul(xs[0], xs[1]),
           bound=rules.matmul_bound, norms=rules.matmul_norms, site=_always, cost="mul", count="mul_private",
           doc="private matrix product (torch.matmul semantics)"),
    OpSpec("mul_public", "public", 1, "public", params=("const", "const_scale"),
           real=lambda xs, n, p: xs[0] * _const(n, p), bound=rules.mul_public_bound, norms=rules.mul_public_norms,
           site=_always, count="mul_public", affine=lambda n: (Public(n.attrs["const"], n.attrs["const_scale"]), 0),
           doc="product with a public tensor or scalar (attrs: const; placement adds const_scale)"),
    OpSpec("add_public", "public", 1, "same", params=("const",), real=lambda xs, n, p: xs[0] + _const(n, p),
           bound=rules.add_public_bound, hoistable=True, affine=lambda n: (1, Public(n.attrs["const"], n.scale)),
           doc="sum with a public tensor or scalar (attrs: const)"),
    OpSpec("pow2", "relabel", 1, "relabel", params=("exp",), real=lambda xs, n, p: xs[0] * 2.0 ** n.attrs["exp"],
           bound=rules.pow2_bound, norms=rules.pow2_norms, hoistable=True,
           site=lambda n, p: n.attrs["exp"] < 0,  # a division relabels the scale up: truncating after it pays
           affine=lambda n: (1, 0),  # the integers stay: only the scale is relabelled
           doc="multiply by the public 2^exp (attrs: exp): free in fixed point"),
    OpSpec("nonneg", "compare", 1, "integer", real=lambda xs, n, p: (xs[0] >= 0).to(xs[0].dtype),
           bound=rules.unit_bound, cost="comparison", count="comparisons",
           doc="1 where the input is >= 0, else 0 (a secret comparison; an integer at scale 0)"),
    OpSpec("output", "output", 1, "same", params=("state",), real=_identity, bound=rules.same_bound,
           norms=rules.same_norms, doc="the revealed result; or (attrs: state) a cache tensor another plan reads, "
           "kept secret-shared and placed at frac_bits"),
    OpSpec("trunc", "truncate", 1, "placed", params=("shift", "rounding"), real=_identity, bound=rules.same_bound,
           cost="truncation", count="truncations",
           doc="drop attrs.shift fractional bits (placement; rounding nearest | floor)"),
    OpSpec("shl", "shift", 1, "placed", params=("shift",), real=_identity, bound=rules.same_bound,
           affine=lambda n: (1 << n.attrs["shift"], 0),
           doc="multiply the integer by 2^shift to raise the scale (placement)"),
]
OPS: dict[str, OpSpec] = {s.name: s for s in _SPECS}


def spec(node: Node) -> OpSpec:
    try:
        return OPS[node.op]
    except KeyError:
        raise ValueError(f"unknown op {node.op!r} (node {node.id})") from None


def check_node(node: Node) -> None:
    """A node has its op's number of inputs, and its attrs are its op's parameters, nothing else
    (facts live in ``node.facts``)."""
    op = spec(node)
    if len(node.inputs) != op.arity if op.arity is not None else not node.inputs:
        raise ValueError(f"node {node.id} ({node.op}): {len(node.inputs)} inputs, the op takes {op.arity or 'one or more'}")
    unknown = set(node.attrs) - set(op.params)
    if unknown:
        raise ValueError(f"node {node.id} ({node.op}): attrs {sorted(unknown)} are not parameters of {node.op}")


def real_value(node: Node, xs: list, program: Program) -> torch.Tensor:
    """A non-source node's real-valued result from its inputs' values (float64)."""
    return spec(node).real(xs, node, program)
