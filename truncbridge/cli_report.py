"""``truncbridge report`` and ``truncbridge models``: what a plan costs (one, or several side by side, or drawn)
and which models there are — commands that read plan files and tables, and build no model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli_checks import check_network, check_output_path


def cmd_report(args) -> None:
    from .analysis.cost import plan_costs, protocol_fit
    from .core.planfile import load_plan
    from .core.protocols import load_network, load_protocol
    from .report import local_and_wall, print_report

    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")
    check_network(args.network, "--network")
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
                                               **costs.to_json(), "fit": fit.to_json(),
                                               "local_compute": local_and_wall(plan, costs)}, indent=2) + "\n")


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


def cmd_models(args) -> None:
    from .frontend.model_types import convertible_types
    from .frontend.models import ALIASES, PRESETS

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
