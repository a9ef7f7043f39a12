"""The family table of docs/models.md, re-run: `truncbridge emulate --model random:<type> --check` for every
registered family (frontend/model_types.TESTED_FAMILIES), one family at a time, each in its own process.

    python launch/family_table.py                                  # the defaults: 16 windows of 128 tokens, lazy
    python launch/family_table.py --activations real               # a trained LLM's ranges (frontend/realistic.py)
    python launch/family_table.py --activations real --field-bits 72   # the field they need (docs/models.md)
    python launch/family_table.py --seq-len 16 --windows 8 --policies lazy,eager --recipes-error --json out.json

Prints one markdown row per family and policy: top-1 agreement (cosine for encoders), max logit error against
float, bound violations, truncations and truncated elements per pass, comparisons, the recipes' own error
(--recipes-error: the IR in float64, where the error enters), or the one-line error that stopped it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from truncbridge.frontend.model_types import TESTED_FAMILIES  # noqa: E402


def run_family(model_type: str, policy: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        command = [sys.executable, "-m", "truncbridge", "emulate", "--model", f"random:{model_type}", "--policy", policy,
                   "--check", "--seq-len", str(args.seq_len), "--windows", str(args.windows),
                   "--activations", args.activations, "--field-bits", str(args.field_bits), "--json", str(out)]
        if args.recipes_error:
            command.append("--recipes-error")
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
            return {"family": model_type, "policy": policy, "error": lines[-1] if lines else f"exit {done.returncode}"}
        return {"family": model_type, "policy": policy, **json.loads(out.read_text())}


def row(record: dict) -> str:
    head = f"| {record['family']} | {record['policy']} |"
    if "error" in record:
        error = record["error"].removeprefix("truncbridge: error: ").replace("|", "\\|")
        return f"{head} {error} | | | | | |"
    m, counts = record["metrics"], record["counts"]
    quality = f"cosine {m['cosine_mean']:.4f}" if "cosine_mean" in m else f"{m['top1_agreement']:.3f}"
    error = m.get("max_abs_logit_error", m.get("max_abs_error"))
    alone = record.get("recipes_alone_max_abs_error")
    return (f"{head} {quality} | {error:.4f} | {record['bound_violations']} | {counts['truncations']} / "
            f"{counts.get('truncated_elements', 0) / 1e6:.2f} M | {counts.get('comparisons', 0)} | "
            f"{'' if alone is None else f'{alone:.4f}'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activations", default="random", choices=("random", "real"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--policies", default="lazy")
    parser.add_argument("--field-bits", type=int, default=64)
    parser.add_argument("--families", default=",".join(TESTED_FAMILIES))
    parser.add_argument("--recipes-error", action="store_true")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    print("| model_type | policy | top-1 / cosine | max logit error | violations | truncations / elements | "
          "comparisons | recipes alone |")
    print("|---|---|---|---|---|---|---|---|")
    records = []
    for model_type in args.families.split(","):
        for policy in args.policies.split(","):
            records.append(run_family(model_type, policy, args))
            print(row(records[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
