"""A private-inference session under mpirun: every policy run by real CrypTen parties, measured.

Roles: rank 0 owns the model (weights, plans), rank 1 is the client (token ids; the only party the
logits are revealed to), rank 2 helps in 3PC, and the last rank is the dealer (``dealer.py``): it
receives only sizes. ``--dealer owner-insecure`` drops the dealer process and lets the owner deal
(a benchmark setting: the owner then sees the client's data).

Per policy: one untimed pass records the request sequence (the dealer answers on demand); then
each timed repetition first deals everything (offline: time and bytes measured) and then runs
the online phase alone. MPI is the launcher's side channel and carries no secret of the
protocol: the rendezvous address, the *redacted* plans for the client and helper
(``core.planfile.redact_plan_json``), statistics, failure notices, and — after the timed runs, for
measurement only — the client's revealed logits to rank 0, which compares them with the
references (``owner.py``). Parties other than the owner build the architecture from its
config and never read the weight files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from ..cli_args import add_precision_tolerance
from ..core.errors import ArgumentParser, UserError
from ..core.protocols import load_network
from ..core.types import POLICIES as PLAN_POLICIES
from . import mpi
from .audit import findings
from .dealer import DEALERS
from .dealing import run_dealer
from .owner import client_window, make_plans, predictions, references
from .party import Party
from .results import INSECURE, add_predictions, format_table, policy_row, ratios
from .roles import role
from .truncation import PROTOCOLS
from .vanilla import CountDivisions

POLICIES = PLAN_POLICIES + ("vanilla",)  # vanilla: CrypTen as is, no plan
MAX_FINDINGS = 50  # kept in the JSON; the count says how many there were


def parse_args(argv: list[str]) -> argparse.Namespace:
    from ..frontend.models import MODEL_NAMES

    p = ArgumentParser(prog="run_pi.py", description="Private inference with real CrypTen parties and a separate dealer "
                "(mpirun -n 3: owner, client, dealer; -n 4: owner, client, helper, dealer).")
    p.add_argument("--model", default="default", help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory")
    p.add_argument("--seq-len", type=int, default=32, help="tokens in the client's window (default 32)")
    p.add_argument("--policy", default="eager,lazy,optimal,vanilla", help="comma-separated subset of " + ",".join(POLICIES))
    p.add_argument("--truncation", default="exact", choices=PROTOCOLS,
                   help="exact: truncbridge's 1-round exact protocol (default); crypten: CrypTen's own div")
    p.add_argument("--bounds", default="static", choices=("static", "calibrated"), help="bit-width analysis (default static)")
    p.add_argument("--frac-bits", type=int, default=16, help="fixed-point fraction bits (default 16)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the optimal placement's MILP (default 60)")
    add_precision_tolerance(p)
    p.add_argument("--repeat", type=int, default=1, help="run every policy this many times, interleaved; "
                   "wall_s is the median (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per party (default: this host's cores / parties on it, at least 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a party waits on a peer before giving up (default 30)")
    p.add_argument("--silence", type=float, default=5.0, help="seconds without a heartbeat before a peer is lost (default 5)")
    p.add_argument("--vanilla-rsqrt-scale", type=int, default=1,
                   help="vanilla only: rsqrt(x) = s * inv_sqrt(s^2 x), the hand-made workaround for CrypTen's "
                        "inv_sqrt range (default 1: CrypTen as is)")
    p.add_argument("--network", default=None,
                   help="emulate a network in software: lan, mid, wan (protocols/networks.json) or rtt=MS,bw=MBIT; each "
                        "communicator call of the online phase waits its round trip and bytes (default: none, as is)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="exact truncation: open every product on its own instead of letting it ride on a "
                        "truncation's opening (to measure what fusing buys)")
    p.add_argument("--no-batch", dest="batch", action="store_false",
                   help="open one step at a time, as CrypTen does, instead of every opening ready in the same "
                        "round in one message (to measure what batching buys)")
    p.add_argument("--dealer", default="separate", choices=DEALERS,
                   help="separate: the last rank deals and receives only sizes (default); owner-insecure: the model "
                        "owner deals and can read the client's data (a benchmark setting, marked in every table)")
    p.add_argument("--audit", action="store_true",
                   help="test/debug: pool every party's view and the dealer's masks at rank 0 and check that every receipt "
                        "is a share, a fresh-masked opening or the client's output (reveals everything to rank 0)")
    p.add_argument("--json", help="write the rows as JSON to this path (rank 0)")
    args = p.parse_args(argv)
    args.policies = list(dict.fromkeys(x.strip() for x in args.policy.split(",") if x.strip()))
    bad = [x for x in args.policies if x not in POLICIES]
    if bad or not args.policies:
        raise UserError(f"unknown policy {', '.join(bad) or '(none)'}: choose from {', '.join(POLICIES)}")
    if args.seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.timeout <= 0 or args.silence <= 0:
        raise UserError("--timeout and --silence must be positive")
    if args.network is not None:
        args.network = load_network(args.network)
    return args



def computing_parties(size: int, dealer: str) -> int:
    parties = size - 1 if dealer == "separate" else size
    if parties not in (2, 3):
        raise UserError(f"run_pi needs 2 or 3 computing parties and a dealer: mpirun -n 3 or -n 4 "
                        f"(or -n 2|3 with --dealer {INSECURE}); got {size} process{'es' if size != 1 else ''}")
    return parties


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        parties = computing_parties(size, args.dealer)
    except UserError as exc:  # the same on every rank: rank 0 speaks for all
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ["WORLD_SIZE"] = str(parties)  # CrypTen's world: the computing parties (role() names the dealer)
    who = role(rank, parties)
    computing = comm.Split(0 if rank < parties else MPI.UNDEFINED, rank)
    say = (lambda msg: print(f"[run_pi] {msg}", file=sys.stderr, flush=True)) if rank == 0 else (lambda msg: None)
    try:
        setup = _setup(comm, args, parties, say) if rank < parties else None
        address = mpi.rendezvous(comm)
    except mpi.PeerFailed as exc:
        return mpi.peer_failed(who, exc)
    except Exception as exc:  # noqa: BLE001 - any set-up failure: say it here, tell the others
        return mpi.fail_setup(comm, who, exc)
    torch.set_num_threads(args.threads or mpi.threads_per_party(comm))
    os.environ.update({"RANK": str(rank), "RENDEZVOUS": address, "DISTRIBUTED_BACKEND": "gloo"})
    if rank == parties:
        core = run_dealer(args.audit, linger_s=args.silence)
        mpi.gather(comm, {"masks": core.masks})  # for --audit only
        return 0
    return _compute(comm, computing, args, parties, setup, say)


def _setup(comm, args, parties: int, say) -> dict:
    """Rank 0 loads the model, plans and computes references, and sends the redacted plans; the
    others build what they need from the architecture alone."""
    from ..core.planfile import plan_from_json, plan_to_json
    from ..frontend.capture import capture
    from ..frontend.models import load_architecture, load_model
    from ..pipeline import convert, one_hot, vocab_size

    rank, vanilla = comm.Get_rank(), "vanilla" in args.policies
    out = {"plans": {}, "captured": None, "inputs": None, "ids": None, "references": None}
    if rank == 0:
        loaded = load_model(args.model)
        ids = client_window(loaded, args.seq_len)  # measurement only (owner.py)
        say(f"converting {loaded.name} (seq {args.seq_len})")
        converted = convert(loaded, args.seq_len, args.frac_bits)
        out["plans"] = plans = make_plans(args, converted, parties, say)
        say("emulating the plans (exact, and with the protocol's truncation model)")
        out["references"] = references(loaded.model, plans, ids, {"tokens": one_hot(ids[None], vocab_size(loaded.model))},
                                       args.truncation, parties)
        out["captured"] = converted.captured
        mpi.bcast(comm, {k: plan_to_json(p, redacted=True) for k, p in plans.items()}, ranks=range(parties))
        return out
    docs = mpi.bcast(comm, None, ranks=range(parties))
    out["plans"] = {k: plan_from_json(d, f"redacted {k} plan") for k, d in docs.items()}
    if not all(p.redacted for p in out["plans"].values()):  # never hold the owner's bounds
        raise RuntimeError("received an unredacted plan: the owner must send planfile.redact_plan_json's version")
    if rank == 1 or vanilla:
        loaded = load_architecture(args.model)
        out["captured"] = capture(loaded.model, args.seq_len) if vanilla else None
        if rank == 1:
            ids = client_window(loaded, args.seq_len)
            out["ids"], out["inputs"] = ids[None], {"tokens": one_hot(ids[None], vocab_size(loaded.model))}
    return out


def _runner(policy: str, setup: dict, args):
    from .runner import PlanRunner
    from .vanilla import VanillaRunner

    if policy == "vanilla":
        return VanillaRunner(setup["captured"], rsqrt_scale=args.vanilla_rsqrt_scale)
    return PlanRunner(setup["plans"][policy], truncation=args.truncation, fuse=args.fuse, batch=args.batch)


def record_requests(party: Party, runner, inputs) -> list:
    """An untimed pass with the dealer answering on demand; returns its request sequence."""
    with party.audited(), party.provider.recording_requests() as trace:
        outs = runner.run(inputs)
        with party.revealing_output():
            runner.open_outputs(outs, dst=1)
    return trace


def run_once(party: Party, runner, trace: list, inputs, network: bool = False) -> dict:
    """Deal everything (offline), then one timed online pass — on the emulated network if
    ``network`` — and return this party's measurements."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    provider = party.provider
    provider.reset_offline()
    provider.deal(trace)
    offline = dict(provider.offline)
    party.reset_stats()
    with party.audited():  # input-independent: the weights' halves of their products (runner.prepare)
        getattr(runner, "prepare", lambda: None)()
    weights = party.stats()
    party.crypten.communicator.get().barrier()
    party.reset_stats()
    t = time.perf_counter()
    with party.audited(), party.on_network(network), CountDivisions(ArithmeticSharedTensor) as divisions:
        outs = runner.run(inputs)
        with party.revealing_output():
            opened = runner.open_outputs(outs, dst=1)
    wall = time.perf_counter() - t
    executed = runner.truncations_executed if hasattr(runner, "truncations_executed") else divisions.count
    return {"wall_s": wall, **party.stats(), "offline_s": offline["seconds"], "offline_bytes": offline["bytes"],
            "weights_rounds": weights["rounds"], "weights_bytes": weights["bytes"],
            "dealt_requests": offline["requests"], "online_dealer_requests": provider.online_requests,
            "truncations_executed": executed, "logits": None if opened is None else opened[0][0]}


