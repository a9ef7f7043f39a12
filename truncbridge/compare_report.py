"""What ``truncbridge compare`` prints and draws: each (field, policy) pair's truncations, rounds and
accuracy, side by side."""
from __future__ import annotations

from rich.table import Table

from .report import console


def print_compare(rows: list[dict], rounds: list, protocol: str, source: str, windows: int) -> None:
    t = Table(title=f"truncbridge compare — {rows[0]['model']}, rounds under {protocol} "
                    f"(accuracy on {source}, {windows} windows)", title_justify="left")
    encoder = any(row["feasible"] and "cosine_mean" in row["metrics"] for row in rows)
    accuracy = ("cosine", "pooled cosine") if encoder else ("top-1", "ppl ratio")
    for col in ("field", "policy", "truncated elements", "truncations", "rounds", *accuracy, "violations"):
        t.add_column(col, justify="right", overflow="fold")
    for row, r in zip(rows, rounds):
        if not row["feasible"]:
            t.add_row(row["field"], row["policy"], "infeasible", "", "", "", "",
                      row["reason"].split(" (|value|")[0])
            continue
        m, c = row["metrics"], row["counts"]
        t.add_row(row["field"], row["policy"], f"{c['truncated_elements']:,}", f"{c['truncations']:,}",
                  f"{r:,.0f}", *_compare_accuracy(m), str(row["bound_violations"]))
    console.print(t)


def _compare_accuracy(m: dict) -> tuple[str, str]:
    """An encoder's cosines (per token, mean-pooled), or a causal LM's top-1 and perplexity ratio."""
    if "cosine_mean" in m:
        return f"{m['cosine_mean']:.6f}", f"{m['cosine_pooled']:.6f}"
    return f"{m['top1_agreement']:.4f}", f"{m['ppl_emulated'] / m['ppl_float']:.4f}"


def plot_compare(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = [(r["field_bits"], r["counts"]["truncated_elements"],
                r["metrics"].get("top1_agreement", r["metrics"].get("cosine_pooled")))
               for r in rows if r["policy"] == policy and r["feasible"]]
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=policy)
    ax1.set_xlabel("field bits")
    ax1.set_ylabel("truncated elements per forward pass")
    ax1.set_ylim(bottom=0)
    ax2.set_xlabel("field bits")
    ax2.set_ylabel("top-1 agreement with float")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{rows[0]['model']}: infeasible (field, policy) pairs are not drawn")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
