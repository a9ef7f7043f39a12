"""Placement savings and field sufficiency under a model's ranges: does the field hold, with how much headroom?

    python launch/real_ranges.py --activations real                      # random:llama, seq 16, 4 windows
    python launch/real_ranges.py --activations real --fields 64,72,80 --seq-len 128 --windows 16
    python launch/real_ranges.py --activations real --preset llama-7b --fake-weights --seq-len 128 --policies lazy

One model converted once; per field and policy (static bounds, 16 fraction bits, the default protocol): the
field's budget in bits, the widest value the plan holds (max bound_bits over its nodes) and the headroom
between them, truncations and truncated elements (and their share of eager's), then, unless --fake-weights
(weights never held), the emulation against float: top-1 agreement, max logit error, bound violations. A field
no placement fits prints the one-line reason (the node and the bits it needs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from truncbridge.core.errors import UserError  # noqa: E402
from truncbridge.frontend.models import load_model  # noqa: E402
from truncbridge.memory import check_fits, command_estimate, model_shape  # noqa: E402
from truncbridge.pipeline import build_plan, convert, emulate, plan_config, tokenize_windows  # noqa: E402


def widest_bits(plan) -> int:
    return max(plan.bound_bits(node) for node in plan.program.nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:llama")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--fake-weights", action="store_true")
    parser.add_argument("--activations", default="random", choices=("random", "real"))
    parser.add_argument("--fields", default="64,72")
    parser.add_argument("--policies", default="eager,lazy,optimal")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args()
    shape = model_shape(args.model, args.preset, args.activations)  # refused before building where it will not fit
    check_fits(command_estimate("emulate", shape, args.seq_len, args.windows, 16, args.fake_weights).total,
               f"{args.model} ({shape.params / 1e9:.2f}e9 parameters)", "--fake-weights, a smaller --seq-len or --windows",
               override="")
    loaded = load_model(args.model, args.preset, fake_weights=args.fake_weights, activations=args.activations)
    converted = convert(loaded, args.seq_len, 16)
    windows = None if args.fake_weights else tokenize_windows(loaded.tokenizer, loaded.heldout_text, args.seq_len,
                                                                args.windows)
    print(f"{loaded.label}, seq {args.seq_len}" + ("" if windows is None else f", {len(windows)} held-out windows"))
    print("| field | policy | budget | widest value | headroom | truncations | truncated elements | of eager | "
          "top-1 | max logit error | violations |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for field_bits in (int(f) for f in args.fields.split(",")):
        eager = None
        for policy in args.policies.split(","):
            config = plan_config(policy, field_bits=field_bits, time_limit_s=args.time_limit)
            try:
                plan = build_plan(converted, config)
            except UserError as exc:
                print(f"| Z_2^{field_bits} | {policy} | {config.budget_bits} | {str(exc).replace('|', chr(92) + '|')} "
                      "| | | | | | | |", flush=True)
                continue
            counts, widest = plan.counts(), widest_bits(plan)
            eager = counts["truncated_elements"] if policy == "eager" else eager
            share = f"{counts['truncated_elements'] / eager:.0%}" if eager else ""
            quality = "| | |"
            if windows is not None:
                result = emulate(loaded.model, plan, windows, check=True)
                quality = (f"{result.metrics['top1_agreement']:.3f} | {result.metrics['max_abs_logit_error']:.4f} | "
                           f"{result.bound_violations} |")
            print(f"| Z_2^{field_bits} | {policy} | {config.budget_bits} | {widest} | {config.budget_bits - widest} | "
                  f"{counts['truncations']:,} | {counts['truncated_elements']:,} | {share} | {quality}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
