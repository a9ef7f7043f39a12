"""``truncbridge report --plot``: a picture of one plan or several side by side.

Top: along the program in layer order, each computed value's bit width (``Plan.bound_bits``: its
promised bound at its scale, sign included) against the field's budget, and a marker wherever the
plan truncates. Below: per recipe kind (softmax, norm, MLP activation, linear: matmuls and
products, ...), the rounds each kind puts on the critical path and the bytes it sends, from
``analysis.cost.plan_costs``. ``plan_series`` and ``kind_costs`` return exactly what is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .analysis.cost import layer_of, plan_costs
from .core.protocols import load_network, load_protocol
from .core.types import Plan
from .core.waves import input_independent

INSERTED = ("trunc", "shl")  # what placement adds to the converted program
LINEAR = "linear (matmuls, products)"


@dataclass
class PlanSeries:
    """The top panel's data for one plan. ``x``: a computed value's position among the converted
    program's computed values (the same for every plan of one model and length: placement only
    inserts truncations and shifts); ``bits``: its bit width. ``trunc_x`` / ``trunc_bits``: one
    entry per truncation node, at the value it truncates and that value's bits."""

    label: str
    field_bits: int
    budget_bits: int
    x: list[int] = field(default_factory=list)
    bits: list[int] = field(default_factory=list)
    trunc_x: list[int] = field(default_factory=list)
    trunc_bits: list[int] = field(default_factory=list)
    layer_starts: dict[str, int] = field(default_factory=dict)  # layer -> x of its first value


def plan_series(plan: Plan, label: str = "") -> PlanSeries:
    series = PlanSeries(label or plan.policy, plan.field_bits, plan.budget_bits)
    position: dict[int, int] = {}  # plan node id -> x of the computed value it is (or shifts / truncates)
    weights_alone = input_independent(plan.program)  # weights and their transposes lead the program
    for node in plan.program.nodes:
        if node.op in ("input", "output") or (node.id in weights_alone and node.op not in INSERTED):
            continue
        if node.op in INSERTED:
            source = node.inputs[0]
            position[node.id] = position.get(source, 0)
            if node.op == "trunc":
                series.trunc_x.append(position[node.id])
                series.trunc_bits.append(plan.bound_bits(plan.program[source]))
            continue
        position[node.id] = len(series.x)
        series.layer_starts.setdefault(layer_of(node.origin), len(series.x))
        series.x.append(len(series.x))
        series.bits.append(plan.bound_bits(node))
    return series


def recipe_kind(recipe: str, origin: str) -> str:
    """What a reader calls a node's part of the model: softmax, norm, MLP activation, linear, or its recipe."""
    if not recipe:
        return LINEAR
    module, _, op = origin.partition(":")
    where = module.rsplit(".", 1)[-1].lower()
    if "softmax" in op or recipe == "softmax":
        return "softmax"
    if "norm" in where or where.startswith("ln"):
        return "norm"
    if any(part in module.lower() for part in ("mlp", "act", "ffn", "feed_forward")):
        return "MLP activation"
    return recipe


def kind_costs(plan: Plan, protocol: str | None = None, network: dict | None = None) -> dict[str, dict[str, float]]:
    """Per recipe kind: truncations, critical-path rounds and bytes per party (``plan_costs``'
    ``by_recipe``, each recipe booked to the kind most of its nodes belong to)."""
    votes: dict[str, dict[str, int]] = {}
    for node in plan.program.nodes:
        recipe = node.recipe or "(linear)"
        kinds = votes.setdefault(recipe, {})
        kind = recipe_kind(node.recipe, node.origin)
        kinds[kind] = kinds.get(kind, 0) + 1
    costs = plan_costs(plan, load_protocol(protocol or plan.protocol), network or load_network("lan"))
    out: dict[str, dict[str, float]] = {}
    for recipe, booked in costs.by_recipe.items():
        kind = max(votes.get(recipe, {LINEAR: 1}).items(), key=lambda kv: kv[1])[0]
        into = out.setdefault(kind, {"truncations": 0.0, "critical_rounds": 0.0, "bytes": 0.0})
        for key in into:
            into[key] += booked.get(key, 0.0)
    return out


