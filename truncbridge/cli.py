"""Command line: ``truncbridge emulate`` (more subcommands build on the same pipeline)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError

DEFAULT_SEQ_LEN = 128
DEFAULT_WINDOWS = 16


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str):
        raise UserError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .models import MODEL_NAMES
    from .placement import POLICIES

    parser = _Parser(prog="truncbridge", description="LLMs as fixed-point MPC plans with statically placed truncations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    emu = sub.add_parser("emulate", help="run a model's fixed-point plan exactly in plaintext and compare with float")
    emu.add_argument("--model", default="default", help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory")
    emu.add_argument("--field-bits", type=int, default=64, help="ring size l of Z_2^l (2..64, default 64)")
    emu.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits (default 16)")
    emu.add_argument("--policy", default="eager", choices=POLICIES, help="truncation placement policy")
    emu.add_argument("--text", help="evaluation text file (default: the model's held-out text)")
    emu.add_argument("--seq-len", type=_positive_int, default=DEFAULT_SEQ_LEN, help=f"tokens per window (default {DEFAULT_SEQ_LEN})")
    emu.add_argument("--windows", type=_positive_int, default=DEFAULT_WINDOWS, help=f"at most this many windows (default {DEFAULT_WINDOWS})")
    emu.add_argument("--device", default="cpu", help="torch device for the emulator (cpu, cuda, cuda:1, ...)")
    emu.add_argument("--no-check", action="store_true", help="skip the run-time bound check (bound_violations = null)")
    emu.add_argument("--json", help="write the results as JSON to this path")
    sub.add_parser("models", help="list the built-in model names")
    return parser


def _validate_emulate(args) -> None:
    if not 2 <= args.field_bits <= 64:
        raise UserError(f"--field-bits must be between 2 and 64, got {args.field_bits}")
    if not 1 <= args.frac_bits < args.field_bits:
        raise UserError(f"--frac-bits must be at least 1 and below --field-bits {args.field_bits}, got {args.frac_bits}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json: directory does not exist: {Path(args.json).resolve().parent}")
    if args.device != "cpu":
        import torch

        try:
            torch.empty(1, device=args.device)
        except (RuntimeError, AssertionError) as exc:
            raise UserError(f"--device {args.device} is not usable here: {str(exc).splitlines()[0]}") from None


def cmd_emulate(args) -> dict:
    _validate_emulate(args)
    from .data import read_text_file
    from .models import load_model
    from .pipeline import build_plan, convert, emulate, tokenize_windows
    from .report import print_emulation, progress_bar

    text = read_text_file(args.text) if args.text else None  # before the slow work
    loaded = load_model(args.model)
    if text is None:
        if loaded.heldout_text is None:
            raise UserError(f"model {args.model} ships no held-out text: pass --text FILE")
        text, source = loaded.heldout_text, "held-out text"
    else:
        source = args.text
    windows = tokenize_windows(loaded.tokenizer, text, args.seq_len, args.windows, what=source)
    converted = convert(loaded, args.seq_len, args.frac_bits)
    plan = build_plan(converted, args.policy, args.field_bits, args.frac_bits)
    with progress_bar(len(windows), "emulating") as advance:
        result = emulate(converted, plan, windows, device=args.device, check=not args.no_check, progress=advance)
    record = {
        "model": loaded.name,
        "field_bits": args.field_bits,
        "frac_bits": args.frac_bits,
        "policy": args.policy,
        "metrics": result.metrics,
        "counts": plan.counts(),
        "bound_violations": None if args.no_check else result.bound_violations,
        "time_s": {"float": result.time_float, "emulated": result.time_emulated},
    }
    print_emulation(record, plan, converted, result, source)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


def cmd_models(args) -> None:
    from .models import MODEL_NAMES

    for name in MODEL_NAMES:
        print(name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        {"emulate": cmd_emulate, "models": cmd_models}[args.command](args)
        return 0
    except UserError as exc:
        print(f"truncbridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("truncbridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
