"""run_pi ``--generate T``: private generation — the client's prompt in, tokens out — with a KV cache that
stays secret-shared among the computing parties from the prefill to the last step.

Set-up: the client (rank 1) reads and tokenizes its prompt on its own rank and announces its *length*
(public, like ``--seq-len``: every shape depends on it); the owner makes the prefill and step plans for
that length and ``T`` (``generation.convert``, from its plan cache when made before) and sends their
redacted copies; where vanilla runs, every party captures the same graphs from the architecture.

Each policy runs one untimed generation (the dealer answering on demand; its requests recorded), then
the timed one: everything the whole generation needs is dealt first (offline), the weights' halves are
opened (input-independent), and the online phase runs the prefill and every step. At each step the
client alone learns the logits (its last position's), picks the next token (``generation.sampling``:
greedy, or sampled with its own seed) and secret-shares it as a one-hot row for the next step; the new
keys and values are appended to the cache's shares, never opened. With ``--eos`` the client tells the
others, after each step, whether to go on (one public bit over MPI: the number of steps is public).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from ..backends.crypten.roles import CLIENT, OWNER
from ..core.errors import UserError
from . import mpi
from .client import ClientInputError
from .options import PiConfig


@dataclass
class GenerationSetup:
    """What a computing party holds once set up for generation."""

    policies: tuple[str, ...]
    prompt_len: int
    plans: dict = field(default_factory=dict)  # policy -> cache length -> plan (redacted but at the owner)
    captured: dict | None = None  # cache length -> captured graph, where vanilla runs
    loaded: object = None  # the owner's model; the client's architecture and tokenizer
    prompt: torch.Tensor | None = None  # the client's prompt ids
    source: str = ""  # where the client's prompt came from
    eos: int | None = None  # the client's tokenizer's end-of-sequence id (--eos)
    memory: dict | None = None


def client_prompt(config: PiConfig, loaded) -> tuple[torch.Tensor, str]:
    """The client's prompt, read on its rank; an unusable one is the client's error (its reason stays there)."""
    from ..cli_generate import prompt_ids
    from ..generation.convert import check_generation

    try:
        ids, source = prompt_ids(loaded, config.client.prompt, config.client.text, config.seq_len)
        check_generation(loaded, len(ids), config.generation.tokens)
    except ClientInputError:
        raise
    except UserError as exc:
        raise ClientInputError(str(exc)) from None
    return ids, source


def set_up(comm, config: PiConfig, parties: int, say, host_ranks) -> GenerationSetup:
    from ..core.planfile import plan_from_json, plan_to_json
    from ..frontend.models import load_architecture

    rank = comm.Get_rank()
    if rank == OWNER:
        from .owner import check_memory

        memory = check_memory(config, parties, host_ranks)
    loaded, prompt, source = None, None, ""
    if rank == CLIENT:
        loaded = load_architecture(config.model, config.preset)
        prompt, source = client_prompt(config, loaded)
        eos = eos_id(loaded, config.generation.eos)
    length = mpi.bcast(comm, None if prompt is None else len(prompt), "length", root=CLIENT, ranks=range(parties))
    policies = config.policies
    if rank == OWNER:
        plans, loaded = owner_plans(config, parties, length, say)
        docs = {p: {c: plan_to_json(x, redacted=True) for c, x in by.items()} for p, by in plans.items()}
        mpi.bcast(comm, docs, "plans", ranks=range(parties))
        out = GenerationSetup(policies, length, plans, loaded=loaded, memory=memory)
    else:
        docs = mpi.bcast(comm, None, "plans", ranks=range(parties))
        plans = {p: {int(c): plan_from_json(d, f"redacted {p} plan") for c, d in by.items()} for p, by in docs.items()}
        if not all(x.redacted for by in plans.values() for x in by.values()):
            raise RuntimeError("received an unredacted plan: the owner must send planfile.redact_plan_json's version")
        out = GenerationSetup(policies, length, plans, loaded=loaded, prompt=prompt, source=source,
                              eos=eos if rank == CLIENT else None)
    if config.vanilla:
        out.captured = vanilla_graphs(config, out.loaded, length, config.generation.tokens)
        if rank == OWNER:  # an op vanilla cannot run: refused before any pass
            from ..crypten.vanilla import check_supported

            for graph in out.captured.values():
                check_supported(graph)
    return out


def eos_id(loaded, stop: bool) -> int | None:
    from ..cli_generate import eos_of

    try:
        return eos_of(loaded, stop)
    except UserError as exc:
        raise ClientInputError(str(exc)) from None


def plan_vocab(setup: GenerationSetup) -> int:
    """The vocabulary, from the shapes every party holds: a plan's one-hot input, or vanilla's graph (the
    embedding table is the weight its token ids index)."""
    for by_length in setup.plans.values():
        plan = next(iter(by_length.values()))
        return plan.program[plan.program.inputs["tokens"]].shape[-1]
    graph = next(iter(setup.captured.values()))
    embedding = next(n for n in graph.graph.nodes if n.target == torch.ops.aten.embedding.default)
    return embedding.args[0].meta["val"].shape[0]


def owner_plans(config: PiConfig, parties: int, prompt_len: int, say) -> tuple[dict, object]:
    """Policy -> cache length -> plan, made for this prompt length and T (or read from the plan cache)."""
    from ..frontend.models import load_model
    from ..generation.cache import generation_plans
    from ..pipeline import plan_config
    from .owner import protocol_profile, runnable

    loaded = load_model(config.model, config.preset)
    profile = protocol_profile(config.truncation, parties)
    plans, made = {}, []  # made: the conversion, once for every policy
    for policy in [p for p in ("eager", "lazy", "optimal") if p in config.policies]:
        headroom = 0 if policy == "eager" and config.truncation == "crypten" else None
        settings = plan_config(policy, field_bits=64, frac_bits=config.frac_bits, bounds=config.bounds, protocol=profile,
                               headroom_bits=headroom, time_limit_s=config.time_limit_s,
                               objective=config.network["name"] if config.network else "elements",
                               precision_tolerance_bits=config.precision_tolerance_bits)
        say(f"planning {policy}: a prefill of {prompt_len} tokens and {config.generation.tokens - 1} steps")
        plans[policy] = generation_plans(loaded, prompt_len, config.generation.tokens, settings, config.plan_cache, say,
                                         made=made)
        for cached, plan in plans[policy].items():
            runnable(plan, config.truncation, parties, f"the {policy} plan at cache length {cached}")
    return plans, loaded


def vanilla_graphs(config: PiConfig, loaded, prompt_len: int, tokens: int) -> dict:
    """Cache length -> the captured graph vanilla CrypTen walks (every party captures the architecture's)."""
    from ..frontend.capture_cached import capture_cached
    from ..frontend.models import load_architecture
    from ..generation.convert import PREFILL, cache_lengths

    model = (loaded or load_architecture(config.model, config.preset)).model
    return {c: capture_cached(model, prompt_len if c == PREFILL else 1, c) for c in cache_lengths(prompt_len, tokens)}


def compute(comm, computing, config: PiConfig, parties: int, setup: GenerationSetup, say) -> int:
    """Every policy's untimed and timed generation; the client's result on its rank, the table on rank 0."""
    import os

    from ..backends.crypten.roles import role
    from ..memory import peak_rss_bytes
    from .generation_run import record, step_runners, timed
    from .party import Party

    rank = comm.Get_rank()
    gen = config.generation
    try:
        party = Party(timeout_s=config.timeout_s, silence_s=config.silence_s, audit=config.audit, dealer=config.dealer,
                      network=config.network, material_window=config.material_window_mb << 20).start()
        vocab = plan_vocab(setup)
        runners = {policy: step_runners(policy, setup, config, vocab) for policy in setup.policies}
    except Exception as exc:  # noqa: BLE001
        return mpi.fail_setup(comm, role(rank), exc)
    print(f"truncbridge: {role(rank)} pid {os.getpid()} started", file=sys.stderr, flush=True)
    eos = (setup.eos if rank == CLIENT else -1) if gen.eos else None  # the others only follow the client's word
    prompt = setup.prompt if rank == CLIENT else None
    passes: dict = {}
    try:
        for policy in setup.policies:
            say(f"{policy}: untimed generation (recording the dealer's requests)")
            trace = record(party, runners[policy], prompt, gen.sampler, eos, computing)
            say(f"{policy}: timed generation with {parties} parties")
            mine = timed(party, runners[policy], trace, prompt, gen.sampler, eos, computing, config.network is not None)
            passes[policy] = mine
            keeps = rank == CLIENT and not config.benchmark_reveal  # its memory grew with its input: kept
            gathered = [mpi.gather(computing, {**m.statistics(), **({"peak_rss_bytes": None} if keeps else {})}, "stats")
                        for m in [mine.total, *mine.steps]]
            if rank == OWNER:
                passes[policy] = gathered
                say(f"{policy}: prefill {max(m['wall_s'] for m in gathered[1]):.2f} s, "
                    f"{len(gathered) - 2} steps")
    except Exception as exc:  # noqa: BLE001 - a lost or stalled peer: name it, end every party
        party.fail(exc)
    log = party.log.export() if config.audit else None
    masks = party.provider.core.masks if party.provider.core is not None else None
    party.finish()
    status, revealed = 0, None
    if rank == CLIENT:
        status = client_result(comm, config, setup, passes)
    elif rank == OWNER and config.benchmark_reveal:
        revealed = mpi.wait_for(comm, CLIENT, "reveal")
    pooled = mpi.gather(comm, {"peak_rss_bytes": None if rank == CLIENT and not config.benchmark_reveal else peak_rss_bytes(),
                               **({"log": log, "masks": masks, "mpi": mpi.RECEIPTS} if config.audit else {})}, "audit")
    if rank == OWNER:
        from .generation_report import report

        report(config, parties, setup, passes, pooled, revealed, say)
    return status


def client_result(comm, config: PiConfig, setup: GenerationSetup, passes: dict) -> int:
    """The client prints its generated text per policy and writes it (``--client-output``, on its own host)."""
    import json
    from pathlib import Path

    tokenizer = setup.loaded.tokenizer
    doc = {"party": "client", "model": config.model, "prompt_source": setup.source,
           "prompt_ids": setup.prompt.tolist(), "sampling": config.generation.sampler().describe(),
           "policies": {p: {"ids": m.ids, "text": tokenizer.decode(m.ids), "step_s": m.step_s} for p, m in passes.items()}}
    print(f"client: prompt of {len(setup.prompt)} tokens from {setup.source}")
    for policy, r in doc["policies"].items():
        print(f"client: {policy}: {r['text']!r} ({len(r['ids'])} tokens)", flush=True)
    status = 0
    if config.client.output:
        try:
            Path(config.client.output).write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            print(f"error: cannot write --client-output {config.client.output}: {exc.strerror}", file=sys.stderr, flush=True)
            status = 2
    if config.benchmark_reveal:  # INSECURE: the client's prompt and tokens to the owner, for accuracy
        mpi.send(comm, {"prompt": setup.prompt, "ids": {p: r["ids"] for p, r in doc["policies"].items()}}, dest=OWNER)
    return status
