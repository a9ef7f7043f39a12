"""Command line: ``truncbridge emulate | plan | report | compare | models``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli_args import parse_args
from .core.errors import UserError, first_line


def _check_output_path(path: str | None, flag: str) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise UserError(f"{flag}: directory does not exist: {Path(path).resolve().parent}")


def _check_field(field_bits: int, frac_bits: int, prime: int | None = None) -> int:
    """The field's value bits, after one clear error for a field that cannot hold the representation."""
    from .core.fields import check_prime, check_ring_bits, prime_capacity_bits

    bits = prime_capacity_bits(check_prime(prime)) if prime is not None else check_ring_bits(field_bits)
    what = f"F_p's {bits} value bits" if prime is not None else f"--field-bits {bits}"
    if not 1 <= frac_bits < bits:
        raise UserError(f"--frac-bits must be at least 1 and below {what}, got {frac_bits}")
    return bits


def _check_device(device: str) -> None:
    if device != "cpu":
        import torch

        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise UserError(f"--device {device} is not usable here: {first_line(exc)}") from None


def _note(text: str) -> None:
    """A flag that changes nothing here, said on stderr (the command goes on)."""
    print(f"truncbridge: note: {text}", file=sys.stderr)


def _read_texts(args) -> None:
    """--text and --calibration-text read before the slow work (args.calibration: the latter's text)."""
    from .frontend.data import read_text_file

    if getattr(args, "text", None):
        read_text_file(args.text)
    args.calibration = None
    if args.calibration_text:
        try:
            args.calibration = read_text_file(args.calibration_text)
        except UserError as exc:
            raise UserError(f"--calibration-text: {exc}") from None


def _check_calibration_fits(args, seq_len: int, fake_weights: bool = False) -> None:
    """--calibration-text holds a window of --seq-len tokens: checked with the tokenizer alone."""
    from .frontend.models import load_tokenizer
    from .pipeline import calibration_windows

    if args.calibration is not None:
        calibration_windows(load_tokenizer(args.model, args.preset, fake_weights), seq_len, text=args.calibration)


def _check_network(spec: str, flag: str, also: tuple[str, ...] = ()) -> None:
    """A network name (or rtt=MS,bw=MBIT), with the nearest names when it is mistyped."""
    from .core.protocols import PROTOCOL_DIR, load_network
    from .core.suggest import nearest

    if spec in also:
        return
    try:
        load_network(spec)
    except UserError:
        names = [*also, *json.loads((PROTOCOL_DIR / "networks.json").read_text())]
        raise UserError(f"{flag}: unknown network {spec!r}{nearest(spec, names)}: choose {', '.join(names)} "
                        "or rtt=MS,bw=MBIT") from None


def _check_applies(args, policies: list[str]) -> None:
    """A placement flag given where it changes nothing is refused (or noted, for a mere limit)."""
    if args.objective != "elements":
        _check_network(args.objective, "--objective", also=("elements",))
        if "optimal" not in policies:
            raise UserError(f"--objective {args.objective} applies to --policy optimal only (what its search "
                            f"minimises); {'/'.join(policies)} places without it")
    if "margin_bits" in args.given and args.bounds != "calibrated":
        raise UserError("--margin-bits applies to --bounds calibrated only (static bounds have no margin)")
    if "precision_tolerance" in args.given and set(policies) == {"eager"}:
        raise UserError("--precision-tolerance applies to lazy and optimal only (eager is the floor they keep to)")
    if "time_limit" in args.given and "optimal" not in policies:
        _note(f"--time-limit applies to --policy optimal only: {'/'.join(policies)} ignores it")


# flags a plan file fixes when it is made: with --plan they do not apply (why)
NOT_WITH_PLAN = {"relu": "its program was lowered when it was made",
                 "calibration_text": "its ranges were calibrated when it was made",
                 "time_limit": "its truncations were placed when it was made"}


def _plan_fixed(plan) -> dict[str, tuple[object, str]]:
    """Flag (dest) -> (the plan's value, how to say it): given otherwise with --plan, refused."""
    c = plan.config
    seq_len = plan.model["seq_len"]
    tolerance = "off" if c.precision_tolerance_bits is None else f"{c.precision_tolerance_bits} bits"
    return {"field_bits": (c.field_bits if c.prime is None else None, plan.field_name),
            "prime": (c.prime, plan.field_name), "policy": (c.policy, c.policy), "frac_bits": (c.frac_bits, str(c.frac_bits)),
            "protocol": (c.protocol, c.protocol), "headroom": (c.headroom_bits, f"{c.headroom_bits} bits"),
            "bounds": (c.bounds, c.bounds), "margin_bits": (c.margin_bits, str(c.margin_bits)),
            "precision_tolerance": (c.precision_tolerance_bits, tolerance), "objective": (c.objective, c.objective),
            "seq_len": (seq_len, f"{seq_len} tokens"), "preset": (plan.model.get("preset"), str(plan.model.get("preset")))}


