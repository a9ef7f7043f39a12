"""Command line: ``truncbridge emulate | plan | report | compare | models``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .cli_args import parse_args
from .cli_checks import (
    check_against_plan,
    check_applies,
    check_calibration_fits,
    check_device,
    check_field,
    check_memory,
    check_output_path,
    read_texts,
)
from .cli_generate import cmd_generate
from .cli_report import cmd_models, cmd_report
from .core.errors import UserError
from .memory import peak_rss_bytes, ring_value_bytes


def _eval_windows(args, loaded, seq_len: int):
    from .frontend.data import read_text_file
    from .pipeline import tokenize_windows

    if args.text:
        text, source = read_text_file(args.text), args.text
    elif loaded.heldout_text is not None:
        text, source = loaded.heldout_text, "held-out text"
    else:
        raise UserError(f"model {loaded.name} ships no held-out text: pass --text FILE")
    return tokenize_windows(loaded.tokenizer, text, seq_len, args.windows, what=source), source


def _config(args, policy: str | None = None, field_bits: int | None = None, prime: int | None = None):
    from .pipeline import plan_config

    if field_bits is None:  # emulate and plan: one field from the flags
        field_bits, prime = args.field_bits, args.prime
    return plan_config(policy or args.policy, field_bits=field_bits, frac_bits=args.frac_bits, protocol=args.protocol,
                       headroom_bits=args.headroom, bounds=args.bounds, margin_bits=args.margin_bits,
                       time_limit_s=args.time_limit, prime=prime, objective=args.objective,
                       precision_tolerance_bits=args.precision_tolerance)


def _emulation_record(name, plan, result, check: bool, truncation: str = "nearest") -> dict:
    return {
        "truncation_model": truncation,
        "model": name,
        "field_bits": plan.field_bits,
        "field": plan.field_name,
        "prime": plan.prime,
        "frac_bits": plan.frac_bits,
        "policy": plan.policy,
        "metrics": result.metrics,
        "counts": plan.counts(),
        "bound_violations": result.bound_violations if check else None,
        "above_bound": result.above_bound if check else None,
        "bound_offenders": result.offenders if check else None,
        "time_s": {"float": result.time_float, "emulated": result.time_emulated},
        "recipes_alone_max_abs_error": result.ir_float_max_abs_logit_error,
    }


def cmd_emulate(args) -> dict:
    from .core.planfile import attach_weights, load_plan
    from .frontend.models import load_model
    from .pipeline import emulate
    from .progress import progress_bar
    from .report import print_emulation

    check_output_path(args.json, "--json")
    check_device(args.device)
    read_texts(args)
    if "seed" in args.given and not args.mpc_truncation:
        raise UserError("--seed applies to --mpc-truncation only (the randomness of the sampled truncation)")
    timings = {}
    if args.plan:
        plan = load_plan(args.plan)
        check_against_plan(args, plan)
        name = args.model or plan.model.get("name", "default")
        activations = args.activations if "activations" in args.given else plan.model.get("activations", "random")
        memory = check_memory(args, "emulate", plan.model["seq_len"], args.windows, ring_value_bytes(plan.field_bits, plan.prime),
                              model=name, preset=args.preset or plan.model.get("preset"), activations=activations)
        loaded = load_model(name, args.preset or plan.model.get("preset"), activations=activations)
        attach_weights(plan, loaded.model, name)
        seq_len = plan.model["seq_len"]
    else:
        check_field(args.field_bits, args.frac_bits, args.prime)
        check_applies(args, [args.policy])
        config = _config(args)
        check_calibration_fits(args, args.seq_len)
        memory = check_memory(args, "emulate", args.seq_len, args.windows, ring_value_bytes(args.field_bits, args.prime))
        loaded = load_model(args.model, args.preset, activations=args.activations)
        seq_len = args.seq_len
    windows, source = _eval_windows(args, loaded, seq_len)
    if not args.plan:
        converted = _converted(loaded, seq_len, args)
        plan = _placed(converted, config)
        timings = converted.timings
    truncation = "nearest"
    if args.mpc_truncation:
        from .backends import truncation_model_for
        from .core.protocols import load_protocol

        truncation = truncation_model_for(load_protocol(plan.protocol if args.plan else args.protocol))
    if args.device != "cpu":  # the float model runs where the emulation does: its time is the baseline
        loaded.model.to(args.device)
    with progress_bar(len(windows), "emulating") as advance:
        result = emulate(loaded.model, plan, windows, device=args.device, check=args.check, progress=advance,
                         truncation=truncation, seed=args.seed, recipes_error=args.recipes_error)
    record = _emulation_record(loaded.label, plan, result, args.check, truncation)
    record["phase_s"] = {**timings, **({"placement": plan.solver["wall_s"]} if timings else {})}
    record["memory"] = {**memory, "peak_rss_bytes": peak_rss_bytes()}
    print_emulation(record, plan, timings, result, source)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _converted(loaded, seq_len: int, args):
    """pipeline.convert (capture, calibration, lowering), with its progress on stderr."""
    from .pipeline import convert
    from .progress import status_line

    with status_line("converting (capture, calibration, lowering)"):
        return convert(loaded, seq_len, args.frac_bits, args.relu, calibration_text=args.calibration)


def _placed(converted, config):
    """build_plan, with the optimal search's progress on a live stderr line."""
    from .pipeline import build_plan
    from .progress import status_line

    limit = f", up to {config.time_limit_s:g} s" if config.policy == "optimal" else ""
    with status_line(f"placing ({config.policy}{limit})") as update:
        return build_plan(converted, config, progress=update)


