"""The intermediate representation: a straight-line program over secret tensors.

Nodes are in topological order and hold real-valued semantics; the placement pass later gives
each node a fixed-point ``scale`` (fractional bits) and inserts ``trunc`` / ``shl`` nodes, turning
the same ``Program`` into a plan that the emulator and the CrypTen backend execute.

Each op is declared once, in ``ops.py``: what it computes, how it scales, bounds and costs.
A node's ``attrs`` hold its op's parameters; its ``facts`` hold what the frontend knows about
its value beyond the op (a recipe's declared bound, a row norm, row-stochastic rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Facts:
    """What the frontend knows about a node's value beyond its op; the analysis reads it."""

    bound: float | None = None  # |value| <= bound, declared by a recipe
    bound_source: str = "recipe"  # "recipe": holds by construction; "range": a calibrated assumption
    row_l2: float | None = None  # l2 norm of every row (last dim) is at most this
    row_stochastic: bool = False  # rows are non-negative and sum to at most 1 (softmax outputs)
    recipe_params: dict | None = None  # the parameters the recipe that emitted it picked

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v != getattr(Facts, k)}


@dataclass
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # "module.path:aten_node" the node was lowered from
    recipe: str = ""  # name of the approximation recipe that emitted it, if any
    scale: int | None = None  # fractional bits, set by placement
    facts: Facts = field(default_factory=Facts)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Program:
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # meta tensors where known only by statistics
    weight_stats: dict[str, Any] = field(default_factory=dict)  # name -> core.weight_stats.WeightStats
    inputs: dict[str, int] = field(default_factory=dict)  # input name -> node id
    outputs: list[int] = field(default_factory=list)

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def users(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def __str__(self) -> str:
        return self.text()

    def text(self, bits: dict[int, int] | None = None) -> str:
        """One line per node, in order, for reading a program and stating a pass's before and after:

            %3 = trunc %2 [4,4] scale=12 bits=17 shift=12
            %5 = mul_public %4 [4,4] scale=24 const_scale=12 value=0.37  # layers.0.mlp:mul [gelu]
            %6 = move %5 [4,4] scale=12 permute($0,[1,0])

        the node's op, inputs, shape, scale once placed, ``bits[id]`` where given (e.g. a plan's
        ``bound_bits``), its attrs in name order (those at their default left out: a truncation's
        nearest rounding, an input's integer=False; a public constant by its value when it is one
        number, else by its name and shape; a data move as its ATen call), a declared bound, and
        its origin and recipe as a comment."""
        return "\n".join(self._line(n, bits) for n in self.nodes)

    def _line(self, node: Node, bits: dict[int, int] | None) -> str:
        head = f"%{node.id} = {node.op}" + "".join(f"{',' if k else ''} %{i}" for k, i in enumerate(node.inputs))
        fields = ["[" + ",".join(map(str, node.shape)) + "]"]
        if node.scale is not None:
            fields.append(f"scale={node.scale}")
        if bits is not None and node.id in bits:
            fields.append(f"bits={bits[node.id]}")
        attrs = {k: v for k, v in node.attrs.items() if _DEFAULT_ATTRS.get(k, _NO_DEFAULT) != v}
        if node.op == "move":
            kwargs = ",".join(f"{k}={_compact(v)}" for k, v in sorted(attrs.pop("kwargs", {}).items()))
            call = _compact(attrs.pop("args"))[1:-1] + (f",{kwargs}" if kwargs else "")
            fields.append(f"{attrs.pop('fn').split('.')[-2]}({call})")
        fields += [self._attr(k, v) for k, v in sorted(attrs.items())]
        if node.facts.bound is not None:
            fields.append(f"bound={node.facts.bound:.6g}")
        where = node.origin + (f" [{node.recipe}]" if node.recipe else "")
        return " ".join([head, *fields]) + (f"  # {where}" if where else "")

    def _attr(self, key: str, value: Any) -> str:
        if key == "const":
            c = self.consts[value]
            return f"value={c.item():.6g}" if c.numel() == 1 else f"const={value}[{','.join(map(str, c.shape))}]"
        return f"{key}={_compact(value)}"


_NO_DEFAULT = object()
_DEFAULT_ATTRS = {"rounding": "nearest", "integer": False}  # left out of a node's text


def _compact(value: Any) -> str:
    """An attribute value without spaces: lists as [a,b], floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def resolve_args(template: Any, tensors: list[Any], consts: dict[str, Any]) -> Any:
    """Replace "$i" by ``tensors[i]`` and "@name" by ``consts[name]`` inside a nested arg template."""
    if isinstance(template, str):
        if template.startswith("$"):
            return tensors[int(template[1:])]
        if template.startswith("@"):
            return consts[template[1:]]
        return template
    if isinstance(template, (list, tuple)):
        return type(template)(resolve_args(t, tensors, consts) for t in template)
    if isinstance(template, dict):
        return {k: resolve_args(v, tensors, consts) for k, v in template.items()}
    return template


def aten_op(name: str):
    """``"aten.permute.default"`` -> ``torch.ops.aten.permute.default``."""
    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)


class Builder:
    """Appends nodes to a Program, inferring shapes on meta tensors."""

    def __init__(self, program: Program | None = None):
        self.program = program or Program()
        self.origin = ""
        self.recipe = ""

    # -- plumbing ---------------------------------------------------------------------------
    def _meta(self, node_id: int) -> torch.Tensor:
        return torch.empty(self.program[node_id].shape, device="meta")

    def shape(self, node_id: int) -> tuple[int, ...]:
        return self.program[node_id].shape

    def emit(self, op: str, inputs: tuple[int, ...], shape: tuple[int, ...], **attrs: Any) -> int:
        node = Node(len(self.program.nodes), op, tuple(inputs), tuple(shape), attrs, self.origin, self.recipe)
        self.program.nodes.append(node)
        return node.id

    def const(self, value: torch.Tensor | float, hint: str = "c") -> str:
        """Register a public constant (floats as float64, integer index tensors kept) by name."""
        t = torch.as_tensor(value).detach().clone()
        if t.is_floating_point() or t.dtype == torch.bool:
            t = t.to(torch.float64)
        name = f"{hint}{len(self.program.consts)}"
        self.program.consts[name] = t
        return name

    def declare(self, node_id: int, bound: float, source: str = "recipe") -> None:
        """Record |value| <= bound for a node. ``source`` "recipe": holds by construction (given
        the recipe's input range); "range": the input range a recipe was built for — an
        assumption from calibration, which ``--check`` verifies at run time."""
        facts = self.program[node_id].facts
        if float(bound) < (math.inf if facts.bound is None else facts.bound):
            facts.bound, facts.bound_source = float(bound), source

    # -- sources ----------------------------------------------------------------------------
    def input(self, name: str, shape: tuple[int, ...], integer: bool = False) -> int:
        nid = self.emit("input", (), shape, name=name, integer=integer)
        self.program.inputs[name] = nid
        return nid

    def weight(self, name: str, value: torch.Tensor) -> int:
        self.program.weights[name] = value.detach()  # the model's own tensor: float64 copies are made at use
        return self.emit("weight", (), tuple(value.shape), name=name)

    def output(self, x: int, state: bool = False) -> int:
        """``state``: a cache tensor that another plan reads back as an input, so placed at frac_bits."""
        nid = self.emit("output", (x,), self.shape(x), **({"state": True} if state else {}))
        self.program.outputs.append(nid)
        return nid

    # -- arithmetic -------------------------------------------------------------------------
    def _broadcast(self, a: int, b: int) -> tuple[int, ...]:
        return tuple(torch.broadcast_shapes(self.shape(a), self.shape(b)))

    def add(self, a: int, b: int) -> int:
        return self.emit("add", (a, b), self._broadcast(a, b))

    def neg(self, a: int) -> int:
        return self.emit("neg", (a,), self.shape(a))

    def sub(self, a: int, b: int) -> int:
        return self.add(a, self.neg(b))

    def mul(self, a: int, b: int) -> int:
        return self.emit("mul", (a, b), self._broadcast(a, b))

    def matmul(self, a: int, b: int) -> int:
        shape = torch.matmul(self._meta(a), self._meta(b)).shape
        return self.emit("matmul", (a, b), tuple(shape))

    def _public(self, op: str, a: int, value: torch.Tensor | float) -> int:
        name = self.const(value)
        shape = torch.broadcast_shapes(self.shape(a), tuple(self.program.consts[name].shape))
        return self.emit(op, (a,), tuple(shape), const=name)

    def mul_public(self, a: int, value: torch.Tensor | float) -> int:
        t = torch.as_tensor(value, dtype=torch.float64)
        if t.numel() == 1:
            v = float(t)
            if v == 1.0:
                return a
            if v != 0 and abs(v) == 2.0 ** round(torch.log2(torch.tensor(abs(v))).item()):
                out = self.pow2(a, round(torch.log2(torch.tensor(abs(v))).item()))
                return out if v > 0 else self.neg(out)
        return self._public("mul_public", a, t)

    def add_public(self, a: int, value: torch.Tensor | float) -> int:
        t = torch.as_tensor(value, dtype=torch.float64)
        if t.numel() == 1 and float(t) == 0.0:
            return a
        return self._public("add_public", a, t)

    def nonneg(self, a: int) -> int:
        """1 where a >= 0, else 0: a secret comparison."""
        return self.emit("nonneg", (a,), self.shape(a))

    def relu(self, a: int) -> int:
        """max(a, 0) = a * [a >= 0]: one comparison and one product, no truncation (the bit is at
        scale 0)."""
        return self.mul(a, self.nonneg(a))

    def pow2(self, a: int, exp: int) -> int:
        return a if exp == 0 else self.emit("pow2", (a,), self.shape(a), exp=int(exp))

    def sum(self, a: int, dims: list[int], keepdim: bool = False) -> int:
        shape = self._meta(a).sum(dim=dims, keepdim=keepdim).shape
        return self.emit("sum", (a,), tuple(shape), dims=list(dims), keepdim=bool(keepdim))

    def move(self, fn: str, inputs: list[int], args: Any, kwargs: dict[str, Any] | None = None) -> int:
        """Data movement: apply the ATen op ``fn`` to inputs (referenced as "$i" inside ``args``)."""
        kwargs = kwargs or {}
        metas = [self._meta(i) for i in inputs]
        meta_consts = _MetaView(self.program.consts)
        out = aten_op(fn)(*resolve_args(args, metas, meta_consts), **resolve_args(kwargs, metas, meta_consts))
        return self.emit("move", tuple(inputs), tuple(out.shape), fn=fn, args=args, kwargs=kwargs)


class _MetaView:
    """Read-only view of a const table that hands out meta copies (for shape inference)."""

    def __init__(self, consts: dict[str, torch.Tensor]):
        self._consts = consts

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._consts[name].to("meta")
