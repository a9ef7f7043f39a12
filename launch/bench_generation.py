"""Private generation by real processes (``make bench-generate``, outside the suite): run_pi --generate with
3 computing parties and a dealer (``mpirun -n 4``; ``--parties 2``: ``-n 3``) on an emulated network
(default ``mid``), every policy and vanilla CrypTen with the same cache structure, then the PUMA-style
reference — re-running the whole sequence for the last token: one forward pass of ``prompt + tokens - 1``
positions — with the optimal plan and vanilla. Prints the per-token table and the ratios the issue asks for.

    python launch/bench_generation.py [--model default] [--prompt-tokens 32] [--tokens 16] [--network mid]
                                      [--parties 3] [--time-limit 10] [--out-dir DIR]

The runs use --benchmark-reveal (INSECURE: the client's prompt and tokens go to the owner after the timed
runs) for the accuracy column, and vanilla CrypTen its rsqrt workaround (--vanilla-rsqrt-scale 4) so that
its tokens are comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run_pi(processes: int, args: list[str], json_path: Path) -> dict:
    command = [str(Path(sys.executable).parent / "mpirun"), "-n", str(processes), "--oversubscribe", sys.executable,
               str(ROOT / "launch" / "run_pi.py"), *args, "--json", str(json_path)]
    print("$", " ".join(command[3:]), flush=True)
    t = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run_pi failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return json.loads(json_path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--network", default="mid")
    p.add_argument("--parties", type=int, default=3, choices=(2, 3))
    p.add_argument("--time-limit", type=float, default=10.0, help="optimal's MILP, per plan (default 10 s)")
    p.add_argument("--policies", default="eager,lazy,optimal,vanilla")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-generate-"))
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--network", args.network, "--time-limit", str(args.time_limit),
              "--vanilla-rsqrt-scale", "4", "--benchmark-reveal", "--timeout", "300"]  # dealing a whole generation: minutes
    gen = run_pi(args.parties + 1, [*common, "--generate", str(args.tokens), "--seq-len", str(args.prompt_tokens),
                                    "--policy", args.policies], out / "generate.json")
    prefix_len = args.prompt_tokens + args.tokens - 1
    prefix = run_pi(args.parties + 1, [*common, "--seq-len", str(prefix_len), "--policy", "optimal,vanilla"],
                    out / "prefix.json")
    print(table(gen, prefix, prefix_len))


def table(gen: dict, prefix: dict, prefix_len: int) -> str:
    net = gen["network"]["name"] if gen["network"] else "loopback"
    lines = [f"{gen['model']}, {gen['parties']} computing parties + dealer, network {net}, prompt {gen['prompt_len']} "
             f"tokens, {gen['tokens']} generated",
             "| policy | prefill s | online s/token | predicted s/token | rounds/token | MB/token (online) | "
             "offline MB/token | tokens vs float |", "|---|---|---|---|---|---|---|---|"]
    for r in gen["rows"]:
        pred = r.get("predicted_per_token", {}).get("wall_s")
        lines.append(f"| {r['policy']} | {r['prefill_s']:.2f} | {r['per_token_s']:.3f} | "
                     f"{'–' if pred is None else f'{pred:.3f}'} | {r['per_token_rounds']:.0f} | "
                     f"{r['per_token_bytes'] / 1e6:.2f} | {r['offline_bytes_per_token'] / 1e6:.2f} | "
                     f"{r.get('accuracy', {}).get('tokens_vs_float', float('nan')):.3f} |")
    by = {r["policy"]: r for r in gen["rows"]}
    full = {r["policy"]: r for r in prefix["rows"]}
    lines.append(f"\nre-running the whole prefix for the last token (PUMA's way): a forward pass of {prefix_len} positions")
    for policy, r in full.items():
        lines.append(f"  {policy}: {r['wall_s']:.3f} s, {r['rounds']} rounds, {r['bytes'] / 1e6:.2f} MB")
    for policy in ("eager", "lazy", "optimal"):
        if policy in by and "vanilla" in by:
            lines.append(f"{policy}/vanilla per-token online: {by[policy]['per_token_s'] / by['vanilla']['per_token_s']:.3f}")
    if "optimal" in by and "optimal" in full:
        lines.append(f"optimal per token / optimal re-running the prefix: "
                     f"{by['optimal']['per_token_s'] / full['optimal']['wall_s']:.3f}")
    for policy in by:
        pred = by[policy].get("predicted_per_token", {}).get("wall_s")
        if pred:
            lines.append(f"{policy}: predicted / measured per token {pred / by[policy]['per_token_s']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
