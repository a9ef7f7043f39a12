"""One CrypTen process for the backend tests (no fork of the test runner): a computing party, or
the dealer when RANK == WORLD_SIZE.

    RANK=r WORLD_SIZE=n RENDEZVOUS=file:///tmp/x python tests/crypten_party.py MODE POLICY TRUNCATION OUT.json

MODE ``runner``: ``PlanRunner`` on the small program below; ``module``: the same plan as a
``PlanModule`` in a CrypTen program, its weights the last party's (the helper in 3PC), fed a
``crypten.cryptensor`` and followed by a CrypTen op;
``compare``: ``PlanRunner`` on ``compare_program`` (ReLUs and bare comparisons).

Every receipt is audited as run_pi's ``--audit`` does (``truncbridge.pi.audit``): each computing
party writes its ``OpeningLog`` to ``log{rank}.pt`` and the dealer the masks it dealt to
``masks.pt``, beside OUT.json, for the test to check what every rank received.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from truncbridge.analysis import calibrated_bounds, place  # noqa: E402
from truncbridge.core.ir import Builder  # noqa: E402
from truncbridge.core.types import PlanConfig  # noqa: E402
from truncbridge.pi.audit import OpeningLog, instrument  # noqa: E402
from truncbridge.pi.link import Link  # noqa: E402

from helpers import float_maxabs  # noqa: E402

INPUTS = {"x": torch.linspace(-1, 1, 32, dtype=torch.float64).view(4, 8)}
AFTER = 3.0  # the module test multiplies the module's output by this, in CrypTen


def program():
    """matmul with a weight (itself plus a public constant, as Gemma's 1 + γ), a square, public ops, a row
    sum broadcast back, a product."""
    b = Builder()
    x = b.input("x", (4, 8))
    w = b.add_public(b.weight("w", torch.linspace(-1.25, 0.75, 64, dtype=torch.float64).view(8, 8)), 0.25)
    y = b.matmul(x, w)
    z = b.add_public(b.mul_public(b.mul(y, y), 0.37), 1.5)
    s = b.move("aten.expand.default", [b.sum(z, [1], keepdim=True)], ["$0", [4, 8]])
    b.output(b.mul(b.mul(z, s), x))
    return b.program


def _compare_inputs() -> dict[str, torch.Tensor]:
    x = torch.linspace(-1, 1, 33, dtype=torch.float64)[:32].view(4, 8)  # holds an exact 0
    x[0, :2] = torch.tensor([2.0 ** -16, -(2.0 ** -16)])  # +-1 LSB at scale 16
    big = 2.0 ** 60  # raw ring values near the top of the ring, either sign
    v = torch.tensor([[0, 1, -1, 2, -2, big, -big, big - 2 ** 9], [-(big - 2 ** 9), 3, -3, 0, 7, -7, 2 ** 40, -2 ** 40]],
                     dtype=torch.float64)
    return {"x": x, "v": v}


COMPARE_INPUTS = _compare_inputs()


def compare_program():
    """relu of a matmul, times the input, then relu again; and the bare comparisons [x >= 0] of the
    input (exact 0, +-1 LSB) and of an integer input with values up to 2^60 (outputs 1 and 2)."""
    b = Builder()
    x, v = b.input("x", (4, 8)), b.input("v", (2, 8), integer=True)
    w = b.weight("w", torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    y = b.relu(b.add_public(b.matmul(x, w), -0.25))
    b.output(b.relu(b.add_public(b.mul(y, x), -0.05)))
    b.output(b.nonneg(x))
    b.output(b.nonneg(v))
    return b.program


def plan_for(policy: str, field_bits: int = 64, compare: bool = False):
    prog, inputs = (compare_program(), COMPARE_INPUTS) if compare else (program(), INPUTS)
    return place(prog, calibrated_bounds(prog, float_maxabs(prog, inputs), 1), PlanConfig(field_bits, 16, policy))


class Receipts(Link):
    """This party's communicator receipts, logged against the protocol step that opened each
    (``audit.instrument``), as run_pi's ``Party`` logs them under ``--audit``."""

    def __init__(self, crypten, provider, rank: int):
        self.crypten, self.audit, self.network, self.log = crypten, True, None, OpeningLog(rank)
        self._label, self._calls, self._delaying, self.comm_s = "protocol", 0, False, 0.0
        instrument(self.log)
        provider.on_take = self.log.took
        self._wrap_communicator()


def main() -> None:
    mode, policy, truncation, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    import truncbridge.crypten as tbc

    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]):  # the dealer: deal, keep every mask
        from truncbridge.backends.crypten.dealing import run_dealer

        torch.save(run_dealer(audit=True, startup_s=60).masks, out.parent / "masks.pt")
        exit_now(0)
    crypten = tbc.import_crypten()
    provider = tbc.init(timeout_s=60)
    rank = crypten.communicator.get().get_rank()
    receipts = Receipts(crypten, provider, rank)
    # every generator this party draws from: CrypTen's own (re-keyed) and its dealer stream
    generators = sorted({type(g).__name__ for by_device in crypten.generators.values() for g in by_device.values()}
                        | {type(provider.stream).__name__})
    with receipts.audited():
        if mode == "generate":  # POLICY names the folder of the generation plans and the client's prompt
            outputs, executed, compared = _generate(tbc, Path(policy), rank, receipts), 0, 0
        elif mode == "module":
            owner = crypten.communicator.get().get_world_size() - 1  # 3PC: the helper owns the weights, not rank 0
            model = tbc.PlanModule(plan_for(policy), truncation=truncation).encrypt(src=owner)
            with receipts.audited(before_input=True):
                model.runner.prepare()  # the weights' halves, before the client's input is shared
            x = crypten.cryptensor(INPUTS["x"] if rank == 1 else torch.zeros(4, 8), src=1)
            y = model(x) * AFTER  # the module's output is an MPCTensor: CrypTen goes on from it
            with receipts.revealing_output():
                opened = y._tensor.reveal(dst=1)  # only the client learns it: None elsewhere
            outputs = None if opened is None else [(opened.double() / y._tensor.encoder.scale).tolist()]
            executed, compared = model.runner.truncations_executed, 0
        else:
            compare = mode == "compare"
            runner = tbc.PlanRunner(plan_for(policy, compare=compare), truncation=truncation)
            with receipts.audited(before_input=True):
                runner.prepare()
            shares = runner.run((COMPARE_INPUTS if compare else INPUTS) if rank == 1 else None)
            with receipts.revealing_output():
                opened = runner.open_outputs(shares, dst=1)
            outputs = None if opened is None else [o.tolist() for o in opened]
            executed, compared = runner.truncations_executed, runner.comparisons_executed
    torch.save(receipts.log.export(), out.parent / f"log{rank}.pt")
    out.write_text(json.dumps({"rank": rank, "truncations": executed, "comparisons": compared, "generators": generators,
                               "outputs": outputs}))
    crypten.uninit()
    exit_now(0)


