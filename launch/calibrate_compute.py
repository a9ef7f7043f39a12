"""Measure the cost model's local-compute coefficients on this machine: protocols/compute.json.

Runs ``PlanRunner`` — the CrypTen backend run_pi's parties run — in ONE process (a CrypTen world of one
party, the owner-insecure dealer in-process, material dealt before the timed pass as run_pi deals it),
so every torch op a computing party does on its shares runs as it does under mpirun, while no
communicator call waits on a peer. Each hook of the runner is timed per node (its kind and elements:
``analysis.compute.node_terms``), each batched opening per wave; a non-negative least-squares fit gives
every kind's ``per_node_s`` and ``per_element_s``, and the time outside the hooks per node is
``dispatch_s``. The passes are timed again unwrapped: the fit's prediction of them is in the file.

    python launch/calibrate_compute.py --model default --model /tmp/llama-2x256 --seq-len 32 --policy eager,lazy

(``/tmp/llama-2x256``: ``launch/make_random_checkpoint.py /tmp/llama-2x256 --layers 2 --hidden 256
--heads 4 --mlp 1024 --seed 7``.) ``--out -`` prints the file instead of writing it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from truncbridge.analysis.compute import KINDS, local_seconds, node_terms, online_counts  # noqa: E402
from truncbridge.core.protocols import COMPUTE_FILE  # noqa: E402

HOOKS = ("source", "local", "public", "relabel", "output", "shift", "compare", "truncate", "product", "open", "finish")
PARTIES = 2  # run_pi's default: rank 0's share of the work (it adds the public terms)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="a model run_pi takes (repeatable; default: default)")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--policy", default="eager,lazy", help="comma-separated plans per model (default eager,lazy)")
    ap.add_argument("--passes", type=int, default=2, help="timed passes per plan; the fastest is kept (default 2)")
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) // (PARTIES + 1)),
                    help="torch threads, as run_pi gives each party: cores / processes (default: 2 parties + dealer)")
    ap.add_argument("--run-pi", action="append", default=[], metavar="JSON",
                    help="run_pi --json output of a 2-party run on this machine (repeatable): parties_factor, its "
                         "local_s over the same plans' local compute in one process, is measured from it")
    ap.add_argument("--check", metavar="JSON", help="calibrate nothing: the calibration's local_s beside a run_pi --json "
                    "output's measured local_s, per policy (the run's plans from the plan cache; --time-limit as it ran)")
    ap.add_argument("--time-limit", type=float, default=60.0,
                    help="the optimal --time-limit the --run-pi / --check runs were made with (their plans from the plan cache)")
    ap.add_argument("--out", default=str(COMPUTE_FILE), help="where to write (default protocols/compute.json; - prints)")
    return ap.parse_args(argv)


def start_crypten(threads: int):
    """A one-party CrypTen world, with truncbridge's dealt provider (the dealer in this process)."""
    from truncbridge.backends.crypten.compat import import_crypten
    from truncbridge.backends.crypten.dealing import configure, install_provider

    crypten = import_crypten()
    configure(crypten, "owner-insecure")
    crypten.init()
    torch.set_num_threads(threads)
    return install_provider(crypten, "owner-insecure")


def make_plans(model: str, seq_len: int, policies: list[str], time_limit_s: float = 60.0, objective: str = "elements"
               ) -> tuple[list, dict]:
    """The plans run_pi makes (exact truncation, 2 parties; from the plan cache where it holds them)."""
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import one_hot, plan_config, vocab_size
    from truncbridge.plan_cache import PlanMaker

    loaded = load_model(model)
    maker = PlanMaker(loaded, seq_len, 16)
    plans = [maker.plan(plan_config(p, field_bits=64, frac_bits=16, protocol="crypten-exact-2pc", time_limit_s=time_limit_s,
                                    objective=objective))
             for p in policies]
    ids = torch.randint(0, vocab_size(loaded.model), (seq_len,), generator=torch.Generator().manual_seed(0))
    return plans, {"tokens": one_hot(ids[None], vocab_size(loaded.model))}


