"""The model owner's side of run_pi: plans, predictions, and the references a benchmark measures against.

The references (float logits, the emulator's exact and protocol-sampled logits) need the weights
*and* the client's token ids, which no party holds in a private run: rank 0 computes them only
under ``--benchmark-reveal`` (INSECURE), from the ids the client sends it after the timed runs;
nothing of this reaches the protocol.
"""
from __future__ import annotations

import time

import torch

from ..core.errors import UserError
from .options import PiConfig

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


def make_plans(config: PiConfig, loaded, parties: int, progress) -> tuple[dict, object]:
    """Policy -> plan, and the conversion if one was made (None when every plan came from the plan
    cache, ``plan_cache``; ``--no-plan-cache`` bypasses it). Eager is CrypTen's fixed rule and gets the
    whole ring (it needs ~51 bits); lazy / optimal fill the budget, so they get the profile's headroom.
    On an emulated network, optimal minimises the time there (``analysis.objective``), else truncated elements."""
    from ..pipeline import plan_config
    from ..plan_cache import PlanMaker

    profile = protocol_profile(config.truncation, parties)
    maker = PlanMaker(loaded, config.seq_len, config.frac_bits, use_cache=config.plan_cache, say=progress)
    plans, hints = {}, ()
    for policy in [p for p in ("eager", "lazy", "optimal") if p in config.policies]:
        headroom = 0 if policy == "eager" and config.truncation == "crypten" else None
        plan_settings = plan_config(policy, field_bits=64, frac_bits=config.frac_bits, bounds=config.bounds,
                                    protocol=profile, headroom_bits=headroom, time_limit_s=config.time_limit_s,
                                    objective=config.network["name"] if config.network else "elements",
                                    precision_tolerance_bits=config.precision_tolerance_bits)
        plans[policy] = maker.plan(plan_settings, hints, progress=_every(PROGRESS_EVERY_S, progress),
                                   announce=lambda p=policy: progress(f"planning {p} for {profile} ({config.bounds} bounds)"))
        if policy == "lazy":
            hints = (plans[policy].sites,)
    if maker.hits:
        progress(f"plans: from cache (key {', '.join(k[:12] for k in maker.hits)}; {maker.seconds:.2f} s)")
    return plans, maker.converted


def read_plans(config: PiConfig, loaded, parties: int, progress) -> dict:
    """Policy -> plan, from the owner's own plan files (``--plan``): each refused in one line
    unless it was made for this model (name, weights, vocabulary) and ``--seq-len``, and the
    chosen truncation can run it with ``parties`` parties (``runnable``)."""
    from ..core.planfile import attach_weights, load_plan
    from ..pipeline import vocab_size

    plans, files = {}, {}
    for path in config.plan_files:
        plan = load_plan(path)
        made = plan.model
        if plan.redacted:
            raise UserError(f"--plan {path} is a redacted plan: the model owner runs its full plan")
        if made.get("name") != loaded.name:
            raise UserError(f"--plan {path} was made for model {made.get('name')}, this run's --model is {loaded.name}")
        if made.get("seq_len") != config.seq_len:
            raise UserError(f"--plan {path} was made for {made.get('seq_len')} tokens, this run's --seq-len is "
                            f"{config.seq_len}")
        if made.get("vocab", vocab_size(loaded.model)) != vocab_size(loaded.model):
            raise UserError(f"--plan {path} was made for a vocabulary of {made.get('vocab')}, {loaded.name} has "
                            f"{vocab_size(loaded.model)}")
        if plan.policy in plans:
            raise UserError(f"--plan {files[plan.policy]} and {path} are both {plan.policy} plans: one plan per policy")
        attach_weights(plan, loaded.model, loaded.name)
        runnable(plan, config.truncation, parties, f"--plan {path}")
        progress(f"{path}: {plan.policy}, made for {plan.protocol} (headroom {plan.config.headroom_bits} bits)")
        plans[plan.policy], files[plan.policy] = plan, path
    return plans


