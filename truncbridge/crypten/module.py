"""A plan as a CrypTen module, for CrypTen programs of your own.

    import truncbridge.crypten as tbc
    crypten = tbc.import_crypten()
    tbc.init()                                   # every process; the dealer never returns from it
    model = tbc.PlanModule(plan).encrypt(src=0)  # rank 0 holds the plan's weights
    x = crypten.cryptensor(one_hot_tokens, src=1)        # the client's input, CrypTen's encoding
    y = model(x)                                 # an MPCTensor in CrypTen's encoding
    logits = (y * 1.0).get_plain_text(dst=1)     # ... or any further CrypTen operation

Start ``world size + 1`` processes with ``RANK`` / ``WORLD_SIZE`` (the computing parties) /
``RENDEZVOUS`` set: the extra rank (``RANK == WORLD_SIZE``) is the dealer, as in ``run_pi.py``.
The module runs the plan with ``PlanRunner`` (deferred, exact truncations where the plan puts
them) and converts at its edges: the input from CrypTen's 16 fraction bits to the plan's input
scale, the output from the plan's output scale back to CrypTen's — each by a public shift or one
exact truncation, never by CrypTen's own division.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

from ..backends.crypten.compat import import_crypten
from ..backends.crypten.dealing import configure, install_provider
from ..backends.crypten.roles import CLIENT, OWNER
from ..core.errors import UserError

crypten = import_crypten()


def init(dealer: str = "separate", timeout_s: float = 60.0):
    """``crypten.init()`` with truncbridge's dealer (``dealer.py``). On a computing party it returns
    the ``DealtProvider`` (its ``deal`` and ``recording_requests`` let a program deal in advance);
    the dealer's process deals until the parties call ``crypten.uninit()`` and then exits."""
    import torch.distributed.distributed_c10d as c10d

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if dealer == "separate" and rank == world:
        from ..backends.crypten.dealing import run_dealer

        run_dealer(startup_s=timeout_s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no C++ static destructors: gloo's can abort after a clean shutdown
    c10d.default_pg_timeout = timedelta(seconds=timeout_s)  # CrypTen passes none: torch's is 30 minutes
    configure(crypten, dealer)
    crypten.init()
    return install_provider(crypten, dealer)


class PlanModule(crypten.nn.Module):
    """A truncbridge plan as a ``crypten.nn.Module`` with one input and one output."""

    def __init__(self, plan, truncation: str = "exact", client: int = CLIENT):
        super().__init__()
        if len(plan.program.inputs) != 1 or len(plan.program.outputs) != 1:
            raise UserError("PlanModule takes a plan with one input and one output")
        self.plan, self.truncation, self.client = plan, truncation, client
        self.owner, self._runner = OWNER, None  # the runner needs CrypTen's communicator: made at first use
        (self.input_name, input_id), = plan.program.inputs.items()
        self.input_scale = plan.program[input_id].scale
        self.output_scale = plan.program[plan.program.outputs[0]].scale

    @property
    def runner(self):
        """The ``PlanRunner`` (after ``init``): made at first use, so that a module can be built and
        emulated before CrypTen starts."""
        if self._runner is None:
            from ..backends.crypten.runner import PlanRunner

            self._runner = PlanRunner(self.plan, client=self.client, truncation=self.truncation, owner=self.owner)
        return self._runner

    def encrypt(self, mode: bool = True, src: int = OWNER):
        """The weights stay with ``src`` until a forward pass shares them (no communication:
        pseudo-random zero shares); there are no CrypTen parameters to encrypt."""
        self.owner = src
        self.runner.owner = src
        self.encrypted = mode
        return self

    def emulate(self, x, check: bool = True):
        """The plan on the real tensor ``x`` in the exact ring, without parties (``emulate``)."""
        return emulate(self.plan, x, check)

    def forward(self, x):
        from crypten.mpc import MPCTensor

        ours = _rescale(x._tensor, _precision(x._tensor), self.input_scale)
        out = self.runner.run(shared={self.input_name: ours})[0]
        target = crypten.cfg.encoder.precision_bits
        return MPCTensor.from_shares(_rescale(out, self.output_scale, target).share, precision=target)


def emulate(plan, x, check: bool = True):
    """The plan on ``x`` in the exact ring (what the parties compute, without them), decoded to
    float64. With ``check``, a value outside the bounds the plan promised — the input's declared
    range included — is an error that names the worst node."""
    from ..backends import RingExecutor

    executor = RingExecutor(plan)
    outs, _ = executor.run({_input_name(plan, x): x.detach().double()}, check=check)
    if check and executor.above_bound:
        worst = executor.worst_offenders(1)[0]
        at = f" at {worst['origin']}" if worst["origin"] else ""
        raise UserError(f"values exceed the plan's bounds: {executor.above_bound} elements, worst node {worst['node']} "
                        f"({worst['op']}{at}) saw {worst['seen']:.4g} > its {worst['source']} bound {worst['bound']:.4g}")
    return executor.decode_outputs(outs)[0]


def _input_name(plan, x) -> str:
    (name, nid), = plan.program.inputs.items()
    want = plan.program[nid].shape
    if tuple(x.shape) != tuple(want):
        raise UserError(f"the plan was made for inputs of shape {tuple(want)}, not {tuple(x.shape)}")
    return name


def _precision(ast) -> int:
    return int(ast.encoder.scale).bit_length() - 1


def _rescale(ast, have: int, want: int):
    """Shares at scale 2^have -> 2^want (precision 0 bookkeeping): a local shift up, or one exact
    truncation down."""
    from crypten.mpc.primitives import ArithmeticSharedTensor as AST

    from ..backends.crypten import truncation

    share = AST.from_shares(ast.share, precision=0)
    if want > have:
        return AST.from_shares(share.share << (want - have), precision=0)
    if want < have:
        rank = crypten.communicator.get().get_rank()
        return truncation.exact_truncate(share, have - want, AST, rank)
    return share