def timed_runner(plan, provider):
    """A PlanRunner (exact truncation, fused, batched, as run_pi runs it) whose hooks add their seconds
    to ``runner.node_s`` (node id -> seconds) and ``runner.wave_s`` (one per batched opening)."""
    from truncbridge.backends.crypten.runner import PlanRunner

    runner = PlanRunner(plan, client=0, owner=0, truncation="exact")
    runner.node_s, runner.wave_s = defaultdict(float), []

    finishing = [0.0]  # seconds of the steps' finish callbacks (run inside the exchange: their nodes' own work)

    def wrap(name: str):
        hook = getattr(runner, name)

        def timed(node, *args):
            t = time.perf_counter()
            out = hook(node, *args)
            runner.node_s[node.id] += time.perf_counter() - t
            if name == "open":  # the product / truncation made from the opened values: this node's work
                out.finish = timed_finish(node.id, out.finish)
            return out
        return timed

    def timed_finish(node_id: int, finish):
        def timed(values):
            t = time.perf_counter()
            out = finish(values)
            spent = time.perf_counter() - t
            runner.node_s[node_id] += spent
            finishing[0] += spent
            return out
        return timed

    exchange = runner.exchange

    def timed_exchange(steps):
        finishing[0], t = 0.0, time.perf_counter()
        exchange(steps)
        if steps:
            runner.wave_s.append(time.perf_counter() - t - finishing[0])

    for name in HOOKS:
        setattr(runner, name, wrap(name))
    runner.exchange = timed_exchange
    return runner


def one_pass(runner, provider, inputs, trace) -> float:
    """Deal, prepare (before the online phase, as run_pi does), then one timed pass: its wall seconds."""
    provider.deal(trace)
    runner.prepare()
    runner.node_s.clear()
    runner.wave_s.clear()
    t = time.perf_counter()
    runner.run(inputs)
    return time.perf_counter() - t


def measure(plan, provider, inputs, passes: int) -> dict:
    """The fastest of ``passes`` timed passes with its per-node and per-wave seconds."""
    runner = timed_runner(plan, provider)
    with provider.recording_requests() as trace:
        runner.run(inputs)  # untimed: records what the dealer deals
    best = None
    for _ in range(passes):
        wall = one_pass(runner, provider, inputs, trace)
        if best is None or wall < best["wall_s"]:
            best = {"wall_s": wall, "node_s": dict(runner.node_s), "wave_s": list(runner.wave_s)}
    return best


def rows(plan, measured: dict) -> tuple[list, list]:
    """Least-squares rows: per node (and per wave) its kind's [node, elements] columns, and its seconds.
    A product carried by a truncation's opening is made in that truncation's finish: its elements go in
    the truncation's row as ``carried`` elements."""
    from truncbridge.core.fusion import carried

    col = {k: i for i, k in enumerate(KINDS)}
    terms, messages = node_terms(plan, parties=PARTIES)
    carrier = {p: t for t, c in carried(plan.program).items() for p in c.products}
    xs, ys = {}, {}
    for node_id, (kind, elements) in terms.items():
        x = np.zeros(2 * len(KINDS))
        x[2 * col[kind]] = 1
        if kind != "carried":
            x[2 * col[kind] + 1] = elements
        xs[node_id], ys[node_id] = x, measured["node_s"].get(node_id, 0.0)
    for node_id, (kind, elements) in terms.items():
        if kind == "carried":
            xs[carrier[node_id]][2 * col["carried"] + 1] += elements
    waves = []
    for opened, seconds in zip(messages, measured["wave_s"]):
        x = np.zeros(2 * len(KINDS))
        x[2 * col["wave"]], x[2 * col["wave"] + 1] = 1, opened
        waves.append((x, seconds))
    return [*zip(xs.values(), ys.values()), *waves], [len(terms)]


def fit(samples: list) -> dict:
    """Every kind's (per_node_s, per_element_s) by non-negative least squares over all rows."""
    a = np.array([x for x, _ in samples])
    b = np.array([y for _, y in samples])
    scale = np.maximum(a.max(axis=0), 1.0)  # columns of elements are millions: scale them for the solver
    coef, _ = nnls(a / scale, b, maxiter=50 * a.shape[1])
    coef = coef / scale
    used = a.max(axis=0) > 0
    return {k: {"per_node_s": float(coef[2 * i]), "per_element_s": float(coef[2 * i + 1]), "seen": bool(used[2 * i])}
            for i, k in enumerate(KINDS)}


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "threads": threads, "host": platform.node(),
            "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]}


