"""A private-inference session under mpirun: every policy run by real CrypTen parties, measured.

Roles: rank 0 owns the model (weights, plans), rank 1 is the client (token ids; the only party the
logits are revealed to), rank 2 only helps in 3PC. MPI is the launcher's side channel and carries
no secret of the protocol: the rendezvous address, the plans (public structure: scales, truncation
sites, bounds), per-party statistics, and — after the timed run, for measurement only — the
client's revealed logits to rank 0, which compares them with the emulator and the float model.

Every rank loads the checkpoint to trace the architecture, but the weights of ranks other than 0
are zeroed before the protocol starts: only the owner's values can reach the result.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

from ..errors import UserError
from .party import Party, audit_findings, role

POLICIES = ("eager", "lazy", "optimal", "vanilla")
SPREAD_SEEDS = 16  # emulator runs with the protocol's truncation model: the spread MPC should stay within
TRUNCATIONS = ("exact", "crypten")
COLUMNS = ("policy", "parties", "wall_s", "rounds", "bytes", "truncations_executed",
           "max_abs_diff_vs_emulator", "top1_agreement_vs_float")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from ..models import MODEL_NAMES

    p = _Parser(prog="run_pi.py", description="Private inference with real CrypTen parties (start under mpirun -n 2|3).")
    p.add_argument("--model", default="default", help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory")
    p.add_argument("--seq-len", type=int, default=32, help="tokens in the client's window (default 32)")
    p.add_argument("--policy", default="eager,lazy,optimal,vanilla", help="comma-separated subset of " + ",".join(POLICIES))
    p.add_argument("--truncation", default="exact", choices=TRUNCATIONS,
                   help="exact: truncbridge's 1-round exact protocol (default); crypten: CrypTen's own div")
    p.add_argument("--bounds", default="static", choices=("static", "calibrated"), help="bit-width analysis (default static)")
    p.add_argument("--frac-bits", type=int, default=16, help="fixed-point fraction bits (default 16)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the optimal placement's MILP (default 60)")
    p.add_argument("--repeat", type=int, default=1, help="run every policy this many times, interleaved; "
                   "wall_s is the median (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per party (default: this host's cores / parties on it, at least 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a party waits on a peer before giving up (default 30)")
    p.add_argument("--silence", type=float, default=5.0, help="seconds without a heartbeat before a peer is lost (default 5)")
    p.add_argument("--vanilla-rsqrt-scale", type=int, default=1,
                   help="vanilla only: rsqrt(x) = s * inv_sqrt(s^2 x), the hand-made workaround for CrypTen's "
                        "inv_sqrt range (default 1: CrypTen as is)")
    p.add_argument("--dealer", default="rank0", choices=("rank0", "crypten"),
                   help="Beaver triples: rank 0 deals once (default), or CrypTen's TFP, where every party computes them")
    p.add_argument("--audit", action="store_true", help="record what each party receives and check nothing but the output is revealed")
    p.add_argument("--json", help="write the rows as JSON to this path (rank 0)")
    args = p.parse_args(argv)
    args.policies = [x.strip() for x in args.policy.split(",") if x.strip()]
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
    return args


def protocol_profile(truncation: str, parties: int) -> str:
    return f"crypten-exact-{parties}pc" if truncation == "exact" else f"crypten-{parties}pc"


def client_window(loaded, seq_len: int) -> torch.Tensor:
    """The client's token ids: the first held-out window, or seeded random ids for random models."""
    from ..pipeline import tokenize_windows, vocab_size

    if loaded.heldout_text is None:
        return torch.randint(0, vocab_size(loaded.model), (seq_len,), generator=torch.Generator().manual_seed(0))
    return tokenize_windows(loaded.tokenizer, loaded.heldout_text, seq_len, limit=1, what="held-out text")[0]


# -- rank 0: plans and references --------------------------------------------------------------
def make_plans(args, converted, parties: int, progress) -> dict:
    """Policy -> plan. Eager is CrypTen's fixed rule and gets the whole ring (it needs ~51 bits);
    lazy / optimal fill the budget, so they get the profile's headroom."""
    from ..pipeline import build_plan

    profile = protocol_profile(args.truncation, parties)
    plans, hints = {}, ()
    for policy in [p for p in ("eager", "lazy", "optimal") if p in args.policies]:
        progress(f"planning {policy} for {profile} ({args.bounds} bounds)")
        headroom = 0 if policy == "eager" and args.truncation == "crypten" else None
        plans[policy] = build_plan(converted, policy, 64, args.frac_bits, bounds=args.bounds, protocol=profile,
                                   headroom_bits=headroom, time_limit=args.time_limit, hints=hints)
        if policy == "lazy":
            hints = (plans[policy].sites,)
    return plans


