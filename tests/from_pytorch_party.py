"""``from_pytorch`` on real CrypTen parties: one process of ``mpirun -n 3`` (rank 0 the model owner,
rank 1 the client, rank 2 the dealer), running every module of ``CASES`` in one CrypTen session.

    mpirun -n 3 --oversubscribe python tests/from_pytorch_party.py OUT_DIR

The owner converts each module (``truncbridge.crypten.from_pytorch``) and sends the client only the
redacted plan (structure, scales, shifts; no weights, ``core.planfile``); the client shares its
real-valued input as ``crypten.cryptensor(x, src=1)``; the output is revealed to the client only.
Each computing rank writes OUT_DIR/out<rank>.json: per module, what its reveal returned (decoded) and
the truncations it executed. The modules, their inputs and bounds are defined here, for the test.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

OWNER, CLIENT, PARTIES = 0, 1, 2


def mlp() -> torch.nn.Module:
    """Linear - GELU - Linear - SiLU - Linear, on 8 features."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.SiLU(),
                               torch.nn.Linear(16, 4))


class SmallCNN(torch.nn.Module):
    """conv 3x3 (padding 1) - GELU - 2x2 average pool - conv 3x3 (stride 2) - ReLU - global mean - linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2)
        self.pool = torch.nn.AvgPool2d(2)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(torch.nn.functional.gelu(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((-1, -2)))


def _seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MLP_BOUNDS = (-2.0, 2.0)
# name -> (module factory, dummy input, from_pytorch's bound arguments, the client's input)
CASES = {
    "mlp": (mlp, torch.zeros(1, 8), {"input_bounds": MLP_BOUNDS},
            (torch.rand(1, 8, generator=torch.Generator().manual_seed(2)) * 4 - 2)),
    "cnn": (SmallCNN, torch.zeros(1, 2, 8, 8), {"calibration": _seeded(3, 32, 2, 8, 8)}, _seeded(4, 1, 2, 8, 8)),
}


def plan_module(name: str, policy: str = "lazy"):
    """The case's ``PlanModule`` as the owner makes it (``from_pytorch``, exact truncation)."""
    import truncbridge.crypten as tbc

    factory, dummy, bounds, _ = CASES[name]
    return tbc.from_pytorch(factory(), dummy, policy=policy, **bounds)


def main() -> None:
    from mpi4py import MPI

    import truncbridge.crypten as tbc
    from truncbridge.core.planfile import plan_from_json, plan_to_json
    from truncbridge.pi import mpi

    comm = MPI.COMM_WORLD
    rank, out_dir = comm.Get_rank(), Path(sys.argv[1])
    # the owner plans; the client receives the redacted plans only (the dealer needs none)
    plans = {name: plan_module(name).plan for name in CASES} if rank == OWNER else None
    docs = mpi.bcast(comm, {k: plan_to_json(p, redacted=True) for k, p in plans.items()} if plans else None, "plans",
                     ranks=range(PARTIES))
    address = mpi.rendezvous(comm)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(PARTIES), "RENDEZVOUS": address,
                       "DISTRIBUTED_BACKEND": "gloo"})
    if rank == PARTIES:  # the dealer: deals until the parties leave, then ends MPI with them
        from truncbridge.backends.crypten.dealing import run_dealer

        run_dealer(startup_s=60)
        mpi.leave(0)
    crypten = tbc.import_crypten()
    tbc.init(timeout_s=60)
    results = {}
    for name, (*_, x) in CASES.items():
        plan = plans[name] if rank == OWNER else plan_from_json(docs[name], f"redacted {name} plan")
        model = tbc.PlanModule(plan).encrypt(src=OWNER)
        y = model(crypten.cryptensor(x if rank == CLIENT else torch.zeros_like(x), src=CLIENT))
        seen = y.get_plain_text(dst=CLIENT)  # the client's output; what the owner's call returns is checked too
        results[name] = {"revealed": None if seen is None else seen.double().tolist(),
                         "truncations": model.runner.truncations_executed, "redacted": plan.redacted}
    (out_dir / f"out{rank}.json").write_text(json.dumps({"rank": rank, "results": results}))
    crypten.uninit()
    mpi.leave(0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