def runnable(plan, truncation: str, parties: int, what: str = "this plan") -> None:
    """Refuse, in one line, a plan that ``truncation`` cannot run here: its profile's verdict
    (``analysis.cost.protocol_fit``) under the profile run_pi runs; a plan that defers its
    truncations on a smaller headroom than CrypTen's own truncation needs (eager's rule places
    its truncations whatever the headroom: it runs as CrypTen runs)."""
    from ..analysis.cost import protocol_fit
    from ..core.protocols import load_protocol

    profile = load_protocol(protocol_profile(truncation, parties))
    fit = protocol_fit(plan, profile, f"run with {truncation} truncation, as")
    if not fit.runnable or (fit.short_of_headroom and plan.policy != "eager"):
        raise UserError(f"{what}: {fit.reason}: make it with --protocol {profile.name}")


def cpu_sharing(host_ranks, parties: int, threads: int) -> float:
    """How many computing parties' threads share one core of this host (at least 1): 3 parties on 2 cores
    compute a round's work in 1.5 times one party's time, since every party computes its part of each round."""
    import os

    on_host = sum(1 for r in host_ranks if r < parties)
    return max(1.0, on_host * threads / len(os.sched_getaffinity(0)))


def predictions(plan, parties: int, truncation: str, fuse: bool = True, network: dict | None = None,
                batch: bool = True, sharing: float = 1.0) -> dict:
    """The cost model's online rounds and bytes for the plan, as run_pi runs it (``batch``: every
    opening ready in the same round in one message, the critical path; else one operation at a
    time), then one opening of the output (``output_bytes``: CrypTen's count for the client, who receives every
    other party's share of the first output), and what they cost on ``network``; ``local_s``: one party's local
    compute of the pass (``analysis.compute``, calibrated in ``protocols/compute.json``); ``wall_model_s`` =
    ``local_s`` x ``sharing`` (``cpu_sharing``: the parties computing on one core) + ``network_s`` (on
    ``network``; 0 on loopback): the wall time from the cost model alone."""
    from ..analysis.compute import plan_local_seconds
    from ..analysis.cost import plan_costs
    from ..core.protocols import load_compute, load_network, load_protocol, network_seconds

    c = plan_costs(plan, load_protocol(protocol_profile(truncation, parties)), load_network("lan"), fuse=fuse,
                   weights_apart=batch)
    out = {"rounds": c.rounds if batch else c.rounds_sequential,  # as run_pi runs it, output opening aside
           "rounds_critical_path": c.rounds, "rounds_sequential": c.rounds_sequential,
           "bytes": c.bytes, "weights_bytes": c.weights_bytes,
           "expected_truncation_failures": c.expected_truncation_failures,
           "fused_products": c.fused_products, "fused_pairs": c.fused_pairs,
           "output_bytes": (parties - 1) * plan.program[plan.program.outputs[0]].numel * 8}
    local = plan_local_seconds(plan, load_compute(), fuse, batch, truncation == "exact", parties)
    out["local_s"], out["local_uncalibrated"], out["cpu_sharing"] = local["local_s"], local["uncalibrated"], sharing
    out["wall_model_s"] = out["local_s"] * sharing
    if network is not None:
        out["network_s"] = network_seconds(network, out["rounds"] + 1, c.bytes + out["output_bytes"])
        out["wall_model_s"] += out["network_s"]
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


def process_name(rank: int, parties: int, dealer: str) -> str:
    """owner, client, helper or dealer: the names of ``memory.pi_estimates``."""
    return "dealer" if rank == parties and dealer == "separate" else ("owner", "client", "helper")[rank]