def _compute(comm, computing, args, parties: int, setup: dict, say) -> int:
    rank = comm.Get_rank()
    try:
        party = Party(timeout_s=args.timeout, silence_s=args.silence, audit=args.audit, dealer=args.dealer,
                      network=args.network).start()
        runners = {policy: _runner(policy, setup, args) for policy in args.policies}
    except Exception as exc:  # noqa: BLE001
        return mpi.fail_setup(comm, role(rank), exc)
    print(f"truncbridge: {role(rank)} pid {os.getpid()} started", file=sys.stderr, flush=True)
    inputs = {p: setup["ids"] if p == "vanilla" else setup["inputs"] for p in args.policies}
    runs: dict[str, list] = {policy: [] for policy in args.policies}
    try:
        traces = {}
        for policy in args.policies:
            say(f"recording {policy}'s dealer requests (untimed pass)")
            traces[policy] = record_requests(party, runners[policy], inputs[policy])
        for repetition in range(args.repeat):  # interleaved, so load drifts hit every policy alike
            for policy in args.policies:
                say(f"running {policy} with {parties} parties ({repetition + 1}/{args.repeat})")
                mine = run_once(party, runners[policy], traces[policy], inputs[policy])
                if args.network is not None:  # the same pass on loopback first, then on the network
                    mine = {**run_once(party, runners[policy], traces[policy], inputs[policy], network=True),
                            "loopback_s": mine["wall_s"]}
                runs[policy].append(mpi.gather(computing, mine))  # the client's logits too: measurement only
                if rank == 0:
                    say(f"{policy}: online {max(m['wall_s'] for m in runs[policy][-1]):.2f} s")
    except Exception as exc:  # noqa: BLE001 - a lost or stalled peer: name it, end every party
        party.fail(exc)
    log = party.log.export() if args.audit else None
    masks = party.provider.core.masks if party.provider.core is not None else None
    party.finish()
    pooled = mpi.gather(comm, {"log": log, "masks": masks})
    if rank == 0:
        _report(args, parties, runs, setup, pooled)
    return 0


