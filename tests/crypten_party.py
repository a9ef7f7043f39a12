"""One CrypTen process for the backend tests (no fork of the test runner): a computing party, or
the dealer when RANK == WORLD_SIZE.

    RANK=r WORLD_SIZE=n RENDEZVOUS=file:///tmp/x python tests/crypten_party.py MODE POLICY TRUNCATION OUT.json

MODE ``runner``: ``PlanRunner`` on the small program below; ``module``: the same plan as a
``PlanModule`` in a CrypTen program, fed a ``crypten.cryptensor`` and followed by a CrypTen op.
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

from helpers import float_maxabs  # noqa: E402

INPUTS = {"x": torch.linspace(-1, 1, 32, dtype=torch.float64).view(4, 8)}
AFTER = 3.0  # the module test multiplies the module's output by this, in CrypTen


def program():
    """matmul with a weight, a square, public ops, a row sum broadcast back, a product."""
    b = Builder()
    x = b.input("x", (4, 8))
    w = b.weight("w", torch.linspace(-1, 1, 64, dtype=torch.float64).view(8, 8))
    y = b.matmul(x, w)
    z = b.add_public(b.mul_public(b.mul(y, y), 0.37), 1.5)
    s = b.move("aten.expand.default", [b.sum(z, [1], keepdim=True)], ["$0", [4, 8]])
    b.output(b.mul(b.mul(z, s), x))
    return b.program


def plan_for(policy: str, field_bits: int = 64):
    prog = program()
    return place(prog, calibrated_bounds(prog, float_maxabs(prog, INPUTS), 1), PlanConfig(field_bits, 16, policy))


def main() -> None:
    mode, policy, truncation, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    import truncbridge.crypten as tbc

    crypten = tbc.import_crypten()
    tbc.init(timeout_s=60)  # the dealer's process deals here and exits
    rank = crypten.communicator.get().get_rank()
    if mode == "module":
        model = tbc.PlanModule(plan_for(policy), truncation=truncation).encrypt(src=0)
        x = crypten.cryptensor(INPUTS["x"] if rank == 1 else torch.zeros(4, 8), src=1)
        y = model(x) * AFTER  # the module's output is an MPCTensor: CrypTen goes on from it
        opened = y._tensor.reveal(dst=1)  # only the client learns it
        result = None if rank != 1 else (opened.double() / y._tensor.encoder.scale).tolist()
        executed = model.runner.truncations_executed
    else:
        runner = tbc.PlanRunner(plan_for(policy), truncation=truncation)
        opened = runner.open_outputs(runner.run(INPUTS if rank == 1 else None), dst=1)
        result = None if opened is None else opened[0].tolist()
        executed = runner.truncations_executed
    out.write_text(json.dumps({"rank": rank, "truncations": executed, "output": result}))
    crypten.uninit()
    exit_now(0)


def exit_now(status: int) -> None:
    """Leave without C++ static destructors: gloo's sometimes abort ("terminate called without an
    active exception") after a clean uninit, when all the work is done and written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
