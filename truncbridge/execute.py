"""Executors for IR programs: real-valued (float64) and exact fixed-point (ring Z_2^l).

``run_float`` gives the IR's own real-valued result: the float model with every nonlinearity
replaced by its recipe, and no rounding. Calibration reads node magnitudes from it.
``RingExecutor`` executes a placed plan bit-exactly; with ``check`` it counts elements whose integer
exceeds the bound the plan promised. Its ``truncation`` model says what a ``trunc`` node outputs:
``nearest`` is the deterministic plan semantics; the others sample what an MPC protocol would open
(see ``TRUNCATION_MODELS``), so repeated runs show the distribution of the MPC result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .errors import UserError
from .ir import Node, Program, aten_op, resolve_args
from .ring import Ring, trunc_crypten_local, trunc_crypten_wraps, trunc_exact_msb

if TYPE_CHECKING:
    from .placement import Plan
    from .protocols import Protocol

TRUNCATION_MODELS = {
    # name: what a trunc node by k bits outputs (x: its ring value); the MPC protocols add no
    # 2^(k-1) offset: each is unbiased on its own
    "nearest": "floor((x + 2^(k-1)) / 2^k), or floor(x / 2^k) for rounding 'floor'; deterministic",
    "crypten-local": "CrypTen 0.4.1, 2 parties: each party divides its share toward zero (no offset)",
    "crypten-wraps": "CrypTen 0.4.1, 3 parties: beaver.truncate with the wraps protocol (TFP; no offset)",
    "exact-msb": "truncbridge's exact_truncate: floor(x / 2^k) + Bernoulli(frac), |x| < 2^62, no offset",
}
PROTOCOL_TRUNCATION_MODELS = {  # protocol profile truncation.kind -> model
    "faithful": "nearest",
    "probabilistic-local": "crypten-local",  # also SecureML: local truncation of 2 additive shares
    "probabilistic-aby3": "crypten-local",  # ABY3 Trunc1 truncates a 2-out-of-2 view (x1, x2 + x3) locally
    "probabilistic-wraps": "crypten-wraps",
    "exact-msb": "exact-msb",
}


def truncation_model_for(protocol: "Protocol") -> str:
    """The RingExecutor truncation model that samples what ``protocol``'s truncation outputs.
    SecureML and ABY3 (Trunc1) divide two additive shares locally, like CrypTen with 2 parties; their
    per-share rounding differs in detail (floor of unsigned shares vs CrypTen's division toward
    zero), not in the error class: 1 LSB, and 2^(l-k) with probability ~ |x| / 2^l."""
    model = PROTOCOL_TRUNCATION_MODELS.get(protocol.truncation_kind)
    if model is None:
        raise UserError(f"protocol {protocol.name}: no truncation model for its kind {protocol.truncation_kind!r}")
    return model


def _move(node: Node, args: list[torch.Tensor], consts) -> torch.Tensor:
    a = node.attrs
    args = [x.contiguous() for x in args]  # clones are folded away, views need contiguous inputs
    return aten_op(a["fn"])(*resolve_args(a["args"], args, consts), **resolve_args(a.get("kwargs", {}), args, consts))


def float_op(node: Node, x: list[torch.Tensor], program: Program, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One node's real-valued result from its inputs' values (float64; trunc and shl are identities)."""
    op, a, consts = node.op, node.attrs, program.consts
    if op == "input":
        return inputs[a["name"]].double()
    if op == "weight":
        return program.weights[a["name"]]
    if op == "add":
        return x[0] + x[1]
    if op == "neg":
        return -x[0]
    if op == "mul":
        return x[0] * x[1]
    if op == "mul_public":
        return x[0] * consts[a["const"]]
    if op == "add_public":
        return x[0] + consts[a["const"]]
    if op == "matmul":
        return torch.matmul(x[0], x[1])
    if op == "sum":
        return x[0].sum(dim=a["dims"], keepdim=a["keepdim"])
    if op == "pow2":
        return x[0] * 2.0 ** a["exp"]
    if op == "move":
        return _move(node, x, consts)
    if op in ("output", "trunc", "shl"):
        return x[0]
    raise ValueError(f"unknown op {op}")


