"""The real-size benchmark matrix of issue 27 (``make bench-scale``, outside the suite): run_pi under mpirun for
every model x seq x parties x network, all policies of one cell in one run_pi process (one start-up), then one
table of every policy's row and the optimal/vanilla wall ratio per network. Hours at the full matrix.

    python launch/bench_scale.py [--models gpt2-small,llama-gpt2-small] [--seq-lens 32,128]
        [--policies eager,optimal,vanilla] [--parties 2,3] [--networks loopback,mid,lan] [--out-dir DIR]
        [--time-limit 60] [--material-window MB] [--timeout 300] [--run-timeout S] [--dry-run]

Models: gpt2-small (``--model random:gpt2 --preset gpt2-small``), llama-gpt2-small (a random Llama of GPT-2-small
shape, 12 x 768, MLP 3072, written once to OUT/llama-gpt2-small by make_random_checkpoint.py), and the shipped
small ones, default and default-gpt2 (for a quick check). Parties 2: ``mpirun -n 3`` (owner, client, dealer);
3: ``-n 4`` (+ a helper). Network loopback: no ``--network``. Every run uses --benchmark-reveal (INSECURE: the
client's ids and logits go to the owner after the timed runs) for top-1, and vanilla its rsqrt workaround
(--vanilla-rsqrt-scale 4), as bench_generation.py does.

Columns from run_pi's --json (truncbridge/pi/results.py): online s ``wall_s``; predicted s ``predicted.wall_s``
(networks only: loopback pass + the cost model's network time); rounds; online MB/party ``bytes``; MB sent/party
is DERIVED, ``bytes / 2``: run_pi has no sent-only count, and CrypTen's counter adds what a party sends and what it
receives, every counted call symmetric (an all-reduce counts 2x its tensor: one sent, one received); offline MB
``offline_bytes`` (what the dealer sent); halves MB ``weights_bytes`` (vanilla opens its weights online: -);
local s ``local_s``; peak RSS GB owner/client[/helper] from ``per_party`` (after that policy's last run: a process
runs its cell's policies in turn, so a later policy's peak includes the earlier ones') and dealer from
``memory.peak_rss_bytes`` (the whole run); start-up s ``startup_s`` (rank 0's launch to the first online pass, one
per cell); top-1 ``top1_agreement_vs_float``. A cell run_pi refuses (its memory check: exit 2, one line) or that
fails gives its rows "refused: <reason>" or "failed (exit N): <reason>", and the matrix goes on; a memory refusal
of several policies is retried one policy at a time. Every run's JSON and log stay in OUT; all rows go to
OUT/bench_scale.json (rewritten after each cell).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
LLAMA = "llama-gpt2-small"
LLAMA_SHAPE = ["--layers", "12", "--hidden", "768", "--heads", "12", "--mlp", "3072"]
MODELS = {"gpt2-small": ["--model", "random:gpt2", "--preset", "gpt2-small"], LLAMA: None,
          "default": ["--model", "default"], "default-gpt2": ["--model", "default-gpt2"]}
POLICIES = ("eager", "lazy", "optimal", "vanilla")
NETWORKS = ("loopback", *json.loads((ROOT / "protocols" / "networks.json").read_text()))
COLUMNS = ("model", "seq", "parties", "network", "policy", "online s", "predicted s", "rounds", "online MB/party",
           "MB sent/party (bytes/2)", "offline MB", "halves MB", "local s",
           "peak RSS GB (owner/client[/helper]/dealer)", "start-up s", "top-1")
SHORT = 100  # a refusal's reason in the table: its first characters (all of it below the table)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a usage error: one line, exit 2
        print(f"bench_scale.py: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def choices(text: str, allowed, what: str) -> list[str]:
    got = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise ValueError(f"unknown {what} {', '.join(bad) or '(none)'}: choose from {', '.join(allowed)}")
    return got


def parse(argv: list[str]) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=f"gpt2-small,{LLAMA}", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--seq-lens", default="32,128")
    p.add_argument("--policies", default="eager,optimal,vanilla", help=f"comma-separated: {', '.join(POLICIES)}")
    p.add_argument("--parties", default="2,3", help="computing parties: 2 (mpirun -n 3), 3 (-n 4, with a helper)")
    p.add_argument("--networks", default="loopback,mid,lan", help=f"comma-separated: {', '.join(NETWORKS)}")
    p.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "truncbridge-bench-scale")
    p.add_argument("--time-limit", type=float, default=60.0, help="optimal's MILP, per plan (run_pi's, default 60 s)")
    p.add_argument("--material-window", type=int, default=None, metavar="MB", help="run_pi's (default: its own)")
    p.add_argument("--timeout", type=float, default=300.0, help="run_pi's: seconds a party waits on a peer (300)")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds one run_pi may take (default: no limit)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    try:
        args.models = choices(args.models, MODELS, "model")
        args.policies = [x for x in POLICIES if x in choices(args.policies, POLICIES, "policy")]
        args.networks = choices(args.networks, NETWORKS, "network")
        args.parties = [int(x) for x in choices(args.parties, ("2", "3"), "parties")]
        seqs = [x.strip() for x in args.seq_lens.split(",") if x.strip()]
        if not seqs or not all(x.isdigit() and int(x) >= 2 for x in seqs):
            raise ValueError(f"--seq-lens takes integers >= 2, comma-separated, got {args.seq_lens!r}")
        args.seq_lens = list(dict.fromkeys(int(x) for x in seqs))
        if args.time_limit <= 0 or args.timeout <= 0 or (args.run_timeout is not None and args.run_timeout <= 0):
            raise ValueError("--time-limit, --timeout and --run-timeout must be positive")
        if args.material_window is not None and args.material_window < 0:
            raise ValueError(f"--material-window must be >= 0 MB, got {args.material_window}")
    except ValueError as exc:
        p.error(str(exc))
    return args


def model_args(name: str, out: Path, dry: bool) -> list[str]:
    """run_pi's --model (and --preset) for a matrix model; the Llama checkpoint is written first where absent."""
    if MODELS[name] is not None:
        return MODELS[name]
    path = out / LLAMA
    if not (path / "config.json").exists():
        command = [sys.executable, str(ROOT / "launch" / "make_random_checkpoint.py"), str(path), *LLAMA_SHAPE]
        print("$", shlex.join(command), flush=True)
        if not dry:
            subprocess.run(command, check=True)
    return ["--model", str(path)]


