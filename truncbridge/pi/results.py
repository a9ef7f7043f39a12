"""run_pi's results: one row per policy from every party's measurements, ratios, the table.

The measurements are statistics only (``STATISTICS``: what each party sends rank 0 over MPI). The
accuracy columns need the client's ids and logits at the owner: they exist only in
``--benchmark-reveal`` runs, which every table marks INSECURE (as ``--audit`` and the owner as
dealer)."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INSECURE = "owner-insecure"
MEASURED = ("wall_s", "rounds", "bytes", "offline_s", "offline_bytes")
PER_PARTY = MEASURED + ("comm_s", "peak_rss_bytes", "started_s", "late_expansion_s", "weights_s")
# what a computing party sends rank 0 after each timed run (numbers only; the audit checks it)
STATISTICS = frozenset(PER_PARTY + ("loopback_s", "weights_rounds", "weights_bytes", "dealt_requests",
                                    "online_dealer_requests", "truncations_executed"))
ACCURACY = ("max_abs_diff_vs_emulator", "emulated_protocol_spread", "top1_agreement_vs_float", "max_abs_diff_vs_float")


@dataclass(frozen=True)
class RunMeasurement:
    """One party's measurements of one timed run (``session.run_once``). Only ``statistics()``
    leaves the party; the logits are the client's alone."""

    wall_s: float  # the online phase
    rounds: int
    bytes: int
    comm_s: float  # inside communicator calls
    offline_s: float  # dealing
    offline_bytes: int
    weights_rounds: int  # the weights' halves, opened between dealing and the online phase
    weights_bytes: int
    dealt_requests: int
    online_dealer_requests: int  # requests the dealer answered during the online phase (0: all dealt before)
    truncations_executed: int
    peak_rss_bytes: int | None = 0  # this party's peak resident set so far (ru_maxrss); None: the client kept it
    loopback_s: float | None = None  # with --network: the same pass on loopback, just before
    started_s: float | None = None  # seconds from this process's launch to this online pass's start (progress.py)
    late_expansion_s: float = 0.0  # of wall_s: dealt material expanded in the pass, beyond --material-window
    weights_s: float = 0.0  # the weights' phase: their shares and halves, opened after dealing, before the pass
    logits: torch.Tensor | None = None  # the revealed output, at the client only

    def statistics(self) -> dict:
        """What a party sends rank 0: numbers only (``STATISTICS``; ``--audit`` checks)."""
        out = {k: v for k, v in asdict(self).items() if k != "logits"}
        for optional in ("loopback_s", "started_s"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def from_statistics(cls, received: dict) -> RunMeasurement:
        """A party's measurements as rank 0 received them (``statistics``)."""
        names = {f.name for f in fields(cls)} - {"logits"}
        return cls(**{k: v for k, v in received.items() if k in names})


def policy_row(policy: str, parties: int, runs: list[list[RunMeasurement]], references: dict | None = None,
               logits: list | None = None) -> dict:
    """One policy's row from its repetitions (each: every computing party's measurements): median
    online and offline wall time (each run's slowest party); rounds, bytes and dealt bytes do not
    vary between runs. With the client's revealed ``logits`` (one per run) and the ``references``
    (``--benchmark-reveal`` only), the worst error over runs against the emulator and the float model."""
    walls = [max(m.wall_s for m in everyone) for everyone in runs]
    local = [max(m.wall_s - m.comm_s for m in everyone) for everyone in runs]  # outside communicator calls
    loopback = [max(m.wall_s if m.loopback_s is None else m.loopback_s for m in everyone) for everyone in runs]
    offline = [max(m.offline_s for m in everyone) for everyone in runs]
    first = runs[0]
    row = {"policy": policy, "parties": parties,
            "wall_s": statistics.median(walls), "wall_s_runs": walls, "local_s": statistics.median(local),
            "late_expansion_s": statistics.median(max(m.late_expansion_s for m in everyone) for everyone in runs),
            "loopback_s": statistics.median(loopback),
            "rounds": max(m.rounds for m in first),
            "bytes": max(m.bytes for m in first),
            "offline_s": statistics.median(offline),
            "weights_s": statistics.median(max(m.weights_s for m in everyone) for everyone in runs),
            "offline_bytes": sum(m.offline_bytes for m in first),  # what the dealer sent
            # input-independent openings between dealing and the online phase (weights' halves)
            "weights_rounds": max(m.weights_rounds for m in first),
            "weights_bytes": max(m.weights_bytes for m in first),
            "dealt_requests": first[0].dealt_requests,
            "online_dealer_requests": max(m.online_dealer_requests for everyone in runs for m in everyone),
            "truncations_executed": first[0].truncations_executed,
            "per_party": [{**{k: getattr(m, k) for k in PER_PARTY}, "peak_rss_bytes": last.peak_rss_bytes}
                          for m, last in zip(first, runs[-1])]}  # the peak after the policy's last run
    if references is not None and logits is not None:
        row.update(accuracy(policy, [x.double() for x in logits], references))
    return row


def accuracy(policy: str, logits: list, refs: dict) -> dict:
    """The revealed logits against the emulator's (exact and protocol-sampled) and the float model's."""
    return {"max_abs_diff_vs_emulator": (max((x - refs[policy]).abs().max().item() for x in logits)
                                         if policy in refs else None),
            "emulated_protocol_spread": refs.get(f"{policy}/spread"),
            "top1_agreement_vs_float": min((x.argmax(-1) == refs["float"].argmax(-1)).double().mean().item()
                                           for x in logits),
            "max_abs_diff_vs_float": max((x - refs["float"]).abs().max().item() for x in logits)}


def startup(rows: list[dict], say=None) -> dict:
    """``startup_s``: seconds from rank 0's launch to the start of its first online pass (the first policy's
    first timed run: imports, the memory check, the model, the plans, the parties' start, the recording
    passes and the first dealing before it); ``startup_phases``: rank 0's lines with the age it said them at."""
    started = [p["started_s"] for r in rows for p in r["per_party"][:1] if p.get("started_s") is not None]
    lines = [[age, msg] for age, msg in getattr(say, "lines", ()) if not msg.startswith(" ")]  # progress aside
    return {"startup_s": min(started, default=None), "startup_phases": lines}


def insecure_modes(result: dict, audit: bool) -> list[str]:
    """Why this run is not a private one (empty: it is): every table says so."""
    out = []
    if result["dealer"] == INSECURE:
        out.append("the model owner deals and can read the client's data (--dealer owner-insecure)")
    if result.get("benchmark_reveal"):
        out.append("the client sent its token ids and logits to the model owner after the timed runs, for the "
                   "accuracy columns (--benchmark-reveal)")
    if audit:
        out.append("every party's shares and the dealer's masks were pooled at the model owner (--audit)")
    return out


def add_predictions(row: dict, plan, predicted: dict) -> dict:
    """The cost model's figures beside the measured ones; on an emulated network, the predicted
    wall time: the same pass on loopback (measured just before) plus the network time the cost
    model predicts from the plan's rounds and bytes."""
    row["predicted"] = predicted
    if "network_s" in predicted:
        predicted["wall_s"] = row["loopback_s"] + predicted["network_s"]
    row["planned_truncations"] = plan.counts()["truncations"]
    return row


def ratios(rows: list[dict]) -> dict:
    """lazy/eager, optimal/eager and vanilla/eager of the measured (and predicted) costs."""
    by = {r["policy"]: r for r in rows}
    if "eager" not in by:
        return {}
    base, out = by["eager"], {}
    for policy in ("lazy", "optimal", "vanilla"):
        if policy in by:
            r = by[policy]
            out[f"{policy}/eager"] = {k: r[k] / base[k] for k in MEASURED if base[k]}
            if "predicted" in r:
                out[f"{policy}/eager"]["predicted_rounds"] = (r["predicted"]["rounds"] /
                                                              base["predicted"]["rounds"])
                out[f"{policy}/eager"]["predicted_bytes"] = r["predicted"]["bytes"] / base["predicted"]["bytes"]
    return out


# within the spread: the revealed output differs from the exact emulation by at most twice the largest difference
# seen between protocol-sampled emulations (the exact truncation rounds stochastically, so a run is one more sample)
WITHIN_SPREAD = 2.0
# below this top-1, vanilla CrypTen's output is not the model's: inv_sqrt (accurate only for inputs in about
# [0.1, 64]) on a norm's small mean of squares is the usual cause
VANILLA_TOP1_HINT = 0.9
LEGEND = (
    "columns: wall_s online wall time (median, slowest party); pred_s the loopback pass + the cost model's network "
    "time (only with --network); model_s the cost model's alone: its local compute (protocols/compute.json) times the "
    "computing parties sharing one core of this host (predicted.cpu_sharing), + its network time; loop_s the same "
    "pass on loopback; local_s its local compute: wall less the time inside communicator calls (waiting for peers, "
    "the emulated network), the most of any party; rounds and MB online, per party (the most of any party); "
    "offline_s and offline_MB dealing (what the dealer sent); weights_MB the weights' halves "
    "opened before the online phase (- for vanilla: it opens them online); truncs truncation protocols executed "
    "(vanilla: CrypTen divisions, one call per tensor)",
    "accuracy (--benchmark-reveal): vs_emu max |logit - exact emulation|; spread the largest difference between "
    "protocol-sampled emulations; ok? 'ok' when vs_emu <= 2 x spread; top1 agreement with the float model's argmax")


def within_spread(row: dict) -> bool | None:
    """The verdict of the accuracy columns: None where there is no emulation to compare with (vanilla)."""
    diff, spread = row.get("max_abs_diff_vs_emulator"), row.get("emulated_protocol_spread")
    if diff is None or spread is None:
        return None
    return diff <= WITHIN_SPREAD * spread + 1e-9


def _format_row(r: dict) -> str:
    def num(v):
        return "-" if v is None else f"{v:.3g}"

    predicted = r.get("predicted", {})
    model = predicted.get("wall_model_s", predicted.get("local_s"))
    vanilla = r["policy"] == "vanilla"
    weights = "-" if vanilla else f"{r['weights_bytes'] / 1e6:.2f}"
    truncs = f"{r['truncations_executed']}{' div' if vanilla else ''}"
    line = (f"{r['policy']:<8} {r['parties']:>7} {r['wall_s']:>7.2f} {num(predicted.get('wall_s')):>7} {num(model):>7} "
            f"{r['loopback_s']:>7.2f} "
            f"{'-' if r.get('local_s') is None else format(r['local_s'], '.2f'):>7} "
            f"{r['rounds']:>7} {r['bytes'] / 1e6:>9.2f} "
            f"{r['offline_s']:>9.2f} {r['offline_bytes'] / 1e6:>10.2f} {weights:>10} {truncs:>8}")
    if "top1_agreement_vs_float" not in r:
        return line
    verdict = {None: "-", True: "ok", False: "OUT"}[within_spread(r)]
    return (f"{line} {num(r['max_abs_diff_vs_emulator']):>10} {num(r['emulated_protocol_spread']):>10} {verdict:>4} "
            f"{r['top1_agreement_vs_float']:>6.3f}")


def hints(result: dict) -> list[str]:
    """What a reader should do about a number the table shows: a revealed output outside the emulator's spread,
    vanilla's low accuracy."""
    out = []
    for r in result["rows"]:
        if within_spread(r) is False:
            out.append(f"{r['policy']}: the output differs from the emulation by {r['max_abs_diff_vs_emulator']:.3g}, "
                       f"more than {WITHIN_SPREAD:g} x the protocol's spread {r['emulated_protocol_spread']:.3g}: "
                       "the run did not compute the plan (a bug to report)")
        if r["policy"] == "vanilla" and r.get("top1_agreement_vs_float", 1.0) < VANILLA_TOP1_HINT:
            out.append(f"vanilla: top-1 {r['top1_agreement_vs_float']:.3f}: CrypTen's inv_sqrt is accurate only for "
                       "inputs in about [0.1, 64], and a norm's mean of squares is often smaller; rerun with "
                       "--vanilla-rsqrt-scale S (rsqrt(x) = S * inv_sqrt(S^2 x), e.g. S = 4 or 8)")
    return out


def _network(network: dict | None) -> str:
    if network is None:
        return "network: loopback as is (no emulated delay)"
    return (f"network: {network['name']} emulated in software ({network['rtt_ms']:g} ms per round, "
            f"{network['bandwidth_gbps'] * 1000:g} Mbit/s)")


def memory_line(memory: dict) -> str:
    """Each process's peak resident set beside its estimate (``memory.pi_estimates``), in GB."""
    estimate = memory["estimate"]
    peaks = ", ".join(f"{name} {'kept by the client' if peak is None else f'{peak / 1e9:.2f}'} "
                      f"(estimated {estimate[name]['estimate_bytes'] / 1e9:.2f})"
                      for name, peak in memory["peak_rss_bytes"].items())
    return f"memory: peak RSS in GB per process: {peaks}"


def format_table(result: dict) -> str:
    dealer = ("dealer: INSECURE, the model owner deals and can read the client's data" if result["dealer"] == INSECURE
              else "a separate dealer")
    revealed = any("top1_agreement_vs_float" in r for r in result["rows"])
    model = f"{result['model']} --preset {result['preset']}" if result.get("preset") else result["model"]
    lines = [f"{model}, {result['parties']} computing parties and {dealer}, seq {result['seq_len']}, "
             f"{result['truncation']} truncation, {result['bounds']} bounds, "
             f"{result['threads_per_party']} thread(s) per party, median wall of {result['repeat']} run(s); "
             f"online = after all dealing; {_network(result.get('network'))}"
             + ("" if result.get("fuse", True) else "; products not fused with truncations")
             + ("; openings batched per round, weights' halves opened before the online phase (weights_MB)"
                if result.get("batch", True) else "; one step at a time"),
             *(f"INSECURE: {why}" for why in result.get("insecure", ())),
             f"{'policy':<8} {'parties':>7} {'wall_s':>7} {'pred_s':>7} {'model_s':>7} {'loop_s':>7} {'local_s':>7} "
             f"{'rounds':>7} {'MB':>9} "
             f"{'offline_s':>9} {'offline_MB':>10} {'weights_MB':>10} {'truncs':>8}"
             + (f" {'vs_emu':>10} {'spread':>10} {'ok?':>4} {'top1':>6}" if revealed else "")]
    lines += [_format_row(r) for r in result["rows"]]
    lines += LEGEND[:1 + revealed]
    lines += [f"hint: {h}" for h in hints(result)]
    if result.get("startup_s") is not None:
        lines.append(f"start-up: {result['startup_s']:.1f} s from launch to the first online pass (rank 0; "
                     "--json's startup_phases say where it went)")
    if "memory" in result:
        lines.append(memory_line(result["memory"]))
    for name, ratio in result["ratios"].items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in ratio.items())
        lines.append(f"{name}: {parts}")
    if "audit" in result:
        a = result["audit"]
        mpi = "statistics and the revealed data" if result.get("benchmark_reveal") else "statistics only"
        verdict = "; ".join(a["findings"][:3]) or ("every receipt is a share, a fresh-masked opening or the client's "
                                                   f"output; over MPI after set-up, {mpi}")
        more = f" (+{a['finding_count'] - 3} more)" if a["finding_count"] > 3 else ""
        lines.append(f"audit: {a['openings']} openings, {a['masks_used']} masks, {a.get('mpi_receipts', 0)} MPI "
                     f"receipts, output received by {a['output_receivers']}: {verdict}{more}")
    return "\n".join(lines)
