"""Run a plan on CrypTen secret shares, with truncations exactly where the plan puts them.

Values are CrypTen ``ArithmeticSharedTensor``s with ``precision=0``: CrypTen's encoder does no
rescaling, the plan's scales are our own bookkeeping, and products are plain Beaver products
(``beaver.mul`` / ``beaver.square`` / ``beaver.matmul``) — never truncated behind our back.
A ``trunc`` node runs one of the protocols of ``truncation.py``: ``"crypten"`` (CrypTen's own
division: local with 2 parties, wraps with 3) or ``"exact"`` (one opening, exact for |x| < 2^62).
Both are unbiased on their own, so the plan's round-to-nearest offset is not added: the
emulator's matching truncation models (``RingExecutor(truncation=...)``) say what MPC outputs.
Data movement and public operations act on shares locally. Weights are shared by rank 0 (the
model owner), the one-hot tokens by ``client`` (rank 1 by default); only outputs are opened.
Masks come from CrypTen's default provider, which ``truncbridge.crypten.init`` makes a dealer
apart from the computing parties (``dealer.py``).

Call inside an initialised CrypTen process (``truncbridge.crypten.import_crypten()``).
"""
from __future__ import annotations

import torch

from .compat import import_crypten
from .roles import CLIENT, OWNER
from ..errors import UserError
from ..ir import aten_op, resolve_args
from ..placement import Plan
from ..ring import Ring
from . import truncation as protocols
from .shares import add_public, share_from
from .truncation import EXACT_LIMIT_BITS, PROTOCOLS

MAX_SHIFT = 62  # a shift of 63 or more would leave no bits of a 64-bit ring value



class PlanRunner:
    def __init__(self, plan: Plan, client: int = CLIENT, truncation: str = "crypten", owner: int = OWNER):
        if plan.field_bits != 64:
            raise UserError(f"CrypTen computes in Z_2^64: this plan is for a {plan.field_bits}-bit field")
        if truncation not in PROTOCOLS:
            raise UserError(f"unknown truncation protocol {truncation!r}: choose {' or '.join(PROTOCOLS)}")
        bad = sorted({n.attrs["shift"] for n in plan.program.nodes if n.op == "trunc"
                      and not 1 <= n.attrs["shift"] <= MAX_SHIFT})
        if bad:
            raise UserError(f"this plan truncates by {bad[0]} bits; CrypTen's 64-bit ring allows shifts 1..{MAX_SHIFT}")
        if truncation == "exact":
            widest = max((plan.bound_bits(plan.program[n.inputs[0]]) for n in plan.program.nodes if n.op == "trunc"), default=0)
            if widest > EXACT_LIMIT_BITS + 1:
                raise UserError(f"the exact truncation needs |x| < 2^{EXACT_LIMIT_BITS}; this plan truncates "
                                f"values of {widest} bits: plan it with --protocol crypten-exact-2pc or -3pc")
        self.truncation = truncation
        self.crypten = import_crypten()
        from crypten.mpc.primitives import ArithmeticSharedTensor, beaver

        self.AST, self.beaver = ArithmeticSharedTensor, beaver
        self.plan, self.client, self.owner = plan, client, owner
        self.ring = Ring(64)
        self.rank = self.crypten.communicator.get().get_rank()
        self.consts = plan.program.consts
        self.truncations_executed = 0

    def _local(self, share: torch.Tensor):
        return self.AST.from_shares(share, precision=0)

    def run(self, inputs: dict[str, torch.Tensor] | None = None, shared: dict | None = None) -> list:
        """Execute the plan; ``inputs`` (real values) are needed only on the client's rank, or
        ``shared`` gives already-shared inputs (``ArithmeticSharedTensor`` at the input's scale).
        Returns the output shares (``ArithmeticSharedTensor``), unopened."""
        plan, ring = self.plan, self.ring
        env: dict[int, object] = {}
        self.truncations_executed = 0
        for node in plan.program.nodes:
            x = [env[i] for i in node.inputs]
            op, a = node.op, node.attrs
            if op == "input" and shared is not None:
                v = shared[a["name"]]
            elif op == "input":
                value = ring.encode(inputs[a["name"]], node.scale) if self.rank == self.client else None
                v = share_from(self.AST, value, node.shape, self.client, self.rank)
            elif op == "weight":
                value = ring.encode(plan.program.weights[a["name"]], node.scale) if self.rank == self.owner else None
                v = share_from(self.AST, value, node.shape, self.owner, self.rank)
            elif op == "add":
                v = x[0] + x[1]
            elif op == "neg":
                v = -x[0]
            elif op == "mul":
                v = self.beaver.square(x[0]) if node.inputs[0] == node.inputs[1] else self.beaver.mul(x[0], x[1])
            elif op == "matmul":
                v = self.beaver.matmul(x[0], x[1])
            elif op == "mul_public":
                v = self._local(x[0].share * ring.encode_public(self.consts[a["const"]], a["const_scale"]))
            elif op == "add_public":
                v = add_public(self.AST, x[0], ring.encode_public(self.consts[a["const"]], node.scale), self.rank)
            elif op == "sum":
                v = self._local(x[0].share.sum(dim=a["dims"], keepdim=a["keepdim"]))
            elif op == "move":
                shares = [t.share.contiguous() for t in x]
                v = self._local(aten_op(a["fn"])(*resolve_args(a["args"], shares, self.consts),
                                                 **resolve_args(a.get("kwargs", {}), shares, self.consts)))
            elif op == "shl":
                v = self._local(torch.bitwise_left_shift(x[0].share, a["shift"]))
            elif op == "trunc":
                v = self._truncate(x[0], a["shift"])
                self.truncations_executed += 1
            elif op in ("pow2", "output"):
                v = x[0]
            else:
                raise ValueError(f"unknown op {op}")
            env[node.id] = v
        return [env[o] for o in plan.program.outputs]

    def _truncate(self, x, k: int):
        if self.truncation == "exact":
            return protocols.exact_truncate(x, k, self.AST, self.rank)  # looked up here: the audit wraps it
        return protocols.crypten_truncate(x, k)

    def open_outputs(self, outs: list, dst: int | None = None) -> list[torch.Tensor] | None:
        """Reveal the outputs (to ``dst`` only, if given) as real values; None on other ranks."""
        nodes = self.plan.program.nodes
        opened = [t.reveal(dst=dst) for t in outs]
        if dst is not None and self.rank != dst:
            return None
        return [Ring.decode(v, nodes[o].scale) for v, o in zip(opened, self.plan.program.outputs)]