def predictions(plan, parties: int, truncation: str) -> dict:
    from ..cost import plan_costs
    from ..protocols import load_network, load_protocol

    c = plan_costs(plan, load_protocol(protocol_profile(truncation, parties)), load_network("lan"))
    return {"rounds_critical_path": c["rounds"], "rounds_sequential": c["rounds_sequential"],
            "bytes": c["bytes"], "expected_truncation_failures": c["expected_truncation_failures"]}


# -- all ranks ---------------------------------------------------------------------------------
def bcast_idle(comm, obj, root: int = 0, tag: int = 11):
    """``comm.bcast`` without busy-waiting: Open MPI spins in a blocking receive, which would take
    the cores rank 0 plans on (the MILP) away from it while the others wait."""
    if comm.Get_rank() == root:
        for request in [comm.isend(obj, dest=r, tag=tag) for r in range(comm.Get_size()) if r != root]:
            request.wait()
        return obj
    while not comm.Iprobe(source=root, tag=tag):
        time.sleep(0.05)
    return comm.recv(source=root, tag=tag)


def threads_per_party(comm) -> int:
    """This host's cores divided among the parties running on it (at least 1): parties that each
    take every core fight over them, and their timings become noise."""
    from mpi4py import MPI

    on_this_host = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    return max(1, len(os.sched_getaffinity(0)) // on_this_host)


def rendezvous(comm) -> str:
    """Rank 0 picks a free TCP port on its host; everyone learns tcp://host:port."""
    hosts = comm.gather(socket.gethostname(), root=0)
    address = None
    if comm.Get_rank() == 0:
        host = os.environ.get("TRUNCBRIDGE_MASTER_ADDR") or socket.gethostname()
        if len(set(hosts)) == 1 and "TRUNCBRIDGE_MASTER_ADDR" not in os.environ:
            host = "127.0.0.1"  # one machine: stay on loopback
        with socket.socket() as s:
            s.bind(("", 0))
            address = f"tcp://{host}:{s.getsockname()[1]}"
    return comm.bcast(address, root=0)


class _CountDivisions:
    """Counts CrypTen's truncations (``ArithmeticSharedTensor.div_`` by an integer) while active."""

    def __init__(self, ast_cls):
        self.cls, self.count = ast_cls, 0

    def __enter__(self):
        self.original = self.cls.div_

        def div_(tensor, y):
            if isinstance(y, int):
                self.count += 1
            return self.original(tensor, y)

        self.cls.div_ = div_
        return self

    def __exit__(self, *exc):
        self.cls.div_ = self.original


def run_policy(party: Party, policy: str, plan, captured, inputs, ids, args) -> dict:
    """One timed private forward pass; returns this party's measurements (and logits on rank 1)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from .runner import PlanRunner
    from .vanilla import VanillaRunner

    if policy == "vanilla":
        runner = VanillaRunner(captured, rsqrt_scale=args.vanilla_rsqrt_scale)
    else:
        runner = PlanRunner(plan, truncation=args.truncation)
    party.crypten.communicator.get().barrier()
    party.reset_stats()
    t = time.perf_counter()
    with _CountDivisions(ArithmeticSharedTensor) as divisions:
        outs = runner.run(ids if policy == "vanilla" else inputs)
        with party.revealing_output():
            opened = runner.open_outputs(outs, dst=1)
    wall = time.perf_counter() - t
    stats = party.stats()
    executed = divisions.count if policy == "vanilla" else runner.truncations_executed
    return {"wall_s": wall, **stats, "truncations_executed": executed,
            "logits": None if opened is None else opened[0][0]}


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, parties = comm.Get_rank(), comm.Get_size()
    say = (lambda msg: print(f"[run_pi] {msg}", file=sys.stderr, flush=True)) if rank == 0 else (lambda msg: None)
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if parties not in (2, 3):
            raise UserError(f"run_pi needs 2 or 3 parties (mpirun -n 2 or -n 3), got {parties}")
        setup = _setup(comm, args, parties, say)
    except UserError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or threads_per_party(comm))
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(parties), "RENDEZVOUS": rendezvous(comm),
                       "DISTRIBUTED_BACKEND": "gloo"})
    party = Party(timeout_s=args.timeout, silence_s=args.silence, audit=args.audit, dealer=args.dealer).start()
    print(f"truncbridge: {role(rank)} pid {os.getpid()} started", file=sys.stderr, flush=True)
    runs: dict[str, list] = {policy: [] for policy in args.policies}
    try:
        for repetition in range(args.repeat):  # interleaved, so load drifts hit every policy alike
            for policy in args.policies:
                say(f"running {policy} with {parties} parties ({repetition + 1}/{args.repeat})")
                mine = run_policy(party, policy, setup["plans"].get(policy), setup["captured"], setup["inputs"],
                                  setup["ids"], args)
                runs[policy].append(comm.gather(mine, root=0))  # the client's logits too: measurement only
                if rank == 0:
                    say(f"{policy}: {max(m['wall_s'] for m in runs[policy][-1]):.2f} s")
        rows = [_row(policy, parties, runs[policy], setup, args) for policy in args.policies] if rank == 0 else []
        audit = comm.gather([r.__dict__ for r in party.receipts], root=0)
    except Exception as exc:  # noqa: BLE001 - a lost or stalled peer: name it, end every party
        party.fail(exc)
    party.finish()
    if rank == 0:
        result = {"parties": parties, "model": args.model, "seq_len": args.seq_len, "truncation": args.truncation,
                  "bounds": args.bounds, "repeat": args.repeat, "dealer": args.dealer,
                  "threads_per_party": torch.get_num_threads(), "rows": rows,
                  "ratios": ratios(rows)}
        if args.audit:
            result["audit"] = _audit_summary(audit)
        print(format_table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _setup(comm, args, parties: int, say) -> dict:
    """Load and trace on every rank; plan and compute references on rank 0; share the plans."""
    from ..capture import capture
    from ..models import load_model
    from ..pipeline import convert, one_hot, vocab_size
    from ..planfile import plan_from_json, plan_to_json

    rank = comm.Get_rank()
    loaded = load_model(args.model)
    ids = client_window(loaded, args.seq_len)
    inputs = {"tokens": one_hot(ids[None], vocab_size(loaded.model))}
    payload = references = None
    if rank == 0:
        try:
            say(f"converting {loaded.name} (seq {args.seq_len})")
            converted = convert(loaded, args.seq_len, args.frac_bits)
            plans = make_plans(args, converted, parties, say)
            say("emulating the plans (exact, and with the protocol's truncation model)")
            references = _references(loaded.model, plans, ids, inputs, args.truncation, parties)
            payload = ("ok", {k: plan_to_json(p) for k, p in plans.items()})
        except UserError as exc:
            payload = ("error", str(exc))
    status, data = bcast_idle(comm, payload)
    if status == "error":
        raise UserError(data)
    if rank == 0:
        captured = converted.captured
    else:
        plans = {k: plan_from_json(d, f"{k} plan") for k, d in data.items()}  # no weights: not ours
        # for vanilla: VanillaRunner itself replaces the weights by zeros on every rank but 0
        captured = capture(loaded.model, args.seq_len) if "vanilla" in args.policies else None
    client = rank == 1
    return {"plans": plans, "captured": captured, "ids": ids[None] if client else None,
            "inputs": inputs if client else None, "references": references}


def _references(model, plans: dict, ids: torch.Tensor, inputs: dict, truncation: str, parties: int) -> dict:
    """Float logits; per plan the emulator's exact (round-nearest) logits, and the spread of the
    protocol's own truncation model over SPREAD_SEEDS runs: the error MPC should stay within."""
    from ..execute import RingExecutor, truncation_model_for
    from ..protocols import load_protocol

    model_name = truncation_model_for(load_protocol(protocol_profile(truncation, parties)))
    with torch.no_grad():
        out = {"float": model(ids[None]).logits[0].double()}
    for policy, plan in plans.items():
        ex = RingExecutor(plan)
        out[policy] = exact = ex.decode_outputs(ex.run(inputs)[0])[0][0]
        noisy = RingExecutor(plan, truncation=model_name, seed=1)
        out[f"{policy}/spread"] = max((noisy.decode_outputs(noisy.run(inputs)[0])[0][0] - exact).abs().max().item()
                                      for _ in range(SPREAD_SEEDS))
    return out


def _row(policy: str, parties: int, runs: list[list[dict]], setup: dict, args) -> dict:
    """One policy's row from its repetitions (each: every party's measurements): the median wall
    time (each run's slowest party), the worst error over runs; rounds and bytes do not vary."""
    refs = setup["references"]
    walls = [max(m["wall_s"] for m in everyone) for everyone in runs]
    logits = [everyone[1]["logits"].double() for everyone in runs]
    first = runs[0]
    row = {"policy": policy, "parties": parties,
           "wall_s": statistics.median(walls), "wall_s_runs": walls,
           "rounds": max(m["rounds"] for m in first),
           "bytes": max(m["bytes"] for m in first),
           "truncations_executed": first[0]["truncations_executed"],
           "max_abs_diff_vs_emulator": (max((x - refs[policy]).abs().max().item() for x in logits)
                                        if policy in refs else None),
           "emulated_protocol_spread": refs.get(f"{policy}/spread"),
           "top1_agreement_vs_float": min((x.argmax(-1) == refs["float"].argmax(-1)).double().mean().item()
                                          for x in logits),
           "max_abs_diff_vs_float": max((x - refs["float"]).abs().max().item() for x in logits),
           "per_party": [{k: m[k] for k in ("wall_s", "rounds", "bytes")} for m in first]}
    plan = setup["plans"].get(policy)
    if plan is not None:
        row["predicted"] = predictions(plan, parties, args.truncation)
        row["planned_truncations"] = plan.counts()["truncations"]
    return row


def _audit_summary(per_party: list[list[dict]]) -> dict:
    """What each party received: element counts, suspicious receipts, and who saw the output."""
    return {"parties": [{"receipts": len(recs), "elements": sum(r["numel"] for r in recs),
                         "output_receipts": sum(r["label"] == "output" for r in recs),
                         "findings": audit_findings(recs)} for recs in per_party]}


def ratios(rows: list[dict]) -> dict:
    """lazy/eager and optimal/eager (and vanilla/eager) of the measured and predicted costs."""
    by = {r["policy"]: r for r in rows}
    if "eager" not in by:
        return {}
    base, out = by["eager"], {}
    for policy in ("lazy", "optimal", "vanilla"):
        if policy in by:
            r = by[policy]
            out[f"{policy}/eager"] = {k: r[k] / base[k] for k in ("wall_s", "rounds", "bytes") if base[k]}
            if "predicted" in r:
                out[f"{policy}/eager"]["predicted_rounds"] = (r["predicted"]["rounds_sequential"] /
                                                              base["predicted"]["rounds_sequential"])
                out[f"{policy}/eager"]["predicted_bytes"] = r["predicted"]["bytes"] / base["predicted"]["bytes"]
    return out


def _format_row(r: dict) -> str:
    def num(v):
        return "-" if v is None else f"{v:.3g}"

    return (f"{r['policy']:<8} {r['parties']:>7} {r['wall_s']:>7.2f} {r['rounds']:>7} {r['bytes'] / 1e6:>9.2f} "
            f"{r['truncations_executed']:>6} {num(r['max_abs_diff_vs_emulator']):>10} "
            f"{num(r['emulated_protocol_spread']):>10} {r['top1_agreement_vs_float']:>6.3f}")


def format_table(result: dict) -> str:
    lines = [f"{result['model']}, {result['parties']} parties, seq {result['seq_len']}, "
             f"{result['truncation']} truncation, {result['bounds']} bounds, {result['dealer']} dealer, "
             f"{result['threads_per_party']} thread(s) per party, median wall of {result['repeat']} run(s)",
             f"{'policy':<8} {'parties':>7} {'wall_s':>7} {'rounds':>7} {'MB':>9} {'truncs':>6} {'vs emu':>10} "
             f"{'emu spread':>10} {'top1':>6}"]
    lines += [_format_row(r) for r in result["rows"]]
    for name, ratio in result["ratios"].items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in ratio.items())
        lines.append(f"{name}: {parts}")
    if "audit" in result:
        for rank, a in enumerate(result["audit"]["parties"]):
            verdict = "; ".join(a["findings"][:3]) or "nothing revealed outside the output"
            lines.append(f"audit {role(rank)}: {a['receipts']} receipts, {a['elements']} elements, "
                         f"{a['output_receipts']} output receipts: {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