def check_memory(config: PiConfig, parties: int, host_ranks: list[int]) -> dict:
    """Every process's memory, estimated from the model's config before any party builds
    (``memory.pi_estimates``); refused in one line where the processes on rank 0's host will not fit it."""
    from ..memory import GB, check_fits, model_shape, pi_estimates

    policies = len(config.plan_files) + config.vanilla if config.plan_files else len(config.policies)
    estimates = pi_estimates(model_shape(config.model, config.preset), config.seq_len, parties, config.dealer == "separate",
                             config.vanilla, window=config.material_window_mb << 20)
    names = [process_name(r, parties, config.dealer) for r in host_ranks]
    on_host = sum(estimates[n].total for n in names)
    each = ", ".join(f"{n} {estimates[n].total / GB:.1f}" for n in names)
    model = f"{config.model} --preset {config.preset}" if config.preset else config.model
    what = (f"run_pi of {model} ({policies} polic{'y' if policies == 1 else 'ies'}, --seq-len {config.seq_len}) "
            f"on this host ({each} GB)")
    ways = ("a smaller --material-window, fewer parties, a smaller --seq-len, the processes on several hosts, "
            "a bigger machine")
    facts = check_fits(on_host, what, ways, config.memory_check)
    return {"estimate": {n: e.as_json() for n, e in estimates.items()}, "host_ranks": host_ranks,
            "host_estimate_bytes": int(on_host), **facts}


def revealed_references(config: PiConfig, parties: int, loaded, plans: dict, revealed: dict, say) -> dict:
    """--benchmark-reveal: the float and emulated references on the client's revealed ids (the float model
    loaded again where ``set_up`` released it for the run: the same checkpoint, or the same seed)."""
    from ..frontend.models import load_model
    from ..pipeline import one_hot, vocab_size

    ids = revealed["ids"]
    model = loaded.model if loaded.model is not None else load_model(config.model, config.preset).model
    say("emulating the plans on the revealed input (exact, and with the protocol's truncation model)")
    return references(model, plans, ids, {"tokens": one_hot(ids[None], vocab_size(model))}, config.truncation, parties)


def set_up(config: PiConfig, parties: int, say, host_ranks: list[int]) -> tuple[dict, object, object, dict]:
    """Rank 0's set-up: the memory check (before anything is built; a refusal ends every rank), the model, the
    plans (made, from the plan cache, or ``--plan``'s) and, where vanilla runs, the captured graph; returns
    (plans, captured, loaded, memory)."""
    from ..frontend.capture import capture
    from ..frontend.models import load_model

    t = time.perf_counter()
    memory = check_memory(config, parties, host_ranks)
    say(f"memory checked ({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    loaded = load_model(config.model, config.preset)  # the weights (and, under --benchmark-reveal, the references)
    say(f"model loaded ({time.perf_counter() - t:.1f} s)")
    if config.plan_files:
        plans, converted = read_plans(config, loaded, parties, say), None
    else:
        plans, converted = make_plans(config, loaded, parties, say)  # converted None: every plan from the cache
    captured = converted.captured if converted else capture(loaded.model, config.seq_len) if config.vanilla else None
    if config.vanilla:  # an op vanilla cannot run: refused now, not after every other policy's pass
        from ..crypten.vanilla import check_supported

        check_supported(captured)
    if not config.vanilla and loaded.generated is None:  # the plans hold the weights: the float model waits on disk
        loaded.model = None  # (or its seed) until --benchmark-reveal's references (``revealed_references``)
    return plans, captured, loaded, memory


def runner_settings(config: PiConfig) -> dict:
    """What the request sequence of a plan depends on besides the plan and the parties."""
    return {"truncation": config.truncation, "fuse": config.fuse, "batch": config.batch}


def dealer_traces(config: PiConfig, parties: int, docs: dict, say) -> tuple[dict, dict]:
    """(policy -> key, policy -> request sequence) of the plans' dealer requests (``plan_cache.trace_key``), the
    sequences found in the cache: every party then deals them without the untimed recording pass. None
    with ``--no-plan-cache``."""
    from ..plan_cache import read_trace, trace_key

    if not config.plan_cache:
        return {}, {}
    t = time.perf_counter()
    keys = {policy: trace_key(doc, parties, runner_settings(config)) for policy, doc in docs.items()}
    found = {policy: trace for policy, key in keys.items() if (trace := read_trace(key)) is not None}
    if found:
        say(f"dealer requests of {', '.join(found)}: from cache, no untimed pass ({time.perf_counter() - t:.2f} s)")
    return keys, found


def store_trace(keys: dict, policy: str, trace: list) -> None:
    """A recorded request sequence, kept in the cache for the next run (only the owner holds ``keys``)."""
    if policy in keys:
        from ..plan_cache import write_trace

        write_trace(keys[policy], trace)
