"""Benchmarks kept out of the test suite (``make bench``).

Placement: truncated elements and truncations per policy on the default model (ratios to eager)
and the planner's wall time. Emulator: exact ring emulation vs the float model, and the three
exact matmul paths side by side (torch int64, float64 GEMMs on 62-bit limbs, one float64 GEMM),
each measured in the same run so the ratios are meaningful on a noisy machine; then a
GPT-2-small-shaped Llama (``bench_emulation.py``): emulated / float time and peak memory in
Z_2^64, Z_2^128 and F_p (p = 2^127 - 1). Private inference: the default
model run by real CrypTen parties and a separate dealer under mpirun (3PC, then 2PC), every policy
and vanilla CrypTen in one run, online (after all dealing) and offline (the dealing) apart, with
the ratios to eager beside what the cost model (``truncbridge report``) predicts — with
``--benchmark-reveal`` (INSECURE, and its tables say so) for the accuracy columns. Scale: Llama-7B-
and Gemma-2B-shaped plans built without the model (``plan --fake-weights``), each policy's wall
time and peak memory against 2 minutes / 4 GB, and their costs side by side.

    python launch/bench.py [--seq-len 128] [--windows 8] [--repeat 3] [--time-limit 60]
                           [--pi-seq-len 32] [--no-pi | --pi-only | --scale-only | --emulation-only]
                           [--pi-json-dir DIR]
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

import torch

from truncbridge.core.ring import matmul_mod64
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import build_plan, convert, emulate, plan_config, tokenize_windows


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_placement(converted, time_limit: float) -> None:
    print(f"placement on the default model (seq {converted.captured.seq_len}, Z_2^64, 16 fraction bits, "
          f"faithful-2pc, static bounds):")
    base = None
    for policy in ("eager", "lazy", "optimal"):
        t = time.perf_counter()
        plan = build_plan(converted, plan_config(policy, time_limit_s=time_limit))
        wall = time.perf_counter() - t
        c = plan.counts()
        base = base or c
        extra = ""
        if plan.solver.get("solver"):
            extra = f"  [{plan.solver['status']}, gap {plan.solver['mip_gap']:.1%}]"
        ratio = c["truncated_elements"] / base["truncated_elements"]
        print(f"  {policy:8s} truncated elements {c['truncated_elements']:>11,} ({ratio:.3f} x eager)"
              f"  truncations {c['truncations']:>5,} ({c['truncations'] / base['truncations']:.3f} x)"
              f"  planner {wall:6.2f} s{extra}")


def bench_emulator(loaded, converted, seq_len: int, windows: int, repeat: int, convert_s: float) -> None:
    plan = build_plan(converted, plan_config("eager"))
    w = tokenize_windows(loaded.tokenizer, loaded.heldout_text, seq_len, windows)
    runs = [emulate(loaded.model, plan, w, check=False) for _ in range(repeat)]
    fl = min(r.time_float for r in runs)
    em = min(r.time_emulated for r in runs)
    print(f"default model, seq {seq_len}, {len(w)} windows, best of {repeat}:")
    print(f"  convert (capture + calibrate + lower)  {convert_s:8.2f} s")
    print(f"  float model                           {fl:8.3f} s")
    print(f"  exact emulation (Z_2^64, eager)       {em:8.3f} s   = {em / fl:.1f} x float")
    print(f"  emulated tokens per second            {len(w) * seq_len / em:8.0f}")


def bench_matmul(repeat: int) -> None:
    print("exact int64 matmul mod 2^64, (128 x 128) @ (128 x 1024):")
    g = torch.Generator().manual_seed(0)
    big = (torch.randint(-(2**62), 2**62, (128, 128), generator=g), torch.randint(-(2**62), 2**62, (128, 1024), generator=g))
    small = (torch.randint(-(2**18), 2**18, (128, 128), generator=g), torch.randint(-(2**18), 2**18, (128, 1024), generator=g))
    rows = [
        ("int64 (CPU path)", lambda: matmul_mod64(*big, method="int64")),
        ("float64 limbs, 62-bit operands (9 GEMMs)", lambda: matmul_mod64(*big, method="split")),
        ("one float64 GEMM (18-bit operands)", lambda: matmul_mod64(*small, method="split")),
    ]
    base = None
    for name, fn in rows:
        s = best_of(fn, repeat)
        base = base or s
        print(f"  {name:38s} {s * 1e3:8.2f} ms   {s / base:5.2f} x int64")


PI_REPEAT = 3  # each policy run 3 times, interleaved: median wall time
PI_NETWORK = "mid"  # 10 ms round trip, 1 Gbit/s, emulated in software (docs/protocol.md, "A stated network")
PI_RUNS = (  # (parties, truncation protocol, bounds): CrypTen's own truncation leaves lazy a 48-bit
    (3, "exact", "static"),  # budget, where static bounds do not fit a softmax row sum
    (2, "exact", "static"),
    (2, "crypten", "calibrated"),
)


def bench_pi(seq_len: int, time_limit: float, json_dir: Path) -> None:
    """launch/run_pi.py under mpirun; its own table has the measured rows and the ratios to eager."""
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    run_pi = Path(__file__).resolve().parent / "run_pi.py"
    for parties, truncation, bounds in PI_RUNS:
        out = json_dir / f"pi-{parties}pc-{truncation}.json"
        cmd = [str(mpirun), "-n", str(parties + 1), "--oversubscribe", sys.executable, str(run_pi),  # + the dealer
               "--seq-len", str(seq_len), "--truncation", truncation, "--bounds", bounds, "--time-limit", str(time_limit),
               "--vanilla-rsqrt-scale", "4", "--repeat", str(PI_REPEAT), "--network", PI_NETWORK, "--json", str(out),
               "--benchmark-reveal"]  # INSECURE: the accuracy columns need the client's ids and logits at the owner
        print(f"\nprivate inference: {' '.join(cmd[1:3])} run_pi.py {' '.join(cmd[6:])}", flush=True)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        print(done.stdout.strip())
        if done.returncode != 0:
            print(f"  (run_pi exited with status {done.returncode})")
            continue
        for row in json.loads(out.read_text())["rows"]:
            if "predicted" in row:
                pred = row["predicted"]
                print(f"  {row['policy']:8s} predicted by the cost model: {pred['rounds']:.0f} rounds "
                      f"(one step at a time {pred['rounds_sequential']:.0f}), {pred['bytes'] / 1e6:.2f} MB online "
                      f"+ {pred['weights_bytes'] / 1e6:.2f} MB weights' halves before it, "
                      f"{pred['expected_truncation_failures']:.3g} expected truncation failures; "
                      f"measured {row['rounds']} rounds, {row['bytes'] / 1e6:.2f} MB; wall {row['wall_s']:.2f} s, "
                      f"predicted {pred['wall_s']:.2f} s")


SCALE_PRESETS = (("llama", "llama-7b"), ("gemma", "gemma-2b"))
SCALE_LIMIT_S, SCALE_LIMIT_GB = 120, 4.0  # what a full-size plan may take on 2 cores


def bench_scale(seq_len: int, time_limit: float, out_dir: Path) -> None:
    """Full-size plans without the model (--fake-weights): each policy in a fresh process, its wall
    time and peak memory (ru_maxrss of that process), then `truncbridge report` side by side."""
    exe = Path(sys.executable).parent / "truncbridge"
    for model_type, preset in SCALE_PRESETS:
        paths = []
        for policy in ("eager", "lazy", "optimal"):
            path = out_dir / f"{preset}-{policy}.json"
            cmd = [str(exe), "plan", "--model", f"random:{model_type}", "--preset", preset, "--fake-weights",
                   "--policy", policy, "--seq-len", str(seq_len), "--protocol", "crypten-exact-3pc",
                   "--time-limit", str(time_limit), "-o", str(path)]
            t = time.perf_counter()
            with tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                _, status, usage = os.wait4(proc.pid, 0)
                err.seek(0)
                failure = "" if os.waitstatus_to_exitcode(status) == 0 else " FAILED: " + err.read().decode()[-300:]
            wall, peak_gb = time.perf_counter() - t, usage.ru_maxrss / 2**20
            verdict = "within" if not failure and wall <= SCALE_LIMIT_S and peak_gb <= SCALE_LIMIT_GB else "OVER"
            print(f"  {preset:9s} {policy:8s} plan built in {wall:6.1f} s, peak {peak_gb:.2f} GB "
                  f"({verdict} {SCALE_LIMIT_S} s / {SCALE_LIMIT_GB:g} GB){failure}", flush=True)
            ok = not failure
            if ok:
                paths.append(str(path))
        if paths:
            subprocess.run([str(exe), "report", *paths, "--protocol", "crypten-exact-3pc"], check=False,
                           env={**os.environ, "COLUMNS": "160"})  # the whole table, not a terminal's width


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=60.0, help="optimal placement: MILP time limit (s)")
    ap.add_argument("--pi-seq-len", type=int, default=32, help="tokens per private-inference run")
    ap.add_argument("--no-pi", action="store_true", help="skip the private-inference runs")
    ap.add_argument("--pi-only", action="store_true", help="only the private-inference runs")
    ap.add_argument("--pi-json-dir", type=Path, default=None, help="keep run_pi's JSON files here")
    ap.add_argument("--scale-only", action="store_true", help="only the full-size plans (--fake-weights)")
    ap.add_argument("--emulation-only", action="store_true",
                    help="only the GPT-2-small-shaped emulation (launch/bench_emulation.py; its own flags there)")
    ap.add_argument("--scale-seq-len", type=int, default=128, help="tokens per full-size plan")
    ap.add_argument("--scale-time-limit", type=float, default=10.0,
                    help="full-size optimal: MILP time limit (s), inside the 120 s plan budget (default 10)")
    args = ap.parse_args()
    if args.emulation_only:
        return subprocess.run([sys.executable, str(Path(__file__).parent / "bench_emulation.py"), "--primes", "2^127-1"],
                              check=True)
    if args.scale_only:
        return bench_scale(args.scale_seq_len, args.scale_time_limit, Path(tempfile.mkdtemp(prefix="truncbridge-scale-")))
    if args.pi_only:
        json_dir = args.pi_json_dir or Path(tempfile.mkdtemp(prefix="truncbridge-pi-"))
        json_dir.mkdir(parents=True, exist_ok=True)
        return bench_pi(args.pi_seq_len, args.time_limit, json_dir)
    loaded = load_model("default")
    t = time.perf_counter()
    converted = convert(loaded, args.seq_len, 16)
    convert_s = time.perf_counter() - t
    bench_placement(converted, args.time_limit)
    bench_emulator(loaded, converted, args.seq_len, args.windows, args.repeat, convert_s)
    bench_matmul(args.repeat)
    subprocess.run([sys.executable, str(Path(__file__).parent / "bench_emulation.py"), "--primes", "2^127-1"], check=True)
    print("full-size plans without the model (--fake-weights, crypten-exact-3pc):")
    bench_scale(args.scale_seq_len, args.scale_time_limit, Path(tempfile.mkdtemp(prefix="truncbridge-scale-")))
    if not args.no_pi:
        json_dir = args.pi_json_dir or Path(tempfile.mkdtemp(prefix="truncbridge-pi-"))
        json_dir.mkdir(parents=True, exist_ok=True)
        bench_pi(args.pi_seq_len, args.time_limit, json_dir)


if __name__ == "__main__":
    main()