def plan_protocol(args) -> str:
    """plan's profile: the one given; else, in Z_2^64, PLAN_PROTOCOL, whose plans CrypTen's backend runs
    (run_pi --plan, PlanModule: the exact truncation needs |x| < 2^62); in other fields the default
    profile (CrypTen computes in Z_2^64 only). emulate and compare keep the default profile."""
    from .cli_args import PLAN_PROTOCOL

    if "protocol" in args.given or args.field_bits != 64 or args.prime is not None:
        return args.protocol
    return PLAN_PROTOCOL


def cmd_plan(args) -> None:
    from .core.planfile import save_plan
    from .frontend.models import load_model
    from .generation.full_size import decode_step_window, plan_decode_step
    from .plan_cache import PlanMaker
    from .report import print_plan_summary

    check_field(args.field_bits, args.frac_bits, args.prime)
    check_output_path(args.output, "-o")
    args.protocol = plan_protocol(args)
    check_applies(args, [args.policy])
    read_texts(args)
    if args.fake_weights and args.bounds == "calibrated":
        raise UserError("--fake-weights plans use static bounds (--bounds calibrated needs the whole model's maxima)")
    config = _config(args)
    step = args.decode_step is not None  # generation.full_size: one token after --decode-step cached positions
    seq_len = decode_step_window(args.decode_step, args.given, args.calibration) if step else args.seq_len
    check_calibration_fits(args, seq_len, args.fake_weights)
    check_memory(args, "plan", seq_len, fake_weights=args.fake_weights)
    loaded = load_model(args.model, args.preset, fake_weights=args.fake_weights, activations=args.activations)
    cache = PlanMaker(loaded, args.seq_len, args.frac_bits, args.relu, args.calibration, use_cache=args.plan_cache)
    plan = plan_decode_step(loaded, args.decode_step, config, args.frac_bits, args.relu) if step else cache.cached(config)
    if plan is None:
        plan = _placed(_converted(loaded, args.seq_len, args), config)
        cache.store(config, plan)
    elif not step:
        print(f"plan: from cache (key {cache.hits[0][:12]})", file=sys.stderr)
    save_plan(plan, args.output)
    print_plan_summary(plan, args.output)