def pi_command(args, model: list[str], seq: int, parties: int, network: str, policies: list[str], json_path: Path):
    extra = [] if network == "loopback" else ["--network", network]
    if args.material_window is not None:
        extra += ["--material-window", str(args.material_window)]
    return [str(Path(sys.executable).parent / "mpirun"), "-n", str(parties + 1), "--oversubscribe", sys.executable,
            str(ROOT / "launch" / "run_pi.py"), *model, "--seq-len", str(seq), "--policy", ",".join(policies), *extra,
            "--time-limit", f"{args.time_limit:g}", "--timeout", f"{args.timeout:g}", "--vanilla-rsqrt-scale", "4",
            "--benchmark-reveal", "--json", str(json_path)]


def stop(proc: subprocess.Popen) -> None:
    """End the process group this script started (mpirun and its ranks)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def execute(command: list[str], log: Path, limit: float | None) -> tuple[int, str]:
    """(exit status, the reason of a failure: run_pi's ``error:`` line, else the log's last line). A run past
    ``limit`` is ended (exit 124), as is one interrupted (Ctrl-C: mpirun runs in its own session)."""
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, env=ENV, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(proc)
            return 124, f"timed out after {limit:g} s (--run-timeout)"
        except KeyboardInterrupt:
            stop(proc)
            raise
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x[len("error: "):] for x in lines if x.startswith("error: ")]
    return rc, (errors or lines[-1:] or ["no output"])[0]


def gb(value) -> str:
    return "?" if value is None else f"{value / 1e9:.2f}"


def policy_rows(cell: dict, result: dict) -> list[dict]:
    """The matrix's rows of one run_pi --json (field names: truncbridge/pi/results.py)."""
    dealer = result.get("memory", {}).get("peak_rss_bytes", {}).get("dealer")
    rows = []
    for r in result["rows"]:
        peaks = [p.get("peak_rss_bytes") for p in r["per_party"]]
        rows.append({**cell, "policy": r["policy"], "status": "ok", "online_s": r["wall_s"],
                     "predicted_s": r.get("predicted", {}).get("wall_s"), "rounds": r["rounds"],
                     "online_bytes": r["bytes"], "sent_bytes_derived": r["bytes"] / 2, "offline_bytes": r["offline_bytes"],
                     "halves_bytes": None if r["policy"] == "vanilla" else r["weights_bytes"], "local_s": r.get("local_s"),
                     "peak_rss_bytes": {"parties": peaks, "dealer": dealer}, "startup_s": result.get("startup_s"),
                     "top1": r.get("top1_agreement_vs_float"), "run_pi_row": r})
    return rows