def _check_against_plan(args, plan) -> None:
    """With --plan, a flag the plan fixes is refused when given otherwise, or when it does not apply."""
    from .frontend.models import ALIASES, RANDOM_PREFIX, SHIPPED

    made_for = plan.model.get("name", "default")
    if str(plan.model.get("hash", "")).startswith("generated:"):
        raise UserError(f"{args.plan} is a --fake-weights plan of {made_for}: its weights were generated, never held, "
                        "so it is costed (truncbridge report), not emulated")
    named = ALIASES.get(args.model, args.model)
    if named and (named in SHIPPED or named.startswith(RANDOM_PREFIX)) and named != made_for:
        raise UserError(f"this plan was made for model {made_for}, not --model {args.model}: drop --model, or make a "
                        f"plan for {args.model}")
    for dest, why in NOT_WITH_PLAN.items():
        if dest in args.given or (dest == "calibration_text" and args.calibration_text):
            raise UserError(f"--{dest.replace('_', '-')} does not apply with --plan: {why}")
    for dest, (fixed, shown) in _plan_fixed(plan).items():
        value = getattr(args, dest)
        if dest in args.given and value != fixed:
            flag = f"--{dest.replace('_', '-')}"
            raise UserError(f"{flag} {'off' if value is None else value} differs from the plan's {shown}: a plan is made "
                            f"for one {flag[2:]}; drop {flag}, or make a plan with it")


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
    from .report import print_emulation, progress_bar

    _check_output_path(args.json, "--json")
    _check_device(args.device)
    _read_texts(args)
    if "seed" in args.given and not args.mpc_truncation:
        raise UserError("--seed applies to --mpc-truncation only (the randomness of the sampled truncation)")
    timings = {}
    if args.plan:
        plan = load_plan(args.plan)
        _check_against_plan(args, plan)
        name = args.model or plan.model.get("name", "default")
        loaded = load_model(name, args.preset or plan.model.get("preset"))
        attach_weights(plan, loaded.model, name)
        seq_len = plan.model["seq_len"]
    else:
        _check_field(args.field_bits, args.frac_bits, args.prime)
        _check_applies(args, [args.policy])
        config = _config(args)
        _check_calibration_fits(args, args.seq_len)
        loaded = load_model(args.model, args.preset)
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
    print_emulation(record, plan, timings, result, source)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _converted(loaded, seq_len: int, args):
    """pipeline.convert (capture, calibration, lowering), with its progress on stderr."""
    from .pipeline import convert
    from .report import status_line

    with status_line("converting (capture, calibration, lowering)"):
        return convert(loaded, seq_len, args.frac_bits, args.relu, calibration_text=args.calibration)


def _placed(converted, config):
    """build_plan, with the optimal search's progress on a live stderr line."""
    from .pipeline import build_plan
    from .report import status_line

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
    from .plan_cache import PlanMaker
    from .report import print_plan_summary

    _check_field(args.field_bits, args.frac_bits, args.prime)
    _check_output_path(args.output, "-o")
    args.protocol = plan_protocol(args)
    _check_applies(args, [args.policy])
    _read_texts(args)
    if args.fake_weights and args.bounds == "calibrated":
        raise UserError("--fake-weights plans use static bounds (--bounds calibrated needs the whole model's maxima)")
    config = _config(args)
    _check_calibration_fits(args, args.seq_len, args.fake_weights)
    loaded = load_model(args.model, args.preset, fake_weights=args.fake_weights)
    cache = PlanMaker(loaded, args.seq_len, args.frac_bits, args.relu, args.calibration, use_cache=args.plan_cache)
    plan = cache.cached(config)
    if plan is None:
        plan = _placed(_converted(loaded, args.seq_len, args), config)
        cache.store(config, plan)
    else:
        print(f"plan: from cache (key {cache.hits[0][:12]})", file=sys.stderr)
    save_plan(plan, args.output)
    print_plan_summary(plan, args.output)


def cmd_report(args) -> None:
    from .analysis.cost import plan_costs, protocol_fit
    from .core.planfile import load_plan
    from .core.protocols import load_network, load_protocol
    from .report import print_report

    _check_output_path(args.json, "--json")
    _check_output_path(args.plot, "--plot")
    _check_network(args.network, "--network")
    if args.plot:
        _plot_plans(args)
    if len(args.plan) > 1:
        return _report_side_by_side(args)
    plan = load_plan(args.plan[0])
    protocol = load_protocol(args.protocol or plan.protocol)
    costs = plan_costs(plan, protocol, load_network(args.network))
    fit = protocol_fit(plan, protocol)
    print_report(plan, costs, args.network, fit.warning)
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": args.plan[0], "network": args.network, "counts": plan.counts(),
                                               **costs.to_json(), "fit": fit.to_json()}, indent=2) + "\n")


