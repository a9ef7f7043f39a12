"""Human-readable output: tables (rich). Progress on stderr lives in ``progress.py``."""
from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=max(110, shutil.get_terminal_size().columns))


def two_column(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "value"), title: str | None = None) -> Table:
    """A label / right-aligned value table."""
    t = Table(title=title, title_justify="left")
    t.add_column(header[0])
    t.add_column(header[1], justify="right")
    for label, value in rows:
        t.add_row(label, value)
    return t


def _offenders_table(offenders: list[dict]) -> Table:
    t = Table(title="--check: the nodes furthest above their promised bounds", title_justify="left")
    for col in ("node", "op", "where in the model", "bound", "source", "seen", "× bound", "above bound", "outside bits"):
        t.add_column(col, justify="left" if col in ("op", "where in the model", "source") else "right")
    for o in offenders:
        t.add_row(str(o["node"]), o["op"], o["origin"], f"{o['bound']:.4g}", o["source"], f"{o['seen']:.4g}",
                  f"{o['seen'] / o['bound']:.3g}" if o["bound"] > 0 else "∞", f"{o['elements']:,}",
                  f"{o['beyond_bits']:,}")
    return t


def print_emulation(record: dict, plan, timings: dict, result, source: str) -> None:
    m, c = record["metrics"], record["counts"]
    title = (f"truncbridge emulate — {record['model']}  ({record['field']}, "
             f"{record['frac_bits']} fractional bits, {record['policy']} truncation)")
    v = record["bound_violations"]
    console.print(two_column([
        ("evaluated on", f"{source}: {result.windows} windows x {result.positions // result.windows} tokens"),
        *(_encoder_rows(m, result) if "cosine_mean" in m else _decoder_rows(m, result)),
        ("bound violations (values outside their bit width)", "not checked" if v is None else str(v)),
        ("values above their bound (bit width kept)", "not checked" if v is None else
         str(record.get("above_bound", 0) - v)),
        ("truncation", "exact round-nearest" if record.get("truncation_model", "nearest") == "nearest"
         else f"sampled as the MPC protocol does it ({record['truncation_model']})"),
    ], ("accuracy vs float model", "value"), title))
    if record.get("bound_offenders"):
        console.print(_offenders_table(record["bound_offenders"]))
    console.print(two_column([
        ("private multiplications (mul + matmul nodes)", f"{c['mul_private']:,}"),
        ("  scalar private products", f"{plan.private_mul_elements():,}"),
        ("public multiplications", f"{c['mul_public']:,}"),
        ("truncations", f"{c['truncations']:,}"),
        ("truncated elements", f"{c['truncated_elements']:,}"),
        ("comparisons", f"{c['comparisons']:,}"),
    ], ("operations per forward pass", "count")))
    times = [(f"{stage} (once)", f"{seconds:.2f}") for stage, seconds in timings.items()]
    if timings and plan.solver.get("wall_s") is not None:
        times.append((f"placement ({plan.policy})", f"{plan.solver['wall_s']:.2f}"))
    times += [("float model, all windows", f"{record['time_s']['float']:.3f}"),
              ("exact emulation, all windows", f"{record['time_s']['emulated']:.3f}")]
    console.print(two_column(times, ("time", "seconds")))


def _decoder_rows(m: dict, result) -> list[tuple[str, str]]:
    # a flip whose float margin lies within the logit error is a near tie, not a loss of precision
    flips = [("  top-1 flips (the largest float margin overturned)", f"{m['top1_flips']} ({m['flip_margin_max']:.3g})")
             ] if m.get("top1_flips") else []
    return [
        ("top-1 agreement", f"{m['top1_agreement']:.4f}"),
        *flips,
        ("mean KL(float || emulated) [nats]", f"{m['kl_mean']:.3g}"),
        ("max |logit error|", f"{m['max_abs_logit_error']:.4g}"),
        ("  of which recipes alone (no rounding)", _recipes_alone(result)),
        ("perplexity float / emulated",
         f"{m['ppl_float']:.3f} / {m['ppl_emulated']:.3f}  (ratio {m['ppl_emulated'] / m['ppl_float']:.4f})"),
    ]


def _encoder_rows(m: dict, result) -> list[tuple[str, str]]:
    return [
        ("mean cosine of last hidden states", f"{m['cosine_mean']:.6f}"),
        ("mean cosine of mean-pooled sentence embeddings", f"{m['cosine_pooled']:.6f}"),
        ("max |hidden-state error|", f"{m['max_abs_error']:.4g}"),
        ("  of which recipes alone (no rounding)", _recipes_alone(result)),
    ]


