"""Run a plan on CrypTen secret shares, with truncations exactly where the plan puts them.

Values are CrypTen ``ArithmeticSharedTensor``s with ``precision=0``: CrypTen's encoder does no
rescaling, the plan's scales are our own bookkeeping, and products are plain Beaver products
(``beaver.mul`` / ``beaver.square`` / ``beaver.matmul``) — never truncated behind our back.
A ``trunc`` node runs one of the protocols of ``truncation.py``: ``"crypten"`` (CrypTen's own
division: local with 2 parties, wraps with 3) or ``"exact"`` (one opening, exact for |x| < 2^62).
With ``"exact"`` and ``fuse`` (the default), the elementwise products that ``core.fusion`` finds
ride on a truncation's opening: they cost no round of their own. With ``batch`` (the default) the
plan runs wave by wave (``core.waves``): every opening ready in the same round — Beaver products,
exact truncations — goes in one message (``openings.reveal_together``); without it, one step at a
time as CrypTen executes.
Both are unbiased on their own, so the plan's round-to-nearest offset is not added: the
emulator's matching truncation models (``RingExecutor(truncation=...)``) say what MPC outputs.
It is a backend of ``core.interpret`` (``Backend``; batched, a ``WaveBackend`` walked by
``interpret_waves``): local ops (additions, sums, data movement) apply the op table's own map to
each party's share, public operations act on shares locally. Weights are
shared by rank 0 (the model owner), the one-hot tokens by ``client`` (rank 1 by default); only
outputs are opened.
Masks come from CrypTen's default provider, which ``truncbridge.crypten.init`` makes a dealer
apart from the computing parties (``dealer.py``).

Call inside an initialised CrypTen process (``truncbridge.crypten.import_crypten()``).
"""
from __future__ import annotations

from collections import Counter

import torch

from ...core.errors import UserError
from ...core.fusion import carried
from ...core.interpret import interpret, interpret_waves
from ...core.ops import Public, spec
from ...core.ring import Ring
from ...core.types import Plan
from ...core.waves import input_independent
from . import openings
from . import truncation as protocols
from .batched import prepare_static, wave_schedule
from .compat import import_crypten
from .material import MAX_SHIFT
from .roles import CLIENT, OWNER
from .shares import add_public, share_from
from .truncation import EXACT_LIMIT_BITS, PROTOCOLS