def _plot_plans(args) -> None:
    """report --plot: the plans' bit widths, truncations and per-recipe costs, in one PNG."""
    from .core.planfile import load_plan
    from .core.protocols import load_network
    from .plot import plot_plans

    plans = [(path, load_plan(path)) for path in args.plan]
    plot_plans(plans, args.plot, protocol=args.protocol, network=load_network(args.network))
    print(f"plot written to {args.plot}", file=sys.stderr)


def _report_side_by_side(args) -> None:
    """Several plans (eager / lazy / optimal of one model): counts per forward pass and per token,
    and rounds, bytes and LAN / WAN latency under every protocol profile (or --protocol)."""
    from .analysis.cost import plan_costs, protocol_fit
    from .core.planfile import load_plan
    from .core.protocols import load_network, load_protocol, protocol_names
    from .report import print_side_by_side

    plans = [(path, load_plan(path)) for path in args.plan]
    rows = []
    for name in [args.protocol] if args.protocol else protocol_names():
        protocol = load_protocol(name)
        for path, plan in plans:
            lan, wan = (plan_costs(plan, protocol, load_network(n)) for n in ("lan", "wan"))
            fit = protocol_fit(plan, protocol)
            rows.append({"plan": path, "model": plan.model["name"], "preset": plan.model.get("preset"),
                         "seq_len": plan.model["seq_len"], "policy": plan.policy, "protocol": name,
                         "counts": plan.counts(), "rounds": lan.rounds, "bytes": lan.bytes,
                         "latency_lan_s": lan.latency_s, "latency_wan_s": wan.latency_s,
                         "expected_truncation_failures": lan.expected_truncation_failures,
                         "made_for": plan.protocol, "runnable": fit.runnable,
                         "short_of_headroom": fit.short_of_headroom, "fit_warning": fit.warning})
    print_side_by_side(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def cmd_compare(args) -> list[dict]:
    from .analysis.cost import plan_costs
    from .core.fields import field_name
    from .core.protocols import load_network, load_protocol
    from .core.suggest import nearest
    from .core.types import POLICIES
    from .frontend.models import load_model
    from .pipeline import build_plan, emulate
    from .report import plot_compare, print_compare, progress_bar

    _check_output_path(args.json, "--json")
    _check_output_path(args.plot, "--plot")
    _check_device(args.device)
    if not (args.field_bits or args.primes) or not args.policies:
        raise UserError("--field-bits (or --primes) and --policies need at least one value each")
    fields = sorted([(_check_field(fb, args.frac_bits), None) for fb in args.field_bits] +
                    [(_check_field(0, args.frac_bits, p), p) for p in args.primes], key=lambda f: (f[0], f[1] or 0))
    for pol in args.policies:
        if pol not in POLICIES:
            raise UserError(f"unknown policy {pol!r}{nearest(pol, POLICIES)}: choose from {', '.join(POLICIES)}")
    _check_applies(args, args.policies)
    _read_texts(args)
    _check_some_config(args, fields)
    _check_calibration_fits(args, args.seq_len)
    loaded = load_model(args.model, args.preset)
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
                    rows.append({"model": loaded.label, "field_bits": fb, "field": field_name(fb, prime), "prime": prime,
                                 "frac_bits": args.frac_bits, "policy": pol,
                                 "metrics": None, "counts": None, "bound_violations": None,
                                 "above_bound": None, "bound_offenders": None, "time_s": None,
                                 "recipes_alone_max_abs_error": None, "truncation_model": "nearest",
                                 "feasible": False, "reason": str(exc)})
                    rounds.append(None)
                    advance()
                    continue
                result = emulate(loaded.model, plan, windows, device=args.device, check=True)
                rows.append({**_emulation_record(loaded.label, plan, result, True), "feasible": True, "reason": ""})
                rounds.append(plan_costs(plan, protocol, network).rounds)
                advance()
    print_compare(rows, rounds, protocol.name, source, len(windows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot_compare(rows, args.plot)
    return rows


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


def cmd_models(args) -> None:
    from .frontend.models import ALIASES, PRESETS, convertible_types

    tested, untested = convertible_types()
    if args.types:
        print("\n".join([*(f"{t:24s} tested" for t in tested),
                         *(f"{t:24s} text model, untested" for t in untested)]))
        return
    print("default                  the shipped trained Llama (truncbridge/assets/default_model)")
    print("default-gpt2             a GPT-2 of the same size, trained on the same text (truncbridge/assets/gpt2_model)")
    print(f"random:<model_type>      seeded random weights, 2 layers, hidden 64; {len(tested)} tested types, "
          f"{len(untested)} untested text types (truncbridge models --types)")
    for alias, target in ALIASES.items():
        print(f"{alias:24s} = {target}")
    for preset, (model_type, _) in PRESETS.items():
        print(f"--preset {preset:15s} random:{model_type} at full size")


COMMANDS = {"emulate": cmd_emulate, "plan": cmd_plan, "report": cmd_report, "compare": cmd_compare, "models": cmd_models}


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


if __name__ == "__main__":
    sys.exit(main())