def run_cell(args, cell: dict, model: list[str], policies: list[str], label: str) -> list[dict]:
    """One run_pi for the cell's policies; a memory refusal of several is retried one policy at a time."""
    stem = label.replace(" ", "_").replace("/", "-")
    json_path, log = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.log"
    command = pi_command(args, model, cell["seq"], cell["parties"], cell["network"], policies, json_path)
    print("$", shlex.join(command), flush=True)
    if args.dry_run:
        return []
    json_path.unlink(missing_ok=True)
    t = time.perf_counter()
    rc, why = execute(command, log, args.run_timeout)
    print(f"  {label}: exit {rc} after {time.perf_counter() - t:.0f} s{'' if rc == 0 else f': {why}'}", flush=True)
    if rc == 0 and json_path.exists():
        return policy_rows(cell, json.loads(json_path.read_text()))
    if rc == 2 and len(policies) > 1 and "--memory-check off" in why:
        print(f"  {label}: refused for memory with {len(policies)} policies: one policy at a time", flush=True)
        return [row for p in policies for row in run_cell(args, cell, model, [p], f"{label} {p}")]
    status = f"refused: {why}" if rc == 2 else f"failed (exit {rc}): {why}"
    return [{**cell, "policy": p, "status": status, "log": str(log)} for p in policies]


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.dry_run:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    cells = [(m, s, n, w) for m in args.models for s in args.seq_lens for n in args.parties for w in args.networks]
    models = {m: model_args(m, args.out_dir, args.dry_run) for m in args.models}
    rows, start = [], time.perf_counter()
    for i, (m, seq, parties, network) in enumerate(cells, 1):
        label = f"{m} seq{seq} {parties}pc {network}"
        elapsed = time.perf_counter() - start
        print(f"[{i}/{len(cells)}] {label}: {','.join(args.policies)} (elapsed {elapsed / 60:.1f} min)", flush=True)
        cell = {"model": m, "seq": seq, "parties": parties, "network": network}
        rows += run_cell(args, cell, models[m], args.policies, label)
        if not args.dry_run:
            save(args, rows)
    if args.dry_run:
        return
    print(f"\n{len(cells)} run_pi cells in {(time.perf_counter() - start) / 60:.1f} min; rows in "
          f"{args.out_dir / 'bench_scale.json'}\n", flush=True)
    show(rows)


def save(args, rows: list[dict]) -> None:
    matrix = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc = {"matrix": matrix, "columns": COLUMNS, "rows": rows, "optimal_vs_vanilla_wall": ratios(rows)}
    (args.out_dir / "bench_scale.json").write_text(json.dumps(doc, indent=1))


def ratios(rows: list[dict]) -> list[dict]:
    """optimal's online wall / vanilla's, per (model, seq, parties, network) where both ran."""
    walls = {(r["model"], r["seq"], r["parties"], r["network"], r["policy"]): r["online_s"]
             for r in rows if r["status"] == "ok"}
    return [{"model": m, "seq": s, "parties": n, "network": w, "optimal/vanilla": wall / walls[(m, s, n, w, "vanilla")]}
            for (m, s, n, w, p), wall in walls.items() if p == "optimal" and walls.get((m, s, n, w, "vanilla"))]


def cells_of(r: dict) -> list[str]:
    def num(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    head = [r["model"], str(r["seq"]), f"{r['parties']}PC + dealer", r["network"], r["policy"]]
    if r["status"] != "ok":  # in full below the table and in the JSON
        status = r["status"] if len(r["status"]) <= SHORT else r["status"][:SHORT - 1] + "…"
        return head + [status] + [""] * (len(COLUMNS) - len(head) - 1)
    peaks = "/".join(gb(p) for p in [*r["peak_rss_bytes"]["parties"], r["peak_rss_bytes"]["dealer"]])
    mb = [num(None if r[k] is None else r[k] / 1e6) for k in ("online_bytes", "sent_bytes_derived", "offline_bytes",
                                                              "halves_bytes")]
    return head + [num(r["online_s"]), num(r["predicted_s"]), str(r["rounds"]), *mb, num(r["local_s"]), peaks,
                   num(r["startup_s"], ".1f"), num(r["top1"], ".3f")]


def show(rows: list[dict]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.MARKDOWN)
    for name in COLUMNS:
        table.add_column(Text(name), no_wrap=True, overflow="fold")
    for r in rows:
        table.add_row(*map(Text, cells_of(r)))
    console = Console(width=10_000, color_system=None)  # the table's own width: one line per row, however narrow the terminal
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines() if line.strip()))
    for status in dict.fromkeys(r["status"] for r in rows if r["status"] != "ok" and len(r["status"]) > SHORT):
        print(status)
    by_network: dict[str, list[str]] = {}
    for x in ratios(rows):
        by_network.setdefault(x["network"], []).append(f"{x['model']} seq {x['seq']} {x['parties']}PC "
                                                       f"{x['optimal/vanilla']:.3f}")
    for network, items in by_network.items():
        print(f"optimal/vanilla online wall, {network}: " + "; ".join(items))


if __name__ == "__main__":
    main()
