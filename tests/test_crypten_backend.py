"""The same plan on real CrypTen parties — separate processes, with the dealer apart — matches the
exact emulator, as a PlanRunner and as a PlanModule inside a CrypTen program; every receipt of
every party is audited (``truncbridge.pi.audit``): only the client receives the output."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from truncbridge.backends import RingExecutor
from truncbridge.core.errors import UserError
from truncbridge.pi.audit import findings

from crypten_party import AFTER, COMPARE_INPUTS, INPUTS, plan_for
from helpers import run_processes

PARTY = Path(__file__).resolve().parent / "crypten_party.py"
pytestmark = pytest.mark.slow  # real party processes
# Each truncation is off by a few LSB in CrypTen (2PC: local share division; 3PC: wraps protocol,
# -2..+3 seen); this program amplifies such errors by at most ~2^6 on its way to the output.
TOLERANCE = 2.0 ** -8


def run_parties(parties: int, policy: str, truncation: str, tmp: Path, mode: str = "runner") -> dict[int, dict]:
    """Start every party and the dealer (rank ``parties``) as their own Python processes; none may
    take longer than 120 s."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WORLD_SIZE": str(parties), "RENDEZVOUS": f"file://{tmp / 'rendezvous'}",
           "DISTRIBUTED_BACKEND": "gloo"}
    run_processes(lambda r: [sys.executable, str(PARTY), mode, policy, truncation, str(tmp / f"out{r}.json")],
                [{**env, "RANK": str(r)} for r in range(parties + 1)], timeout_s=120)
    assert not (tmp / f"out{parties}.json").exists()  # the dealer only deals
    return {r: json.loads((tmp / f"out{r}.json").read_text()) for r in range(parties)}


def audited_openings(tmp: Path, parties: int, outputs: int) -> Counter:
    """What every rank received, from its ``OpeningLog``: each receipt is an opening of a secret
    under a fresh mask the dealer dealt (and the receiver does not know), every dealt mask is
    used, and the ``outputs`` revealed values reach the client (rank 1) and no other rank. Returns
    the opened steps by kind."""
    logs = [torch.load(tmp / f"log{r}.pt", weights_only=False) for r in range(parties)]
    masks = torch.load(tmp / "masks.pt", weights_only=False)
    assert findings(logs, masks, set()) == []
    assert [log["outputs"] for log in logs] == [outputs if r == 1 else 0 for r in range(parties)]
    assert {m for step in logs[0]["openings"] for m in step.masks} == set(masks)
    return Counter(part.kind for step in logs[0]["openings"] for part in (step.parts or [step]))


@pytest.mark.parametrize("parties,truncation", [(2, "crypten"), (3, "crypten"), (3, "exact")])
def test_crypten_parties_match_the_emulator(parties, truncation, tmp_path):
    for policy in ("eager", "lazy"):
        results = run_parties(parties, policy, truncation, tmp_path / policy)
        opened = audited_openings(tmp_path / policy, parties, outputs=1)  # only the client receives it
        assert all(results[r]["outputs"] is None for r in results if r != 1)  # and open_outputs gives it no one else
        assert all(results[r]["generators"] == ["AesCtrStream"] for r in results)  # no torch generator left
        plan = plan_for(policy)
        ex = RingExecutor(plan)
        want = ex.decode_outputs(ex.run(INPUTS)[0])[0]
        got = torch.tensor(results[1]["outputs"][0], dtype=torch.float64)
        assert all(results[r]["truncations"] == plan.counts()["truncations"] for r in results)
        if truncation == "exact":  # each truncation is one opening, counted from what the parties received
            assert opened["trunc"] == plan.counts()["truncations"], opened
        assert (got - want).abs().max().item() <= TOLERANCE, policy
    assert plan_for("lazy").counts()["truncations"] < plan_for("eager").counts()["truncations"]


def test_crypten_comparisons_match_the_emulator(tmp_path):
    """ReLUs and bare comparisons ([x >= 0]: CrypTen's A2B, sign bit and B2A, material from the
    dealer) by 2 parties: the bits exactly, the ReLU output within the truncations' tolerance."""
    for policy in ("eager", "lazy"):
        results = run_parties(2, policy, "exact", tmp_path / policy, mode="compare")
        opened = audited_openings(tmp_path / policy, 2, outputs=3)
        assert results[0]["outputs"] is None
        plan = plan_for(policy, compare=True)
        ex = RingExecutor(plan)
        want = ex.decode_outputs(ex.run(COMPARE_INPUTS)[0])
        got = [torch.tensor(o, dtype=torch.float64) for o in results[1]["outputs"]]
        assert (got[0] - want[0]).abs().max().item() <= TOLERANCE, policy
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]), policy
        assert torch.equal(got[2], (COMPARE_INPUTS["v"] >= 0).double())
        counts = plan.counts()
        assert results[1]["comparisons"] == counts["comparisons"] == 4
        assert results[1]["truncations"] == counts["truncations"] == opened["trunc"]


@pytest.mark.parametrize("parties", [3])
def test_a_plan_module_in_a_crypten_program(parties, tmp_path):
    """PlanModule takes a cryptensor in CrypTen's encoding and returns one CrypTen can go on with. Its
    weights are the helper's (``encrypt(src=2)``): a weight's public constant (the program's w + 0.25) is
    added at the owner, whose share is the whole weight, not at rank 0. 3PC only, for the suite's time:
    the module's wrapping is the same for any party count, and 2PC's exact truncation runs in test_run_pi
    (every policy, audited) and 2PC's PlanRunner above."""
    results = run_parties(parties, "lazy", "exact", tmp_path, mode="module")
    opened = audited_openings(tmp_path, parties, outputs=1)
    assert all(results[r]["outputs"] is None for r in results if r != 1)
    plan = plan_for("lazy")
    ex = RingExecutor(plan)
    want = ex.decode_outputs(ex.run(INPUTS)[0])[0] * AFTER
    got = torch.tensor(results[1]["outputs"][0], dtype=torch.float64)
    assert (got - want).abs().max().item() <= AFTER * TOLERANCE
    assert results[1]["truncations"] == plan.counts()["truncations"]
    # the module hands CrypTen its output at CrypTen's 16 fraction bits: one truncation more
    rescaled = plan.program[plan.program.outputs[0]].scale > 16
    assert opened["trunc"] == plan.counts()["truncations"] + rescaled, opened


def test_crypten_needs_a_64_bit_ring():
    from truncbridge.crypten import PlanRunner

    with pytest.raises(UserError, match="Z_2\\^64"):
        PlanRunner(plan_for("eager", field_bits=48))