def run_float(program: Program, inputs: dict[str, torch.Tensor],
              visit: Callable[[Node, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Real-valued execution in float64; ``visit(node, value)`` sees every node's value."""
    env: dict[int, torch.Tensor] = {}
    for node in program.nodes:
        env[node.id] = float_op(node, [env[i] for i in node.inputs], program, inputs)
        if visit is not None:
            visit(node, env[node.id])
    return [env[o] for o in program.outputs]


class RingExecutor:
    """Runs a plan in Z_2^field_bits on ``device``; public constants are encoded once.

    ``truncation``: one of ``TRUNCATION_MODELS``; all but "nearest" need a 64-bit field and draw
    their randomness from one generator seeded with ``seed``, on ``device`` where it has one (so a
    seed gives the same sequence of runs on the same kind of device; the stream goes on from run to
    run, as fresh MPC randomness would)."""

    def __init__(self, plan: "Plan", device: str | torch.device = "cpu", truncation: str = "nearest", seed: int = 0):
        if truncation not in TRUNCATION_MODELS:
            raise UserError(f"unknown truncation model {truncation!r}: choose one of {', '.join(TRUNCATION_MODELS)}")
        if truncation != "nearest" and plan.field_bits != 64:
            raise UserError(f"truncation model {truncation} is for the ring Z_2^64, "
                            f"not a {plan.field_bits}-bit field")
        self.plan = plan
        self.ring = Ring(plan.field_bits)
        self.device = torch.device(device)
        self.truncation = truncation
        self.generator = _generator(self.device, seed) if truncation != "nearest" else None
        self.weights: dict[str, torch.Tensor] = {}
        self.encoded: dict[int, torch.Tensor] = {}  # node id -> encoded public operand
        for node in plan.program.nodes:
            if node.op == "weight":
                self.weights[node.attrs["name"]] = self._encode(plan.program.weights[node.attrs["name"]], node.scale)
            elif node.op == "mul_public":
                c = plan.program.consts[node.attrs["const"]]
                self.encoded[node.id] = self.ring.encode_public(c, node.attrs["const_scale"]).to(self.device)
            elif node.op == "add_public":
                c = plan.program.consts[node.attrs["const"]]
                self.encoded[node.id] = self.ring.encode_public(c, node.scale).to(self.device)
        self.index_consts = {k: v.to(self.device) for k, v in plan.program.consts.items()}

    def _encode(self, value: torch.Tensor, scale: int) -> torch.Tensor:
        return self.ring.encode(value, scale).to(self.device)

    def run(self, inputs: dict[str, torch.Tensor], check: bool = False) -> tuple[list[torch.Tensor], int]:
        """Returns (output integers, number of elements that broke their promised bound)."""
        ring, plan = self.ring, self.plan
        env: dict[int, torch.Tensor] = {}
        violations = 0
        for node in plan.program.nodes:
            x = [env[i] for i in node.inputs]
            op, a = node.op, node.attrs
            if op == "input":
                given = inputs[a["name"]]
                # int64 inputs are ring elements already; floats are real values to encode
                v = ring.reduce(given.to(self.device)) if given.dtype == torch.int64 else self._encode(given, node.scale)
            elif op == "weight":
                v = self.weights[a["name"]]
            elif op == "add":
                v = ring.add(x[0], x[1])
            elif op == "neg":
                v = ring.neg(x[0])
            elif op == "mul":
                v = ring.mul(x[0], x[1])
            elif op == "matmul":
                v = ring.matmul(x[0], x[1])
            elif op == "mul_public":
                v = ring.mul(x[0], self.encoded[node.id])
            elif op == "add_public":
                v = ring.add(x[0], self.encoded[node.id])
            elif op == "sum":
                v = ring.sum(x[0], a["dims"], a["keepdim"])
            elif op == "move":
                v = _move(node, x, self.index_consts)
            elif op == "trunc":
                v = self._trunc(x[0], a["shift"], a.get("rounding", "nearest") == "nearest")
            elif op == "shl":
                v = ring.shl(x[0], a["shift"])
            elif op in ("pow2", "output"):
                v = x[0]  # pow2 only relabels the scale
            else:
                raise ValueError(f"unknown op {op}")
            env[node.id] = v
            if check:
                limit = 1 << (plan.bound_bits(node) - 1) if plan.bound_bits(node) <= 64 else None
                if limit is not None and limit < 2**63:
                    violations += int(((v >= limit) | (v < -limit)).sum())
        return [env[o] for o in plan.program.outputs], violations

    def _trunc(self, x: torch.Tensor, shift: int, nearest: bool) -> torch.Tensor:
        model = self.truncation
        if model == "nearest":
            return self.ring.trunc_nearest(x, shift) if nearest else self.ring.trunc_floor(x, shift)
        if shift == 0:  # division by 1: every protocol returns x
            return x
        if model == "crypten-local":  # the protocols are unbiased already: no rounding offset
            return trunc_crypten_local(x, shift, self.generator)
        if model == "crypten-wraps":
            return trunc_crypten_wraps(x, shift, self.generator)
        return trunc_exact_msb(x, shift, self.generator)

    def decode_outputs(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        nodes = self.plan.program.nodes
        return [Ring.decode(v.cpu(), nodes[o].scale) for v, o in zip(outs, self.plan.program.outputs)]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device``, or on the CPU where the device has none."""
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(seed)