def cmd_compare(args) -> list[dict]:
    from .analysis.cost import plan_costs
    from .compare_report import plot_compare, print_compare
    from .core.protocols import load_network, load_protocol
    from .core.suggest import nearest
    from .core.types import POLICIES
    from .frontend.models import load_model
    from .pipeline import build_plan, emulate
    from .progress import progress_bar

    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")
    check_device(args.device)
    if not (args.field_bits or args.primes) or not args.policies:
        raise UserError("--field-bits (or --primes) and --policies need at least one value each")
    fields = sorted([(check_field(fb, args.frac_bits), None) for fb in args.field_bits] +
                    [(check_field(0, args.frac_bits, p), p) for p in args.primes], key=lambda f: (f[0], f[1] or 0))
    for pol in args.policies:
        if pol not in POLICIES:
            raise UserError(f"unknown policy {pol!r}{nearest(pol, POLICIES)}: choose from {', '.join(POLICIES)}")
    check_applies(args, args.policies)
    read_texts(args)
    _check_some_config(args, fields)
    check_calibration_fits(args, args.seq_len)
    memory = check_memory(args, "compare", args.seq_len, args.windows, max(ring_value_bytes(fb, p) for fb, p in fields))
    loaded = load_model(args.model, args.preset, activations=args.activations)
    windows, source = _eval_windows(args, loaded, args.seq_len)
    converted = _converted(loaded, args.seq_len, args)
    protocol, network = load_protocol(args.protocol), load_network("lan")
    rows, rounds = [], []
    sites: dict[str, list] = {}  # policy -> truncation sites of its plans at smaller fields
    with progress_bar(len(fields) * len(args.policies), "planning and emulating") as advance:
        for fb, prime in fields:
            for pol in args.policies:
                try:
                    # a placement that fits a smaller field fits this one: optimal starts from it
                    hints = tuple(sites.get("optimal", [])) + tuple(sites.get("lazy", [])[-1:])
                    plan = build_plan(converted, _config(args, pol, fb, prime), hints)
                    sites.setdefault(pol, []).append(plan.sites)
                except UserError as exc:
                    rows.append(_infeasible_row(loaded.label, fb, prime, args.frac_bits, pol, str(exc)))
                    rounds.append(None)
                    advance()
                    continue
                result = emulate(loaded.model, plan, windows, device=args.device, check=True)
                rows.append({**_emulation_record(loaded.label, plan, result, True), "feasible": True, "reason": ""})
                rounds.append(plan_costs(plan, protocol, network).rounds)
                advance()
    for row in rows:  # the command's estimate and peak, on every row (the JSON is a list of rows)
        row["memory"] = {**memory, "peak_rss_bytes": peak_rss_bytes()}
    print_compare(rows, rounds, protocol.name, source, len(windows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot_compare(rows, args.plot)
    return rows


def _infeasible_row(model: str, field_bits: int, prime, frac_bits: int, policy: str, reason: str) -> dict:
    """compare's row for a (field, policy) pair that cannot be planned: why, and no numbers."""
    from .core.fields import field_name

    return {"model": model, "field_bits": field_bits, "field": field_name(field_bits, prime), "prime": prime,
            "frac_bits": frac_bits, "policy": policy, "metrics": None, "counts": None, "bound_violations": None,
            "above_bound": None, "bound_offenders": None, "time_s": None, "recipes_alone_max_abs_error": None,
            "truncation_model": "nearest", "feasible": False, "reason": reason}


def _check_some_config(args, fields) -> None:
    """Compare's flags before any work: a (field, policy) a plan cannot be made under is a row marked
    infeasible, but flags under which no plan can be made at all are refused (the first reason)."""
    refused = []
    for fb, prime in fields:
        for pol in args.policies:
            try:
                _config(args, pol, fb, prime)
                return
            except UserError as exc:
                refused.append(exc)
    raise refused[0]


COMMANDS = {"emulate": cmd_emulate, "plan": cmd_plan, "report": cmd_report, "compare": cmd_compare, "models": cmd_models,
            "generate": cmd_generate}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        COMMANDS[args.command](args)
        return 0
    except UserError as exc:
        print(f"truncbridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("truncbridge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `truncbridge models | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
