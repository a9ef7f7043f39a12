"""run_pi --generate's results at rank 0: per policy the prefill, the per-token cost of the decode steps
(online wall, rounds, bytes; offline and the weights' halves per token), the cost model's prediction
beside them, and — only under --benchmark-reveal (INSECURE) — the tokens against the float model's and
the emulator's generation."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .options import PiConfig
from .owner import cpu_sharing, predictions, process_name
from .results import insecure_modes


def _slowest(parties: list[dict], key: str) -> float:
    return max(p[key] for p in parties)


def policy_row(policy: str, gathered: list, plans: dict | None, config: PiConfig, parties: int, sharing: float = 1.0
               ) -> dict:
    """One policy's row: ``gathered`` is [whole pass, prefill, step 1, ...], each every party's statistics;
    ``sharing``: the parties computing on one core of this host (``owner.cpu_sharing``)."""
    total, prefill, *steps = gathered
    tokens = 1 + len(steps)
    row = {"policy": policy, "tokens": tokens,
           "prefill_s": _slowest(prefill, "wall_s"), "prefill_rounds": prefill[0]["rounds"],
           "prefill_bytes": _slowest(prefill, "bytes"),
           "online_s": _slowest(total, "wall_s"), "offline_s": _slowest(total, "offline_s"),
           "offline_bytes_per_token": _slowest(total, "offline_bytes") / tokens,
           "weights_bytes": _slowest(total, "weights_bytes"),
           "online_dealer_requests": total[0]["online_dealer_requests"],
           "steps": [{"wall_s": _slowest(s, "wall_s"), "rounds": s[0]["rounds"], "bytes": _slowest(s, "bytes"),
                      "comm_s": _slowest(s, "comm_s")} for s in [prefill, *steps]]}
    if steps:
        row["per_token_s"] = statistics.mean(_slowest(s, "wall_s") for s in steps)
        row["per_token_rounds"] = statistics.mean(s[0]["rounds"] for s in steps)
        row["per_token_bytes"] = statistics.mean(_slowest(s, "bytes") for s in steps)
        local = statistics.mean(min(p["wall_s"] - p["comm_s"] for p in s) for s in steps)
        row["per_token_local_s"] = local
    if plans and steps:
        lengths = sorted(plans)[1:1 + len(steps)]  # the steps that ran (an --eos stop runs fewer)
        predicted = [predictions(plans[c], parties, config.truncation, config.fuse, config.network, config.batch,
                                 sharing) for c in lengths]
        row["predicted_per_token"] = {"rounds": statistics.mean(p["rounds"] + 1 for p in predicted),
                                      "bytes": statistics.mean(p["bytes"] + p["output_bytes"] for p in predicted)}
        row["predicted_per_token"]["local_s"] = statistics.mean(p.get("local_s", math.nan) for p in predicted)
        if config.network is not None:  # wall_s: this pass's measured local compute + the predicted network time;
            network = statistics.mean(p["network_s"] for p in predicted)  # wall_model_s: the cost model's alone
            row["predicted_per_token"]["wall_s"] = row["per_token_local_s"] + network
            row["predicted_per_token"]["wall_model_s"] = statistics.mean(p.get("wall_model_s", math.nan) for p in predicted)
    return row


def revealed_accuracy(config: PiConfig, setup, revealed: dict, say) -> dict:
    """INSECURE (--benchmark-reveal): the client's tokens against the float model's generation and the emulator's."""
    from ..generation.emulate import emulated_generation, float_generation
    from ..pipeline import vocab_size

    prompt, model, gen = revealed["prompt"], setup.loaded.model, config.generation
    say("comparing the revealed tokens with the float model's and the emulator's generation")
    reference = float_generation(model, prompt, gen.tokens, gen.sampler())
    out = {}
    for policy, ids in revealed["ids"].items():
        row = {"tokens_vs_float": sum(a == b for a, b in zip(ids, reference.ids)) / len(ids)}
        if policy in setup.plans:
            emulated = emulated_generation(setup.plans[policy], prompt, gen.tokens, vocab_size(model), gen.sampler())
            row["tokens_vs_emulator"] = sum(a == b for a, b in zip(ids, emulated.ids)) / len(ids)
        out[policy] = row
    return out


def format_table(result: dict) -> str:
    lines = [f"run_pi --generate: {result['model']}, prompt {result['prompt_len']} tokens, {result['parties']} parties, "
             f"network {result['network']['name'] if result['network'] else 'loopback'}"
             + (f"  [INSECURE: {', '.join(result['insecure'])}]" if result["insecure"] else "")]
    lines.append(f"{'policy':>8} {'tokens':>6} {'prefill s':>9} {'s/token':>8} {'rounds/tok':>10} {'MB/tok':>8} "
                 f"{'offl MB/tok':>11} {'pred s/tok':>10} {'pred rnd':>8} {'vs float':>8}")
    for r in result["rows"]:
        pred = r.get("predicted_per_token", {})
        acc = r.get("accuracy", {}).get("tokens_vs_float")
        lines.append(f"{r['policy']:>8} {r['tokens']:>6} {r['prefill_s']:>9.3f} {r.get('per_token_s', 0):>8.3f} "
                     f"{r.get('per_token_rounds', 0):>10.1f} {r.get('per_token_bytes', 0) / 1e6:>8.3f} "
                     f"{r['offline_bytes_per_token'] / 1e6:>11.3f} "
                     f"{pred['wall_s'] if 'wall_s' in pred else float('nan'):>10.3f} {pred.get('rounds', float('nan')):>8.1f} "
                     f"{'-' if acc is None else f'{acc:.3f}':>8}")
    for name, value in result["ratios"].items():
        lines.append(f"{name}: {value:.3f}")
    peaks = result["memory"]["peak_rss_bytes"]
    lines.append("peak memory: " + ", ".join(f"{who} {'kept by the client' if b is None else f'{b / 2**30:.2f} GiB'}"
                                             for who, b in peaks.items()))
    return "\n".join(lines)


def report(config: PiConfig, parties: int, setup, passes: dict, pooled: list, revealed: dict | None, say) -> None:
    import torch

    sharing = cpu_sharing((setup.memory or {}).get("host_ranks", (0,)), parties, torch.get_num_threads())
    rows = [policy_row(p, passes[p], setup.plans.get(p), config, parties, sharing) for p in setup.policies if p in passes]
    if revealed is not None:
        accuracy = revealed_accuracy(config, setup, revealed, say)
        for r in rows:
            r["accuracy"] = accuracy.get(r["policy"], {})
    by = {r["policy"]: r for r in rows}
    ratios = {f"{p}/vanilla per-token s": by[p]["per_token_s"] / by["vanilla"]["per_token_s"]
              for p in ("eager", "lazy", "optimal") if p in by and "vanilla" in by and "per_token_s" in by[p]}
    result = {"mode": "generate", "parties": parties, "model": config.model, "prompt_len": setup.prompt_len,
              "tokens": config.generation.tokens, "truncation": config.truncation, "network": config.network,
              "dealer": config.dealer, "benchmark_reveal": config.benchmark_reveal, "rows": rows, "ratios": ratios,
              "memory": {**(setup.memory or {}), "peak_rss_bytes": {
                  process_name(rank, parties, config.dealer): p["peak_rss_bytes"] for rank, p in enumerate(pooled)}}}
    result["insecure"] = insecure_modes(result, config.audit)
    if config.audit:
        from .audit import audit_summary

        result["audit"] = audit_summary(pooled, parties, config.dealer, reveal=config.benchmark_reveal)
    print(format_table(result), flush=True)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(result, indent=1) + "\n")