def _recipes_alone(result) -> str:
    found = result.ir_float_max_abs_logit_error
    return "not run (--recipes-error)" if found is None else f"{found:.4g}"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def print_plan_summary(plan, path: str) -> None:
    c = plan.counts()
    model = plan.model
    rows = [
        ("model", f"{model_label(model)} (seq {model['seq_len']}, weights {model['hash'][:12]})"),
        ("field / fraction bits", f"{plan.field_name} / {plan.frac_bits}"),
        ("protocol / headroom", f"{plan.protocol} / {plan.config.headroom_bits} bits"),
        ("policy / bounds", f"{plan.policy} / {plan.config.bounds}"),
        ("nodes", f"{len(plan.program.nodes):,}"),
        ("truncations / elements", f"{c['truncations']:,} / {c['truncated_elements']:,}"),
        ("on CrypTen (run_pi --plan, PlanModule)", on_crypten(plan)),
    ]
    if plan.solver.get("solver"):
        s = plan.solver
        if "proven_gap" in s:  # against the MILP's lower bound, which holds for the cost model's count
            gap = f"proven within {s['proven_gap']:.2%} of the best placement"
        else:
            gap = f"gap {s['mip_gap']:.1%}" if "mip_gap" in s else "no solution of its own"
        kept = "; kept its start" if s.get("kept_start") else ""
        rows.append(("solver", f"{s['status']}, {gap}, {s['wall_s']:.1f} s "
                               f"(best start: {s['start_elements']:,} elements{kept})"))
    console.print(two_column(rows, title=f"plan written to {path}"))


def model_label(model: dict) -> str:
    """A plan's model as a reader names it: its name, and the preset of a full-size random model."""
    return f"{model['name']} ({model['preset']})" if model.get("preset") else model["name"]


def _row_model(row: dict) -> str:
    return f"{model_label({'name': row['model'], 'preset': row['preset']})}, seq {row['seq_len']}"


def on_crypten(plan) -> str:
    """Whether CrypTen's backend runs the plan with its exact truncation, and what to plan for if not."""
    from .analysis.cost import protocol_fit
    from .core.protocols import load_protocol

    if plan.field_bits != 64 or plan.prime is not None:
        return f"no: CrypTen computes in Z_2^64, not {plan.field_name}"
    fit = protocol_fit(plan, load_protocol("crypten-exact-2pc"))
    if fit.runnable:
        return f"runs (exact truncation: widest truncated value below 2^{fit.widest_bits - 1})"
    return (f"no: values up to 2^{fit.widest_bits - 1}, the exact truncation needs |x| < 2^62: "
            "plan with --protocol crypten-exact-2pc (or -3pc)")


def print_side_by_side(rows: list[dict]) -> None:
    models = list(dict.fromkeys(_row_model(r) for r in rows))
    several = len(models) > 1  # then every row names its model
    what = f"plans of {len(models)} models (each row names its own)" if several else models[0]
    title = f"truncbridge report — {what}: per forward pass, and per token (÷ seq)"
    plans = {r["plan"]: (_row_model(r), r["policy"]) for r in rows}
    shared = len(set(plans.values())) < len(plans)  # two plans of one model and policy: say which file is which
    t = Table(title=title, title_justify="left")
    for col in (*(["model"] if several else []), "protocol", "policy", "truncations", "truncated elements", "per token",
                "comparisons", "rounds", "bytes / party", "LAN s", "WAN s", "exp. failures", "runs it?"):
        t.add_column(col, justify="left" if col in ("model", "protocol", "policy") else "right")
    for r in rows:
        c = r["counts"]
        label = f"{r['policy']} ({Path(r['plan']).stem})" if shared else r["policy"]
        t.add_row(*([_row_model(r)] if several else []), r["protocol"], label,
                  f"{c['truncations']:,}", f"{c['truncated_elements']:,}",
                  f"{c['truncated_elements'] / r['seq_len']:,.0f}", f"{c.get('comparisons', 0):,}", f"{r['rounds']:,.0f}",
                  _fmt_bytes(r["bytes"]), f"{r['latency_lan_s']:.2f}", f"{r['latency_wan_s']:.1f}",
                  f"{r['expected_truncation_failures']:.3g}", _runs_it(r))
    _print_whole(t)
    console.print("runs it?: made for = the profile the plan was made for; yes = another profile runs it; short = it "
                  "runs, but the values it truncates leave less headroom than the profile wants (see exp. failures); "
                  "NO = its truncation is wrong on values the plan truncates (report PLAN --protocol P says why)",
                  highlight=False, soft_wrap=True)


def _runs_it(row: dict) -> str:
    """Whether the row's profile can run the plan (``analysis.cost.protocol_fit``)."""
    if not row.get("runnable", True):
        return "NO"
    if row.get("made_for") == row["protocol"]:
        return "made for"
    return "short" if row.get("short_of_headroom") else "yes"