def plan_labels(plans: list[tuple[str, Plan]]) -> list[str]:
    """Each plan's name in the legend: its policy, with its model when several models are shown and
    its file when two would read the same."""
    models = {(p.model.get("name"), p.model.get("preset")) for _, p in plans}
    labels = [f"{p.model.get('name')} {p.policy}" if len(models) > 1 else p.policy for _, p in plans]
    return [f"{label} ({Path(path).stem})" if labels.count(label) > 1 else label for label, (path, _) in zip(labels, plans)]


def plot_plans(plans: list[tuple[str, Plan]], path: str, protocol: str | None = None, network: dict | None = None,
               size: tuple[float, float] = (12, 8), dpi: int = 100) -> None:
    """Draw ``plans`` ((file, plan) pairs) to a PNG of ``size`` inches at ``dpi`` (rounds and bytes
    under ``protocol``, default each plan's own, on ``network``, default lan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = plan_labels(plans)
    fig = plt.figure(figsize=size, dpi=dpi)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 2))
    _draw_bits(fig.add_subplot(grid[0, :]), [plan_series(p, label) for (_, p), label in zip(plans, labels)])
    costs = [kind_costs(p, protocol, network) for _, p in plans]
    _draw_kinds(fig.add_subplot(grid[1, 0]), costs, labels, "critical_rounds", "rounds on the critical path")
    _draw_kinds(fig.add_subplot(grid[1, 1]), costs, labels, "bytes", "bytes per party (online)", log=True)
    first = plans[0][1]
    model = first.model.get("name", "?") + (f" ({first.model['preset']})" if first.model.get("preset") else "")
    several = len({(p.model.get("name"), p.model.get("preset")) for _, p in plans}) > 1
    protocols = {protocol or p.protocol for _, p in plans}
    under = protocols.pop() if len(protocols) == 1 else "each plan's own protocol"
    fig.suptitle(f"{'plans of several models' if several else model}, seq {first.model.get('seq_len')}: "
                 f"bits per value and truncations (top); costs per recipe kind under {under} (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _draw_bits(ax, series: list[PlanSeries]) -> None:
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for k, s in enumerate(series):  # the first plan drawn on top: it is usually the narrowest (eager)
        color, on_top = colors[k % len(colors)], 2 * (len(series) - k)
        ax.plot(s.x, s.bits, lw=0.6, color=color, alpha=0.8, zorder=on_top, label=f"{s.label}: value bits")
        ax.scatter(s.trunc_x, s.trunc_bits, s=9, marker="v", color=color, zorder=on_top + 1,
                   label=f"{s.label}: {len(s.trunc_x):,} truncations")
    budgets = {(s.field_bits, s.budget_bits) for s in series}
    for field_bits, budget in sorted(budgets):
        ax.axhline(field_bits, color="black", lw=1, label=f"field: {field_bits} bits")
        if budget != field_bits:
            ax.axhline(budget, color="black", lw=0.8, ls="--",
                       label=f"budget: {budget} bits (the field less {field_bits - budget} bits of headroom)")
    starts = series[0].layer_starts
    for x in starts.values():
        ax.axvline(x, color="grey", lw=0.4, alpha=0.5)
    step = max(1, len(starts) // 12)  # at most about a dozen layer names, none on top of another
    shown: list[tuple[str, int]] = []
    for name, x in list(starts.items())[::step]:
        if not shown or x - shown[-1][1] > len(series[0].x) / 25:
            shown.append((name, x))
    ax.set_xticks([x for _, x in shown], [name.replace("model.", "") for name, _ in shown], rotation=20, fontsize=7,
                  ha="right")
    ax.set_ylabel("bits of the value (bound at its scale)")
    ax.set_xlabel("computed values, in program order (layers marked)")
    ax.set_ylim(0, max(field for field, _ in budgets) + 6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, 2 * len(series) + len(budgets)), loc="lower right")


def _draw_kinds(ax, costs: list[dict], labels: list[str], key: str, title: str, log: bool = False) -> None:
    kinds = sorted({k for c in costs for k in c}, key=lambda k: -max(c.get(k, {}).get(key, 0.0) for c in costs))
    width = 0.8 / len(costs)
    for i, (c, label) in enumerate(zip(costs, labels)):
        ax.bar([k + i * width for k in range(len(kinds))], [c.get(kind, {}).get(key, 0.0) for kind in kinds],
               width=width, label=label)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], kinds, rotation=20, fontsize=7, ha="right")
    ax.set_title(title, fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