def _generate(tbc, folder: Path, rank: int, receipts) -> list[int] | None:
    """``tbc.PrivateGeneration`` on the plans in ``folder`` (plan<C>.json per cache length, vocab.json): the
    client's prompt (prompt.json, read on its rank only) in, its tokens out; each logit opening counted as output."""
    from truncbridge.core.planfile import load_plan
    from truncbridge.crypten.generation import Hooks

    class Counted(Hooks):
        def preparing(self):
            return receipts.audited(before_input=True)

        def revealing(self, elements):
            return receipts.revealing_output()

    plans = {int(p.stem[4:]): load_plan(p) for p in sorted(folder.glob("plan*.json"), key=lambda p: int(p.stem[4:]))}
    if rank == 0:  # the model owner: the plans' weights, from the model they were made for
        from truncbridge.core.planfile import attach_weights
        from truncbridge.frontend.models import load_model

        model = load_model("default").model
        for plan in plans.values():
            attach_weights(plan, model, "default")
    prompt = torch.tensor(json.loads((folder / "prompt.json").read_text())) if rank == 1 else None
    generation = tbc.PrivateGeneration(plans, vocab=json.loads((folder / "vocab.json").read_text()))
    return generation.generate(prompt, hooks=Counted())


def exit_now(status: int) -> None:
    """Leave without C++ static destructors: gloo's sometimes abort ("terminate called without an
    active exception") after a clean uninit, when all the work is done and written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
