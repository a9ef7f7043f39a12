"""One CrypTen process running a plan file as a ``PlanModule`` (tests/test_plan_files_run.py): a
computing party, or the dealer when RANK == WORLD_SIZE.

    RANK=r WORLD_SIZE=n RENDEZVOUS=file:///tmp/x python tests/plan_file_party.py PLAN REDACTED TOKENS OUT.json

The model owner (rank 0) loads the full plan and the model's weights; the others the redacted
copy; the client (rank 1) feeds the one-hot TOKENS (comma-separated ids) as a ``crypten.cryptensor``
and alone learns the output, which it writes to OUT.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crypten_party import exit_now  # noqa: E402


def main() -> None:
    plan_path, redacted_path, tokens, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    import truncbridge.crypten as tbc
    from truncbridge.core.planfile import attach_weights, load_plan
    from truncbridge.frontend.models import load_model

    crypten = tbc.import_crypten()
    tbc.init(timeout_s=60)  # the dealer's process deals here and exits
    rank = crypten.communicator.get().get_rank()
    if rank == 0:  # the model owner: the full plan and its weights
        plan = load_plan(plan_path)
        loaded = load_model(plan.model["name"])
        attach_weights(plan, loaded.model, loaded.name)
    else:
        plan = load_plan(redacted_path)
    ids = torch.tensor([int(t) for t in tokens.split(",")])
    vocab = plan.model["vocab"]
    one_hot = torch.nn.functional.one_hot(ids[None], vocab).double() if rank == 1 else torch.zeros(1, len(ids), vocab)
    model = tbc.PlanModule(plan).encrypt(src=0)
    y = model(crypten.cryptensor(one_hot, src=1))
    opened = y._tensor.reveal(dst=1)  # only the client learns it
    result = None if rank != 1 else (opened.double() / y._tensor.encoder.scale).tolist()
    out.write_text(json.dumps({"rank": rank, "truncations": model.runner.truncations_executed, "output": result}))
    crypten.uninit()
    exit_now(0)


if __name__ == "__main__":
    main()
