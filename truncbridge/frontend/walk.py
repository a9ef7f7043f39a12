"""One walk over a captured ATen graph, shared by lowering (``lower.py``) and the vanilla CrypTen
baseline (``crypten.vanilla``): they differ only in what a secret value is and in their rules.

Every node whose inputs are all public (positions, rotary tables, causal masks, shapes) is folded
in plaintext by running the ATen op itself. The client's input is token ids (an LM: only
``aten.embedding`` may read them) or a real-valued tensor (``capture_module``: a secret like any
other). Identity ops pass their input on, ``getitem`` indexes, data movement goes to ``move``, and
every other op on secret data to the subclass's rule for it — an op without one is an error that
names it.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UserError
from .capture import Captured

aten = torch.ops.aten

IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}
MOVE_OPS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
            aten.transpose.int, aten.t.default, aten.expand.default, aten.unsqueeze.default,
            aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.slice.Tensor, aten.select.int,
            aten.cat.default, aten.index.Tensor, aten.repeat.default, aten.flatten.using_ints,
            aten.stack.default}
SKIP_OPS = {aten._assert_tensor_metadata.default}


@dataclass(frozen=True)
class TokenIds:
    """The client's token ids (a marker with their shape): only aten.embedding may read them;
    a reshape keeps them token ids in another shape (row-major order is unchanged)."""

    shape: tuple[int, ...]


TOKEN_RESHAPES = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
                  aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints}


def flatten_args(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in flatten_args(item)]
    return [x]


def aten_name(target) -> str:
    """``torch.ops.aten.view.default`` -> "aten.view.default" (the form ``core.ir.aten_op`` reads back)."""
    if hasattr(target, "_schema"):
        return f"aten.{target._schema.name.split('::')[1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


class GraphWalk:
    """Subclasses define ``secret_types`` (what holds secret data), ``placeholder``, ``move``,
    ``rules`` (ATen op -> function(walk, node, *args, **kwargs)) and ``output``; they may
    override ``share`` (make an owner-known value secret where it meets secret data)."""

    secret_types: tuple[type, ...] = ()
    rules: dict = {}

    def __init__(self, captured: Captured):
        self.captured = captured
        self.env: dict[str, Any] = {}

    def walk(self) -> list:
        """Every node in order; returns the secret values among the graph's outputs."""
        outputs: list = []
        for node in self.captured.graph.nodes:
            self.begin(node)
            if node.op == "placeholder":
                self.env[node.name] = self.client_input(node) if node.name == self.captured.client_input \
                    else self.state_input(node) if node.name in self.captured.state_inputs else self.placeholder(node)
            elif node.op == "call_function":
                self.env[node.name] = self.call(node)
            elif node.op == "output":
                outputs = [self.output(v) for v in flatten_args(self.value(node.args[0])) if self.is_output(v)]
        return outputs

    def begin(self, node) -> None:
        """Called before each node (lowering records where nodes come from)."""

    def client_input(self, node) -> Any:
        """The client's secret input: token ids stay a marker until an embedding reads them; a
        real-valued input is the subclass's (``real_input``)."""
        c = self.captured
        return self.real_input(node) if c.real_input else TokenIds(c.input_shape)

    def real_input(self, node) -> Any:
        raise UserError(f"{type(self).__name__} takes token ids only, not a real-valued input")

    def state_input(self, node) -> Any:
        """A cache tensor (``capture_cached``): secret-shared among the parties."""
        raise UserError(f"{type(self).__name__} takes no KV cache")

    def is_secret(self, v) -> bool:
        return isinstance(v, self.secret_types)

    def is_output(self, v) -> bool:
        """Which of the graph's outputs ``walk`` returns (through ``output``)."""
        return self.is_secret(v)

    def value(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.env[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    def fold(self, target, args, kwargs) -> Any:
        """An op on public (or owner-known) values only: computed in plaintext."""
        return target(*args, **kwargs)

    def share(self, args, kwargs) -> tuple:
        return args, kwargs

    def call(self, node) -> Any:
        target = node.target
        if target in SKIP_OPS:
            return None
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        inputs = flatten_args(list(args) + list(kwargs.values()))
        if any(isinstance(v, TokenIds) for v in inputs):
            if target in IDENTITY_OPS:
                return args[0]
            if target in TOKEN_RESHAPES:
                return TokenIds(tuple(node.meta["val"].shape))
            if target != aten.embedding.default:
                raise UserError(f"{aten_name(target)} reads the secret token ids (node {node.name}{where(node)}); "
                                "only aten.embedding and reshapes may")
        if not any(self.is_secret(v) or isinstance(v, TokenIds) for v in inputs):
            return self.fold(target, args, kwargs)
        args, kwargs = self.share(args, kwargs)
        if target is operator.getitem:
            return args[0][args[1]]
        if target in IDENTITY_OPS:
            return args[0]
        if target in MOVE_OPS:
            return self.move(node, args, kwargs)
        rule = self.rule_for(node, inputs)
        if rule is None:
            raise UserError(f"{self.no_rule} ATen op {aten_name(target)} on secret data (node {node.name}{where(node)})"
                            f"{self.no_rule_hint}")
        return rule(self, node, *args, **kwargs)

    def rule_for(self, node, inputs: list):
        """The rule for an op on secret data (``inputs``: its flattened arguments), or None."""
        return self.rules.get(node.target)

    no_rule = "no lowering for"
    no_rule_hint = ""


def first_unhandled(captured: Captured, handled) -> Any:
    """The first node that a walk would meet on secret data (what the client's input or a cache reaches)
    without a rule in ``handled`` (ATen ops), else None: found from the graph alone, before any walk."""
    secret = {captured.client_input, *captured.state_inputs}
    passed = {operator.getitem, *IDENTITY_OPS, *MOVE_OPS, *TOKEN_RESHAPES, *handled}
    for node in captured.graph.nodes:
        args = flatten_args(list(node.args) + list(node.kwargs.values()))
        if node.op != "call_function" or node.target in SKIP_OPS or not any(
                isinstance(a, torch.fx.Node) and a.name in secret for a in args):
            continue
        secret.add(node.name)
        if node.target not in passed:
            return node
    return None


def where(node) -> str:
    """", in <module path> (<class>)" of the module a captured node comes from, if recorded."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return f", in {path or 'the model'} ({cls_name.rsplit('.', 1)[-1]})"
