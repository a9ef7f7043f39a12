"""One walk over a program, many backends (in the manner of torch.fx's ``Interpreter``).

``interpret(program, backend)`` visits the nodes in order and asks the backend for each value by
the op's kind (``ops.Kind``): a backend is an object with one method per kind (``Backend``), each
called as ``method(node, spec, xs)`` with the node's input values. The backends:
``backends.reference`` (float64 reals), ``backends.emulator`` (exact ring integers, with the
truncation models) and ``backends.crypten.runner`` (CrypTen shares). A new backend is one class
with these nine methods.

``interpret_waves(program, backend, waves)`` is the batched walk of a protocol backend: the nodes
grouped by the round they open in (``core.waves``), every opening of a wave prepared, opened in
one message and finished, then the wave's other nodes by kind, as ``interpret`` runs them. Its
backend offers three hooks more (``WaveBackend``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .ir import Node, Program
from .ops import OpSpec, spec
from .waves import Wave, lifetimes

Visit = Callable[[Node, Any], None]


class Backend(Protocol):
    """What ``interpret`` calls: one hook per op kind, ``hook(node, op, xs)`` with the node, its
    ``OpSpec`` and its inputs' values, returning the node's value. Each node is computed once, in
    program order, after its inputs.

    * ``source``   — ``input`` and ``weight``: the value from outside (no inputs);
    * ``local``    — a linear map (``add``, ``neg``, ``sum``, ``move``) that acts alike on reals,
      ring integers and additive shares (``op.real`` applied to each);
    * ``product``  — a private product (``mul``, ``matmul``): a Beaver multiplication in MPC;
    * ``public``   — with a public constant: α·x + β from ``op.affine(node)``;
    * ``relabel``  — ``pow2``: the integers stay, the scale is relabelled;
    * ``shift``    — ``shl``: raise the scale by a left shift;
    * ``truncate`` — ``trunc``: drop ``attrs.shift`` fractional bits, the backend's way;
    * ``compare``  — ``nonneg``: a secret comparison, 1 where x >= 0 (an integer at scale 0);
    * ``output``   — the revealed result (its value is returned by the walk).
    """
    def source(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def local(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def product(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def public(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def relabel(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def shift(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def truncate(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def compare(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def output(self, node: Node, op: OpSpec, xs: list) -> Any: ...


class WaveBackend(Backend, Protocol):
    """What ``interpret_waves`` calls besides the kind hooks (which it calls for a wave's
    ``steps`` and ``local`` nodes). Per wave, in this order:

    * ``open(node, op, xs)``     — for each node in the wave's ``opened`` (a Beaver product, an exact
      truncation): mask it and return a pending step, nothing sent yet;
    * ``exchange(steps)``        — open every step of the wave in one message (once per wave, with
      the empty list where a wave opens nothing);
    * ``finish(node, op, step)`` — the node's value from its opened step.
    """
    def open(self, node: Node, op: OpSpec, xs: list) -> Any: ...
    def exchange(self, steps: list) -> None: ...
    def finish(self, node: Node, op: OpSpec, step: Any) -> Any: ...


def run_node(backend: Backend, node: Node, xs: list) -> Any:
    """One node's value by its kind's hook."""
    op = spec(node)
    return getattr(backend, op.kind)(node, op, xs)


def interpret(program: Program, backend: Backend, visit: Visit | None = None,
              precomputed: Mapping[int, Any] | None = None, order: list | None = None) -> list:
    """The program's outputs as the backend computes them; ``visit(node, value)`` sees every value
    computed. A value is dropped as soon as its last reader has run: peak memory is the live
    values, not every value of the forward pass. ``precomputed``: values made before (node id ->
    value, or None where no other node needs it), not run again; ``order``: ``schedule(program)``,
    where a backend runs one program many times and keeps it."""
    env: dict[int, Any] = {}
    precomputed = precomputed or {}
    for node, op, dead in order or schedule(program):
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


def interpret_waves(program: Program, backend: WaveBackend, waves: list[Wave], visit: Visit | None = None,
                    precomputed: Mapping[int, Any] | None = None) -> list:
    """The program's outputs, wave by wave (``core.waves.waves``): each wave's openings in one
    message (``WaveBackend``), then its multi-round steps and local nodes. ``visit`` sees every
    value, the precomputed ones kept included; ``precomputed`` as for ``interpret``. A value is
    dropped after the last wave that reads it."""
    precomputed = precomputed or {}
    env = {i: v for i, v in precomputed.items() if v is not None}
    if visit is not None:
        for i, value in env.items():
            visit(program[i], value)

    def keep(node: Node, value: Any) -> None:
        env[node.id] = value
        if visit is not None:
            visit(node, value)

    for wave, dead in zip(waves, lifetimes(program, waves)):
        steps = [backend.open(n, spec(n), [env.get(i) for i in n.inputs]) for n in wave.opened]
        backend.exchange(steps)
        for n, step in zip(wave.opened, steps):
            keep(n, backend.finish(n, spec(n), step))
        for n in (*wave.steps, *wave.local):
            if n.id not in precomputed:
                keep(n, run_node(backend, n, [env.get(i) for i in n.inputs]))
        for i in dead:
            env.pop(i, None)
    return [env[o] for o in program.outputs]


def schedule(program: Program) -> list[tuple[Node, OpSpec, list[int]]]:
    """Every node with its op and the values that die once it has run (those whose last reader it
    is, and its own if nothing reads it). A backend that runs one program many times keeps it and
    passes it as ``interpret``'s ``order``."""
    last_reader = {i: node.id for node in program.nodes for i in node.inputs}  # in order: the last one wins
    kept = set(program.outputs)
    return [(node, spec(node), [i for i in {*node.inputs, node.id} if last_reader.get(i, i) == node.id and i not in kept])
            for node in program.nodes]