def _print_whole(table: Table) -> None:
    """Piped or logged, a wide table keeps its natural width (no column cut to "…"); on a terminal, the terminal's."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    (console if console.is_terminal else Console(width=max(console.width, natural))).print(table)


def print_report(plan, costs, network: str, warning: str = "") -> None:
    """``costs``: ``analysis.cost.PlanCosts``; ``warning``: ``ProtocolFit.warning``, printed first
    (the plan costed under a protocol it was not made for, or one that cannot run it)."""
    if warning:
        console.print(f"note: {warning}", highlight=False, soft_wrap=True)
    c = plan.counts()
    console.print(two_column([
        ("private multiplications", f"{c['mul_private']:,}"),
        ("truncations / elements", f"{c['truncations']:,} / {c['truncated_elements']:,}"),
        ("rounds (critical path)", f"{costs.rounds:,.0f}"),
        ("rounds (one operation at a time, as CrypTen runs)", f"{costs.rounds_sequential:,.0f}"),
        ("communication per party", _fmt_bytes(costs.bytes)),
        ("estimated latency", f"{costs.latency_s:.3f} s"),
        *_local_rows(plan, costs, network),
        ("expected truncation failures per forward pass", f"{costs.expected_truncation_failures:.3g}"),
    ], title=f"truncbridge report — {model_label(plan.model)}, {plan.policy}, {plan.field_name}, "
             f"{plan.frac_bits} fraction bits; costs under {costs.protocol} on {network}"))

    layers = Table(title="per layer", title_justify="left")
    for col in ("layer", "private muls", "scalar products", "truncations", "truncated elements", "bytes"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for name, v in costs.by_layer.items():
        if not any(v.values()):
            continue
        layers.add_row(name, f"{v.get('mul_private', 0):,.0f}", f"{v.get('private_products', 0):,.0f}",
                       f"{v.get('truncations', 0):,.0f}", f"{v.get('truncated_elements', 0):,.0f}",
                       _fmt_bytes(v.get("bytes", 0)))
    console.print(layers)

    kinds = Table(title="per operation kind", title_justify="left")
    kinds.add_column("op")
    kinds.add_column("nodes", justify="right")
    kinds.add_column("elements", justify="right")
    by_op: dict[str, list[int]] = {}
    for n in plan.program.nodes:
        by_op.setdefault(n.op, [0, 0])
        by_op[n.op][0] += 1
        by_op[n.op][1] += n.numel
    for op, (count, elements) in sorted(by_op.items()):
        kinds.add_row(op, f"{count:,}", f"{elements:,}")
    console.print(kinds)

    rec = Table(title="per recipe: truncations, and rounds on the critical path", title_justify="left")
    for col in ("recipe", "truncations", "truncated elements", "expected failures", "critical rounds"):
        rec.add_column(col, justify="left" if col == "recipe" else "right")
    for name, v in sorted(costs.by_recipe.items()):
        rec.add_row(name, f"{v.get('truncations', 0):,.0f}", f"{v.get('truncated_elements', 0):,.0f}",
                    f"{v.get('expected_failures', 0):.3g}", f"{v.get('critical_rounds', 0):,.0f}")
    console.print(rec)
    print_costliest_recipes(costs, network)


def local_and_wall(plan, costs) -> dict:
    """The cost model's local compute per party (CrypTen's backend, calibrated on this machine:
    ``protocols/compute.json``) and the predicted wall time: local compute + the network's time for the
    rounds and bytes (``costs``' network). What report prints and writes to --json."""
    from .analysis.cost import local_compute
    from .core.protocols import load_compute, load_protocol

    calibration = load_compute()
    local = local_compute(plan, load_protocol(costs.protocol), calibration)
    return {"local_s": local["local_s"], "local_by_kind": local["by_kind"], "uncalibrated": local["uncalibrated"],
            "calibration_threads": calibration["machine"]["threads"], "wall_model_s": local["local_s"] + costs.latency_s}


def _local_rows(plan, costs, network: str) -> list[tuple[str, str]]:
    local = local_and_wall(plan, costs)
    missing = f"; not calibrated: {', '.join(local['uncalibrated'])}" if local["uncalibrated"] else ""
    where = f"{local['calibration_threads']} thread(s), protocols/compute.json{missing}"
    return [(f"local compute per party (CrypTen backend, {where})", f"{local['local_s']:.3f} s"),
            (f"predicted wall on {network} = local compute + network", f"{local['wall_model_s']:.3f} s")]


RECIPE_STEPS = ("degree", "steps")  # a recipe's size as every recipe records it (with lo, hi, method, max_error)


def print_costliest_recipes(costs, network: str, count: int = 10) -> None:
    """The ``count`` recipe uses that cost most on ``network`` (their own rounds and bytes), with the
    range each was fitted on: where a real model's wide ranges cost."""
    from .core.protocols import load_network

    net = load_network(network)
    t = Table(title=f"the {count} costliest recipes on {network} (own rounds and bytes; range fitted on)", title_justify="left")
    for col in ("recipe", "where", "range", "method, steps", "max error", "rounds", "bytes", "trunc. elements", "seconds"):
        t.add_column(col, justify="left" if col in ("recipe", "where", "range", "method, steps") else "right")
    for r in costs.most_expensive_recipes(net, count):
        p = r.params
        steps = ", ".join(([str(p["method"])] if "method" in p else []) + [f"{k} {p[k]}" for k in RECIPE_STEPS if k in p])
        t.add_row(r.recipe, r.origin.split(":")[0], f"[{p['lo']:.4g}, {p['hi']:.4g}]" if "lo" in p else "", steps,
                  f"{p['max_error']:.2g}" if "max_error" in p else "", f"{r.rounds:,.0f}", _fmt_bytes(r.bytes),
                  f"{r.truncated_elements:,}", f"{r.seconds(net):.3f}")
    _print_whole(t)
