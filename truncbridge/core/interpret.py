"""One walk over a program, many backends (in the manner of torch.fx's ``Interpreter``).

``interpret(program, backend)`` visits the nodes in order and asks the backend for each value by
the op's kind (``ops.KINDS``): a backend is an object with one method per kind, each called as
``method(node, spec, xs)`` with the node's input values. The backends: ``backends.reference``
(float64 reals), ``backends.emulator`` (exact ring integers, with the truncation models) and
``crypten.runner`` (CrypTen shares). A new backend is one class with these nine methods.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .ir import Node, Program
from .ops import OpSpec, spec


class Backend(Protocol):
    def source(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # input, weight
    def local(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # linear, no communication
    def product(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # private products
    def public(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # with a public constant
    def relabel(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # free power-of-two rescale
    def shift(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # raise the scale (shl)
    def truncate(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # lower the scale (trunc)
    def compare(self, node: Node, op: OpSpec, xs: list) -> Any: ...  # a secret comparison
    def output(self, node: Node, op: OpSpec, xs: list) -> Any: ...


def interpret(program: Program, backend: Backend, visit: Callable[[Node, Any], None] | None = None) -> list:
    """The program's outputs as the backend computes them; ``visit(node, value)`` sees every value
    computed. A value is dropped as soon as its last reader has run: peak memory is the live
    values, not every value of the forward pass. A backend may hold ``precomputed`` values (node
    id -> value, or None where no other node needs it): those nodes are not run again; and its
    ``schedule`` (below), made once."""
    env: dict[int, Any] = {}
    precomputed = getattr(backend, "precomputed", {})
    for node, op, dead in getattr(backend, "schedule", None) or schedule(program):
        if node.id in precomputed:
            if precomputed[node.id] is not None:
                env[node.id] = precomputed[node.id]
            continue
        value = env[node.id] = getattr(backend, op.kind)(node, op, [env[i] for i in node.inputs])
        if visit is not None:
            visit(node, value)
        for i in dead:
            env.pop(i, None)
    return [env[o] for o in program.outputs]


def schedule(program: Program) -> list[tuple[Node, OpSpec, list[int]]]:
    """Every node with its op and the values that die once it has run (those whose last reader it
    is, and its own if nothing reads it). A backend that runs one program many times keeps it as
    ``schedule``."""
    last_reader = {i: node.id for node in program.nodes for i in node.inputs}  # in order: the last one wins
    kept = set(program.outputs)
    return [(node, spec(node), [i for i in {*node.inputs, node.id} if last_reader.get(i, i) == node.id and i not in kept])
            for node in program.nodes]
