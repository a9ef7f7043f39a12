"""One CrypTen process for ``test_op_table``'s new affine op: a computing party, or the dealer when
RANK == WORLD_SIZE. The party registers ``rsub_public`` (the test's one table entry) and runs the
eager plan of ``affine_program`` with the exact truncation, fused and batched.

    RANK=r WORLD_SIZE=n RENDEZVOUS=file:///tmp/x python tests/affine_party.py OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_op_table import AFFINE_INPUTS, RSUB_PUBLIC, affine_plans  # noqa: E402

from truncbridge.core import ops  # noqa: E402

from crypten_party import exit_now  # noqa: E402


def main() -> None:
    import truncbridge.crypten as tbc

    ops.OPS["rsub_public"] = RSUB_PUBLIC
    crypten = tbc.import_crypten()
    tbc.init(timeout_s=60)  # the dealer's process deals here and exits
    rank = crypten.communicator.get().get_rank()
    runner = tbc.PlanRunner(affine_plans("eager")[0], truncation="exact")
    opened = runner.open_outputs(runner.run(AFFINE_INPUTS if rank == 1 else None), dst=1)
    Path(sys.argv[1]).write_text(json.dumps({"output": None if opened is None else opened[0].tolist(),
                                             "truncations": runner.truncations_executed,
                                             "riding": sorted(p for c in runner.carried.values() for p in c.products)}))
    crypten.uninit()
    exit_now(0)


if __name__ == "__main__":
    main()
