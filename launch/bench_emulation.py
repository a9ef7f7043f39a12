"""Emulation at the size users care about: a GPT-2-small-shaped Llama (12 layers, width 768, MLP
3072, random weights, written to a temporary checkpoint), seq 128.

Each row is one `truncbridge emulate --json` process (its `time_s` holds the float model's and
the emulation's time from the same run, --check on, no --recipes-error) and its peak resident
memory; beside it, a process that only loads the model and runs the float forward pass on the
same windows (same imports), whose peak is the "float model" memory. Lowering is the `lower`
phase of the emulate run (capture and calibrate are listed apart).

    python launch/bench_emulation.py [--windows 2] [--fields 64,128] [--policies eager,lazy] [--prime 2^127-1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FLOAT_ONLY = """
import sys, time, torch
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import model_output, tokenize_windows
loaded = load_model(sys.argv[1])
windows = tokenize_windows(loaded.tokenizer, loaded.heldout_text, int(sys.argv[2]), int(sys.argv[3]))
t = time.perf_counter()
with torch.no_grad():
    for w in windows:
        model_output(loaded.model, w[None])
print(time.perf_counter() - t)
"""


def run_measured(cmd: list[str]) -> tuple[str, float]:
    """(stdout, peak resident memory in GB) of one child process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return out, usage.ru_maxrss / 1e6  # KB on Linux


def bench(model_dir: str, seq_len: int, windows: int, fields: list[tuple[int, int | None]], policies: list[str]) -> None:
    _, float_peak = run_measured([sys.executable, "-c", FLOAT_ONLY, model_dir, str(seq_len), str(windows)])
    params = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors")) / 1e9
    print(f"GPT-2-small-shaped Llama ({params:.2f} GB of float32 weights), seq {seq_len}, {windows} windows; "
          f"a float-only process peaks at {float_peak:.2f} GB")
    print(f"  {'field':22s} {'policy':8s} {'float s':>8s} {'emulated s':>10s} {'ratio':>6s} {'peak GB':>8s} "
          f"{'/ float proc':>12s} {'/ model':>8s} {'lower s':>8s} {'capture+calib s':>16s} {'violations':>10s}")
    for bits, prime in fields:
        for policy in policies:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                field = ["--prime", str(prime)] if prime else ["--field-bits", str(bits)]
                _, peak = run_measured([sys.executable, "-m", "truncbridge.cli", "emulate", "--model", model_dir,
                                        "--seq-len", str(seq_len), "--windows", str(windows), "--policy", policy,
                                        "--time-limit", "30", *field, "--json", out.name])
                rec = json.loads(Path(out.name).read_text())
            t, ph = rec["time_s"], rec["phase_s"]
            print(f"  {rec['field']:22s} {policy:8s} {t['float']:8.3f} {t['emulated']:10.3f} "
                  f"{t['emulated'] / t['float']:6.2f} {peak:8.2f} {peak / float_peak:12.2f} {peak / params:8.2f} "
                  f"{ph['lower']:8.2f} {ph['capture'] + ph['calibrate']:16.2f} {rec['bound_violations']:>10}",
                  flush=True)


def parse_fields(bits: str, primes: str) -> list[tuple[int, int | None]]:
    from truncbridge.cli_args import big_int

    return [(int(b), None) for b in bits.split(",") if b] + [(0, big_int(p)) for p in primes.split(",") if p]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--fields", default="64,128", help="ring sizes, comma-separated")
    ap.add_argument("--primes", default="", help="prime fields, comma-separated (e.g. 2^127-1)")
    ap.add_argument("--policies", default="eager,lazy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_random_checkpoint.py"), tmp],
                       check=True, stdout=subprocess.DEVNULL)
        bench(tmp, args.seq_len, args.windows, parse_fields(args.fields, args.primes), args.policies.split(","))


if __name__ == "__main__":
    main()