def _report(args, parties: int, runs: dict, setup: dict, pooled: list) -> None:
    rows = []
    for policy in args.policies:
        row = policy_row(policy, parties, runs[policy], setup["references"])
        plan = setup["plans"].get(policy)
        if plan:
            add_predictions(row, plan, predictions(plan, parties, args.truncation, args.fuse, args.network, args.batch))
        rows.append(row)
    result = {"parties": parties, "model": args.model, "seq_len": args.seq_len, "truncation": args.truncation,
              "network": args.network, "fuse": args.fuse, "batch": args.batch,
              "bounds": args.bounds, "repeat": args.repeat, "dealer": args.dealer,
              "threads_per_party": torch.get_num_threads(), "rows": rows, "ratios": ratios(rows)}
    if args.audit:
        result["audit"] = audit_summary(pooled, parties, args.dealer)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def audit_summary(pooled: list[dict], parties: int, dealer: str) -> dict:
    """The mask-accounting audit over every pass (``audit.findings``)."""
    logs = [p["log"] for p in pooled[:parties]]
    masks = pooled[parties]["masks"] if dealer == "separate" else pooled[0]["masks"]
    found = findings(logs, masks, {0} if dealer == INSECURE else set())
    used = {m for step in logs[0]["openings"] for m in step.masks}
    steps = sum(len(step.parts) or 1 for step in logs[0]["openings"])  # a batch opens several in one message
    return {"findings": found[:MAX_FINDINGS], "finding_count": len(found), "openings": len(logs[0]["openings"]),
            "opened_steps": steps,
            "masks_used": len(used), "masks_dealt": len(masks),
            "output_receivers": [log["rank"] for log in logs if log["outputs"]]}


if __name__ == "__main__":
    raise SystemExit(main())
