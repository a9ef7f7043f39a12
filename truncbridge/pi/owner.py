"""The model owner's side of run_pi: plans, predictions, and the references a benchmark measures against.

The references (float logits, the emulator's exact and protocol-sampled logits) need the weights
*and* the client's token ids, which no party holds in a private run: rank 0 computes them only
under ``--benchmark-reveal`` (INSECURE), from the ids the client sends it after the timed runs;
nothing of this reaches the protocol.
"""
from __future__ import annotations

import time

import torch

SPREAD_SEEDS = 16  # emulator runs with the protocol's truncation model: the spread MPC should stay within


def protocol_profile(truncation: str, parties: int) -> str:
    return f"crypten-exact-{parties}pc" if truncation == "exact" else f"crypten-{parties}pc"


PROGRESS_EVERY_S = 10.0  # run_pi prints lines, not a live display: the search's progress this often


def _every(seconds: float, say):
    """``say``, at most once per ``seconds``."""
    last = [time.perf_counter()]

    def throttled(text: str) -> None:
        if time.perf_counter() - last[0] >= seconds:
            last[0] = time.perf_counter()
            say(f"  {text}")

    return throttled


def make_plans(args, converted, parties: int, progress) -> dict:
    """Policy -> plan. Eager is CrypTen's fixed rule and gets the whole ring (it needs ~51 bits);
    lazy / optimal fill the budget, so they get the profile's headroom. On an emulated network,
    optimal minimises the time there (``analysis.objective``), else truncated elements."""
    from ..pipeline import build_plan, plan_config

    profile = protocol_profile(args.truncation, parties)
    plans, hints = {}, ()
    for policy in [p for p in ("eager", "lazy", "optimal") if p in args.policies]:
        progress(f"planning {policy} for {profile} ({args.bounds} bounds)")
        headroom = 0 if policy == "eager" and args.truncation == "crypten" else None
        config = plan_config(policy, 64, args.frac_bits, bounds=args.bounds, protocol=profile,
                             headroom_bits=headroom, time_limit_s=args.time_limit,
                             objective=args.network["name"] if args.network else "elements",
                             precision_tolerance_bits=args.precision_tolerance)
        plans[policy] = build_plan(converted, config, hints, progress=_every(PROGRESS_EVERY_S, progress))
        if policy == "lazy":
            hints = (plans[policy].sites,)
    return plans


def predictions(plan, parties: int, truncation: str, fuse: bool = True, network: dict | None = None,
                batch: bool = True) -> dict:
    """The cost model's online rounds and bytes for the plan, as run_pi runs it (``batch``: every
    opening ready in the same round in one message, the critical path; else one operation at a
    time), then one opening of the output, and what they cost on ``network``."""
    from ..analysis.cost import plan_costs
    from ..core.protocols import load_network, load_protocol, network_seconds

    c = plan_costs(plan, load_protocol(protocol_profile(truncation, parties)), load_network("lan"), fuse=fuse,
                   weights_apart=batch)
    out = {"rounds": c["rounds" if batch else "rounds_sequential"],  # as run_pi runs it, output opening aside
           "rounds_critical_path": c["rounds"], "rounds_sequential": c["rounds_sequential"],
           "bytes": c["bytes"], "weights_bytes": c["weights_bytes"],
           "expected_truncation_failures": c["expected_truncation_failures"],
           "fused_products": c["fused_products"], "fused_pairs": c["fused_pairs"]}
    if network is not None:
        out["network_s"] = network_seconds(network, out["rounds"] + 1, c["bytes"])
    return out


def references(model, plans: dict, ids: torch.Tensor, inputs: dict, truncation: str, parties: int) -> dict:
    """Float logits; per plan the emulator's exact (round-nearest) logits, and the spread of the
    protocol's own truncation model over SPREAD_SEEDS runs: the error MPC should stay within."""
    from ..backends import RingExecutor, truncation_model_for
    from ..core.protocols import load_protocol

    model_name = truncation_model_for(load_protocol(protocol_profile(truncation, parties)))
    with torch.no_grad():
        out = {"float": model(ids[None]).logits[0].double()}
    for policy, plan in plans.items():
        ex = RingExecutor(plan)
        out[policy] = exact = ex.decode_outputs(ex.run(inputs)[0])[0][0]
        noisy = RingExecutor(plan, truncation=model_name, seed=1)
        out[f"{policy}/spread"] = max((noisy.decode_outputs(noisy.run(inputs)[0])[0][0] - exact).abs().max().item()
                                      for _ in range(SPREAD_SEEDS))
    return out
