"""Human-readable output: tables and progress bars (rich, on stderr for progress)."""
from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


@contextmanager
def progress_bar(total: int, label: str):
    """Yield an ``advance()`` callable; the bar goes to stderr and vanishes when done."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def print_emulation(record: dict, plan, converted, result, source: str) -> None:
    m, c = record["metrics"], record["counts"]
    title = (f"truncbridge emulate — {record['model']}  (Z_2^{record['field_bits']}, "
             f"{record['frac_bits']} fractional bits, {record['policy']} truncation)")
    acc = Table(title=title, title_justify="left", show_header=True)
    acc.add_column("accuracy vs float model")
    acc.add_column("value", justify="right")
    acc.add_row("evaluated on", f"{source}: {result.windows} windows x {result.positions // result.windows} tokens")
    acc.add_row("top-1 agreement", f"{m['top1_agreement']:.4f}")
    acc.add_row("mean KL(float || emulated) [nats]", f"{m['kl_mean']:.3g}")
    acc.add_row("max |logit error|", f"{m['max_abs_logit_error']:.4g}")
    acc.add_row("  of which recipes alone (no rounding)", f"{result.ir_float_max_abs_logit_error:.4g}")
    acc.add_row("perplexity float / emulated", f"{m['ppl_float']:.3f} / {m['ppl_emulated']:.3f}  "
                f"(ratio {m['ppl_emulated'] / m['ppl_float']:.4f})")
    v = record["bound_violations"]
    acc.add_row("bound violations", "not checked" if v is None else str(v))
    console.print(acc)

    ops = Table(show_header=True)
    ops.add_column("operations per forward pass")
    ops.add_column("count", justify="right")
    ops.add_row("private multiplications (mul + matmul nodes)", f"{c['mul_private']:,}")
    ops.add_row("  scalar private products", f"{plan.private_mul_elements():,}")
    ops.add_row("public multiplications", f"{c['mul_public']:,}")
    ops.add_row("truncations", f"{c['truncations']:,}")
    ops.add_row("truncated elements", f"{c['truncated_elements']:,}")
    ops.add_row("comparisons", f"{c['comparisons']:,}")
    console.print(ops)

    times = Table(show_header=True)
    times.add_column("time")
    times.add_column("seconds", justify="right")
    for stage, seconds in converted.timings.items():
        times.add_row(f"{stage} (once)", f"{seconds:.2f}")
    times.add_row("float model, all windows", f"{record['time_s']['float']:.3f}")
    times.add_row("exact emulation, all windows", f"{record['time_s']['emulated']:.3f}")
    console.print(times)
