"""One CrypTen party for the backend tests, run as its own process (no fork of the test runner).

    RANK=r WORLD_SIZE=n RENDEZVOUS=file:///tmp/x python tests/crypten_party.py POLICY TRUNCATION OUT.json
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed.distributed_c10d as c10d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import float_maxabs  # noqa: E402

from truncbridge.analysis import calibrated_bounds  # noqa: E402
from truncbridge.crypten import import_crypten  # noqa: E402
from truncbridge.ir import Builder  # noqa: E402
from truncbridge.placement import place  # noqa: E402

INPUTS = {"x": torch.linspace(-1, 1, 32, dtype=torch.float64).view(4, 8)}


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
    return place(prog, policy, field_bits, 16, calibrated_bounds(prog, float_maxabs(prog, INPUTS), 1))


def main() -> None:
    policy, truncation, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    crypten = import_crypten()
    c10d.default_pg_timeout = timedelta(seconds=60)  # a lost peer ends this party, not hangs it
    crypten.init()
    from truncbridge.crypten import PlanRunner

    runner = PlanRunner(plan_for(policy), truncation=truncation)
    outs = runner.run(INPUTS if runner.rank == 1 else None)
    opened = runner.open_outputs(outs, dst=1)  # only the client learns the output
    out.write_text(json.dumps({"rank": runner.rank, "truncations": runner.truncations_executed,
                               "output": None if opened is None else opened[0].tolist()}))
    crypten.uninit()


if __name__ == "__main__":
    main()