def parties_factor(paths: list[str], provider, passes: int, time_limit_s: float) -> dict:
    """run_pi's measured local_s (2 parties and the dealer sharing this machine: the most of any party) over
    the same plan's local compute alone in this process: the median over the runs' rows (1.0 without runs)."""
    found = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        if doc["parties"] != PARTIES or doc["truncation"] != "exact" or not doc["fuse"] or not doc["batch"]:
            raise SystemExit(f"{path}: a 2-party run_pi with exact truncation, fused and batched, please")
        rows_ = [r for r in doc["rows"] if r["policy"] in ("eager", "lazy", "optimal")]
        objective = doc["network"]["name"] if doc.get("network") else "elements"
        plans, inputs = make_plans(doc["model"], doc["seq_len"], [r["policy"] for r in rows_], time_limit_s, objective)
        for row, plan in zip(rows_, plans):
            alone = measure(plan, provider, inputs, passes)["wall_s"]
            found.append({"run_pi": path, "model": doc["model"], "policy": row["policy"], "run_pi_local_s": row["local_s"],
                          "one_process_s": alone, "ratio": row["local_s"] / alone})
    ratios = sorted(f["ratio"] for f in found)
    return {"value": ratios[len(ratios) // 2] if ratios else 1.0, "from": found}


def calibrate(args) -> dict:
    provider = start_crypten(args.threads)
    samples, checks, outside, nodes = [], [], 0.0, 0
    for model in args.model or ["default"]:
        plans, inputs = make_plans(model, args.seq_len, args.policy.split(","))
        for plan in plans:
            measured = measure(plan, provider, inputs, args.passes)
            plan_rows, (count,) = rows(plan, measured)
            samples += plan_rows
            inside = sum(measured["node_s"].values()) + sum(measured["wave_s"])
            outside, nodes = outside + measured["wall_s"] - inside, nodes + count
            checks.append({"model": model, "policy": plan.policy, "seq_len": args.seq_len, "wall_s": measured["wall_s"],
                           "counts": online_counts(plan, parties=PARTIES)})
            print(f"{model} {plan.policy}: {count:,} online nodes, {len(measured['wave_s'])} messages, "
                  f"{measured['wall_s']:.3f} s", file=sys.stderr)
    calibration = {"kinds": fit(samples), "dispatch_s": max(outside, 0.0) / max(nodes, 1),
                   "parties_factor": {"value": 1.0}}
    for c in checks:  # the fit on the passes it was fitted on (one process: no parties_factor)
        c["predicted_s"] = local_seconds(c.pop("counts"), calibration)["local_s"]
    calibration["parties_factor"] = parties_factor(args.run_pi, provider, args.passes, args.time_limit)
    return {"about": "local compute of one computing party's online pass on CrypTen shares (analysis/compute.py): "
                     "per kind, per_node_s per node + per_element_s per element; dispatch_s per node around them; all "
                     "times parties_factor (2 parties and the dealer on this machine against one process alone)",
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python launch/calibrate_compute.py " + " ".join(sys.argv[1:]),
            "machine": machine(args.threads), **calibration, "fitted_on": checks}


def check(path: str, time_limit_s: float) -> None:
    """Predicted (``protocols/compute.json``) against measured local_s of a 2-party run_pi run."""
    from truncbridge.core.protocols import load_compute
    from truncbridge.pi.owner import predictions

    doc = json.loads(Path(path).read_text())
    rows_ = [r for r in doc["rows"] if r["policy"] in ("eager", "lazy", "optimal")]
    objective = doc["network"]["name"] if doc.get("network") else "elements"  # as run_pi plans optimal
    plans, _ = make_plans(doc["model"], doc["seq_len"], [r["policy"] for r in rows_], time_limit_s, objective)
    factor = load_compute()["parties_factor"]["value"]
    for row, plan in zip(rows_, plans):
        predicted = predictions(plan, doc["parties"], doc["truncation"], doc["fuse"], None, doc["batch"])["local_s"]
        print(f"{doc['model']} seq {doc['seq_len']} {row['policy']}: local_s measured {row['local_s']:.3f} s, predicted "
              f"{predicted:.3f} s ({predicted / row['local_s'] - 1:+.0%}); one process {predicted / factor:.3f} s")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.check:
        return check(args.check, args.time_limit)
    doc = calibrate(args)
    text = json.dumps(doc, indent=1) + "\n"
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    for c in doc["fitted_on"]:
        print(f"  {c['model']} {c['policy']}: measured {c['wall_s']:.3f} s, fit {c['predicted_s']:.3f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