class PlanRunner:
    """A ``core.interpret.WaveBackend`` on CrypTen shares: the nine kind hooks, and ``open``,
    ``exchange``, ``finish`` for the batched walk (``interpret_waves``)."""

    def __init__(self, plan: Plan, client: int = CLIENT, truncation: str = "crypten", owner: int = OWNER,
                 fuse: bool = True, batch: bool = True):
        if plan.field_bits != 64 or plan.prime is not None:
            raise UserError(f"CrypTen computes in Z_2^64: this plan is for {plan.field_name}")
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
        self._encoded: dict[tuple[str, int], torch.Tensor] = {}  # public constants in the ring, made once
        self.truncations_executed = 0
        self.comparisons_executed = 0
        self.inputs, self.shared = None, None
        self.carried = carried(plan.program) if fuse and truncation == "exact" else {}
        self._riding = {p for c in self.carried.values() for p in c.products}
        self._operand_uses = Counter(z for c in self.carried.values() for z in c.others)  # opened with truncations
        self._uses_left: Counter = Counter()
        self._held: dict = {}  # values a carried product needs when its truncation runs
        self._carried: dict = {}  # product id -> its value, made at its truncation's opening
        self.batch = batch
        self._waves = None  # core.waves' schedule, made on the first batched run
        self._static_ids = input_independent(plan.program) if batch else set()
        self._static: dict | None = None  # what prepare() made: interpret_waves' precomputed values
        self._halves: dict = {}  # product id -> (activation's side, its weight's half), opened by prepare()

    def _local(self, share: torch.Tensor):
        return self.AST.from_shares(share, precision=0)

    def run(self, inputs: dict[str, torch.Tensor] | None = None, shared: dict | None = None) -> list:
        """Execute the plan; ``inputs`` (real values) are needed only on the client's rank, and
        ``shared`` gives already-shared inputs by name (``ArithmeticSharedTensor`` at the input's scale).
        Returns the output shares (``ArithmeticSharedTensor``), unopened."""
        self.inputs, self.shared = inputs, shared
        self.truncations_executed = self.comparisons_executed = 0
        self._held, self._carried = {}, {}
        self._uses_left = Counter(self._operand_uses)
        visit = self._hold if self._operand_uses else None
        if not self.batch:
            return interpret(self.plan.program, self, visit=visit)
        if self._static is None:
            self.prepare()
        if self._waves is None:
            world = self.crypten.communicator.get().get_world_size()
            self._waves = wave_schedule(self.plan.program, self._riding, self.carried, self.truncation == "exact", world)
        try:
            return interpret_waves(self.plan.program, self, self._waves, visit=visit, precomputed=self._static)
        finally:
            self._static, self._halves = None, {}  # a half's triple serves one pass: hold none between passes

    def prepare(self) -> None:
        """The weights' shares and, for every private product of a weight, the weight's half of its
        Beaver opening (``batched.prepare_static``), all in one message — before the online phase.
        ``run`` calls it if the caller has not; each call serves one run."""
        self._static, self._halves = prepare_static(self.plan.program, self, self._static_ids, self._riding, self.rank)

    def _hold(self, node, value) -> None:
        if node.id in self._operand_uses:
            self._held[node.id] = value

    # -- the backend: one method per op kind (core.interpret) ------------------------------------
    def source(self, node, op, xs):
        name = node.attrs["name"]
        if node.op == "input" and self.shared is not None and name in self.shared:  # e.g. a KV cache, kept shared
            return self.shared[name]
        holder, values = (self.client, self.inputs) if node.op == "input" else (self.owner, self.plan.program.weights)
        value = self.ring.encode(values[name], node.scale) if self.rank == holder else None
        return share_from(self.AST, value, node.shape, holder, self.rank)

    def owned(self, node):
        """A weight shared the owner's way (``batched.prepare_static``): its share is the weight, the others' zero."""
        share = (self.ring.encode(self.plan.program.weights[node.attrs["name"]], node.scale) if self.rank == self.owner
                 else torch.zeros(node.shape, dtype=torch.int64))
        return self.AST.from_shares(share, precision=0)

    def local(self, node, op, xs):  # the same linear map on every party's share
        return self._local(op.real([x.share for x in xs], node, self.plan.program))

    def product(self, node, op, xs):
        if node.id in self._carried:
            return self._carried.pop(node.id)
        if node.op == "matmul":
            return self.beaver.matmul(*xs)
        return self.beaver.square(xs[0]) if node.inputs[0] == node.inputs[1] else self.beaver.mul(*xs)

    def public(self, node, op, xs):  # α·x + β (the op table's ``affine``), locally on the shares
        alpha, beta = op.affine(node)
        x = xs[0] if alpha == 1 else self._local(xs[0].share * self.ring_integer(alpha))
        at = self.owner if node.id in self._static_ids else 0  # a weight's: the others' shares stay zero (``owned``)
        return x if beta == 0 else add_public(self.AST, x, self.ring_integer(beta), self.rank, at)

    def ring_integer(self, c):
        """A public coefficient as the ring integer (or tensor of them) the parties compute with."""
        return self.encoded(c.const, c.scale) if isinstance(c, Public) else c

    def encoded(self, const: str, scale: int) -> torch.Tensor:
        """A public constant in the ring at ``scale`` (encoded once: every run uses it alike)."""
        if (const, scale) not in self._encoded:
            self._encoded[const, scale] = self.ring.encode_public(self.consts[const], scale)
        return self._encoded[const, scale]

    def relabel(self, node, op, xs):
        return xs[0]

    output = relabel

    def shift(self, node, op, xs):
        return self._local(torch.bitwise_left_shift(xs[0].share, node.attrs["shift"]))

    def compare(self, node, op, xs):
        """[x >= 0] as 0/1 integers at precision 0, by CrypTen's own sign test (``MPCTensor._ltz``):
        A2B, the sign bit, one-bit B2A — binary triples and B2A bits from the dealer — then 1 - [x < 0]."""
        from crypten.mpc.primitives.converters import convert
        from crypten.mpc.ptype import ptype

        self.comparisons_executed += 1
        sign = convert(xs[0], ptype.binary) >> 63  # every bit = the sign bit (arithmetic shift of XOR shares)
        negative = convert(sign, ptype.arithmetic, precision=0, bits=1)
        return add_public(self.AST, self._local(-negative.share), 1, self.rank)

    def truncate(self, node, op, xs):
        if self.truncation == "exact":  # one opening of its own (batched runs group them: open, exchange, finish)
            step = self.open(node, op, xs)
            self.exchange([step])
            return self.finish(node, op, step)
        self.truncations_executed += 1
        return protocols.crypten_truncate(xs[0], node.attrs["shift"])

    # -- the wave walk's hooks (core.interpret.WaveBackend) ---------------------------------------
    def open(self, node, op, xs) -> openings.Pending:
        """A Beaver product's or exact truncation's masked values, ready to open with the wave's others."""
        if node.op == "trunc":
            self.truncations_executed += 1
            c = self.carried.get(node.id)
            if c is None:
                return protocols.prepare_truncation(xs[0], node.attrs["shift"], self.AST, self.rank)
            return protocols.prepare_truncation(xs[0], node.attrs["shift"], self.AST, self.rank,
                                                others=tuple(self._held[z] for z in c.others), degree=c.degree,
                                                other_degrees=tuple(c.other_degrees), pairs=tuple(c.pairs))
        if node.id in self._halves:  # the weight's half was opened before the online phase
            side, pre = self._halves.pop(node.id)  # its triple and w − b serve this product once
            return openings.half_finished(side, xs[side], pre, node.op, self.rank)
        if node.op == "matmul":
            return openings.beaver(*xs, "matmul", self.rank)
        if node.inputs[0] == node.inputs[1]:
            return openings.square(xs[0], self.rank)
        return openings.beaver(*xs, "mul", self.rank)

    def exchange(self, steps: list) -> None:
        openings.reveal_together(steps)  # looked up here: the audit wraps it

    def finish(self, node, op, step: openings.Pending):
        if node.op != "trunc":
            return step.result
        if node.id in self.carried:
            return self._from_opened(node, step.result, self.carried[node.id])
        return self._local(step.result.result())

    def _from_opened(self, node, opened, carried):
        """The truncation's result, and the values of the products it carries (kept for them)."""
        values = {node.id: opened.y()} | {z: opened.operand(j) for j, z in enumerate(carried.others)}
        for p in carried.products:
            a, b = (self._carried_value(i, values) for i in self.plan.program[p].inputs)
            values[p] = a * b
            self._carried[p] = self._local(opened.share(values[p]))
        for z in carried.others:
            self._release(z)
        return self._local(opened.result())

    def _release(self, operand: int) -> None:
        self._uses_left[operand] -= 1
        if not self._uses_left[operand]:
            del self._held[operand]

    def _carried_value(self, i: int, values: dict):
        """Node i as a carried value: one already made, or a public affine map of one (``core.fusion``)."""
        if i not in values:
            n = self.plan.program[i]
            if spec(n).affine is None:
                raise RuntimeError(f"node {i} ({n.op}) is not carried by the truncation (core.fusion disagrees)")
            alpha, beta = spec(n).affine(n)
            v = self._carried_value(n.inputs[0], values)
            v = v if alpha == 1 else v.scaled(self.ring_integer(alpha))
            values[i] = v if beta == 0 else v.plus_public(self.ring_integer(beta))
        return values[i]

    def open_outputs(self, outs: list, dst: int | None = None) -> list[torch.Tensor] | None:
        """Reveal the outputs (to ``dst`` only, if given) as real values; None on other ranks."""
        nodes = self.plan.program.nodes
        opened = [t.reveal(dst=dst) for t in outs]
        if dst is not None and self.rank != dst:
            return None
        return [Ring.decode(v, nodes[o].scale) for v, o in zip(opened, self.plan.program.outputs)]
