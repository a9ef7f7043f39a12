"""A private-inference session under mpirun: every policy run by real CrypTen parties, measured.

Roles: rank 0 owns the model (weights, plans), rank 1 is the client (token ids, read on its own
rank: ``client.py``; the only party the logits are revealed to), rank 2 helps in 3PC, and the last
rank is the dealer (``dealer.py``): it receives only sizes. ``--dealer owner-insecure`` drops the
dealer process and lets the owner deal (a benchmark setting: the owner then sees the client's data).

Per policy: one untimed pass records the request sequence (the dealer answers on demand); then
each timed repetition first deals everything (offline: time and bytes measured) and then runs
the online phase alone. MPI is the launcher's side channel and carries no secret of the
protocol: the rendezvous address, the *redacted* plans for the client and helper
(``core.planfile.redact_plan_json``), statistics (timings, rounds, bytes), failure notices. The
client keeps its logits: it prints its result and writes it (``--client-output``) on its own rank.
Only ``--benchmark-reveal`` (INSECURE, a benchmark mode) sends the client's ids and logits to rank 0
after the timed runs, for the emulator and the float model (``owner.py``); ``--audit`` (INSECURE too) checks
every MPI receipt. Only the owner reads weights. ``--generate T``: ``generation.py`` sets up and computes.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..backends.crypten.dealing import run_dealer
from ..backends.crypten.roles import CLIENT, OWNER, role
from ..core.errors import UserError
from ..crypten.vanilla import CountDivisions
from ..memory import peak_rss_bytes
from . import generation, mpi
from .audit import audit_summary
from .client import ClientInput, client_input
from .client import report as client_report
from .options import PiConfig, computing_parties, parse_args
from .owner import cpu_sharing, dealer_traces, predictions, process_name, revealed_references, set_up, store_trace
from .party import Party
from .progress import Say, launch_age_s, with_progress
from .results import RunMeasurement, add_predictions, format_table, insecure_modes, policy_row, ratios, startup

if TYPE_CHECKING:
    from ..core.types import Plan
    from ..frontend.capture import Captured
    from ..frontend.models import LoadedModel


@dataclass
class Setup:
    """What a computing party holds once set up (``_setup``): the owner its full plans and the
    weights, the others the redacted plans; the client its input."""

    policies: tuple[str, ...]  # in the order they run: the plans', then vanilla if asked
    plans: dict[str, Plan] = field(default_factory=dict)  # redacted but at the owner
    captured: Captured | None = None  # the captured graph, where vanilla runs
    loaded: LoadedModel | None = None  # the owner's model (weights); the client's architecture and tokenizer
    given: ClientInput | None = None  # the client's input
    ids: torch.Tensor | None = None  # the client's token ids, (1, seq_len)
    inputs: dict[str, torch.Tensor] | None = None  # the client's one-hot tokens: the plans' input
    memory: dict | None = None  # the owner's: every process's estimate and what its host had (``owner.check_memory``)
    traces: dict = field(default_factory=dict)  # policy -> its dealer requests, from the owner's cache (no recording pass)
    trace_keys: dict = field(default_factory=dict)  # the owner's: policy -> where a recorded sequence is cached


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        parties = computing_parties(size, config.dealer)
    except UserError as exc:  # the same on every rank: rank 0 speaks for all
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ["WORLD_SIZE"] = str(parties)  # CrypTen's world: the computing parties (role() names the dealer)
    who = role(rank, parties)
    computing = comm.Split(0 if rank < parties else MPI.UNDEFINED, rank)
    say = Say() if rank == 0 else (lambda msg: None)
    host_ranks = comm.Split_type(MPI.COMM_TYPE_SHARED).allgather(rank)  # the processes sharing this host's memory
    set_up, compute = (generation.set_up, generation.compute) if config.generation else (_setup, _compute)
    try:
        setup = set_up(comm, config, parties, say, host_ranks) if rank < parties else None
        address = mpi.rendezvous(comm)
        mpi.setup_done()  # from here on, MPI carries statistics only (checked by --audit)
    except mpi.PeerFailed as exc:
        return mpi.peer_failed(who, exc)
    except Exception as exc:  # noqa: BLE001 - any set-up failure: say it here, tell the others
        return mpi.fail_setup(comm, who, exc)
    torch.set_num_threads(config.threads or mpi.threads_per_party(comm))
    os.environ.update({"RANK": str(rank), "RENDEZVOUS": address, "DISTRIBUTED_BACKEND": "gloo"})
    if rank == parties:
        core = run_dealer(config.audit, linger_s=config.silence_s, startup_s=config.timeout_s)
        mpi.gather(comm, {"peak_rss_bytes": peak_rss_bytes(),
                          **({"masks": core.masks, "mpi": mpi.RECEIPTS} if config.audit else {})}, "audit")
        return 0
    return compute(comm, computing, config, parties, setup, say)


def _setup(comm, config: PiConfig, parties: int, say, host_ranks: list[int] = (0,)) -> Setup:
    """Rank 0 checks the memory (``owner.check_memory``), loads the model, plans (or reads ``--plan``), and sends the
    redacted plans; the others build what they need from the architecture alone, and the client reads its
    input (``client.py``)."""
    from ..core.planfile import plan_from_json, plan_to_json
    from ..frontend.capture import capture
    from ..frontend.models import load_architecture
    from ..pipeline import one_hot, vocab_size

    rank = comm.Get_rank()
    if rank == OWNER:
        plans, captured, loaded, memory = set_up(config, parties, say, host_ranks)
        docs = mpi.bcast(comm, {k: plan_to_json(p, redacted=True) for k, p in plans.items()}, "plans", ranks=range(parties))
        keys, traces = dealer_traces(config, parties, docs, say)
        mpi.bcast(comm, traces, "traces", ranks=range(parties))
        return Setup(_run_order(plans, config), plans, captured, loaded, memory=memory, traces=traces, trace_keys=keys)
    mine = Setup(())  # built while the owner plans: the client's input, and the graph where vanilla runs
    if rank == CLIENT or config.vanilla:
        with torch.device("cpu" if config.vanilla else "meta"):  # the client's input needs the shapes, not weights
            loaded = load_architecture(config.model, config.preset)
        mine.captured = capture(loaded.model, config.seq_len) if config.vanilla else None
        if rank == CLIENT:  # the client's input: read, tokenized and fitted to --seq-len here only
            mine.loaded = loaded
            mine.given = client_input(loaded, config.seq_len, config.client.prompt, config.client.text)
            mine.ids = mine.given.ids[None]
            mine.inputs = {"tokens": one_hot(mine.ids, vocab_size(loaded.model))}
    docs = mpi.bcast(comm, None, "plans", ranks=range(parties))
    plans = {k: plan_from_json(d, f"redacted {k} plan") for k, d in docs.items()}
    if not all(p.redacted for p in plans.values()):  # never hold the owner's bounds
        raise RuntimeError("received an unredacted plan: the owner must send planfile.redact_plan_json's version")
    traces = mpi.bcast(comm, None, "traces", ranks=range(parties))
    return replace(mine, policies=_run_order(docs, config), plans=plans, traces=traces)


def _run_order(plans: dict, config: PiConfig) -> tuple[str, ...]:
    """The policies this session runs: without --plan, as --policy lists them; with --plan, the
    plan files' (as the owner sent them), then vanilla if --policy names it."""
    if not config.plan_files:
        return config.policies
    return (*plans, *(("vanilla",) if config.vanilla else ()))


def _runner(policy: str, setup: Setup, config: PiConfig):
    from ..backends.crypten.runner import PlanRunner
    from ..crypten.vanilla import VanillaRunner

    if policy == "vanilla":
        return VanillaRunner(setup.captured, rsqrt_scale=config.vanilla_rsqrt_scale)
    return PlanRunner(setup.plans[policy], truncation=config.truncation, fuse=config.fuse, batch=config.batch)


def record_requests(party: Party, runner, inputs) -> list:
    """An untimed pass with the dealer answering on demand; returns its request sequence."""
    with party.provider.recording_requests() as trace:
        with party.audited(before_input=True):  # the weights' halves, as run_once opens them
            getattr(runner, "prepare", lambda: None)()
        with party.audited():
            outs = runner.run(inputs)
            with party.revealing_output():
                runner.open_outputs(outs, dst=1)
    return trace


def run_once(party: Party, runner, trace: list, inputs, network: bool = False) -> RunMeasurement:
    """Deal everything (offline), then one timed online pass — on the emulated network if
    ``network`` — and return this party's measurements."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    provider = party.provider
    provider.reset_offline()
    provider.deal(trace)
    party.settle("dealt")  # party 0 may deal for longer than a receive waits
    offline = dict(provider.offline)
    party.reset_stats()
    with party.audited(before_input=True):  # input-independent: the weights' halves of their products
        getattr(runner, "prepare", lambda: None)()
    weights, _ = party.stats(), provider.ready_for_pass()
    party.crypten.communicator.get().barrier()
    party.reset_stats()
    started = launch_age_s() if party.rank == OWNER else None
    with party.audited(), party.on_network(network), CountDivisions(ArithmeticSharedTensor) as divisions:
        outs = runner.run(inputs)
        with party.revealing_output():
            opened = runner.open_outputs(outs, dst=1)
    online = party.stats()  # its seconds: the online wall, from the barrier to the revealed output
    executed = runner.truncations_executed if hasattr(runner, "truncations_executed") else divisions.count
    return RunMeasurement(wall_s=online["seconds"], rounds=online["rounds"], bytes=online["bytes"], comm_s=online["comm_s"],
                          offline_s=offline["seconds"], offline_bytes=offline["bytes"],
                          weights_rounds=weights["rounds"], weights_bytes=weights["bytes"],
                          dealt_requests=offline["requests"], online_dealer_requests=provider.online_requests,
                          truncations_executed=executed, peak_rss_bytes=peak_rss_bytes(), started_s=started,
                          late_expansion_s=provider.late["seconds"], weights_s=weights["seconds"],
                          logits=None if opened is None else opened[0][0])


def statistics(mine: RunMeasurement, keeps_memory: bool = False) -> dict:
    """What a party sends rank 0 after a timed run: its measurements, never the output (the client's logits
    stay with the client); not its peak RSS where it ``keeps_memory`` (``keeps_its_memory``). ``--audit`` checks them."""
    return {**mine.statistics(), "peak_rss_bytes": None} if keeps_memory else mine.statistics()


def keeps_its_memory(rank: int, config: PiConfig) -> bool:
    """The client's peak RSS stays on its rank unless --benchmark-reveal: reading its input (any --text) grew it."""
    return rank == CLIENT and not config.benchmark_reveal


def _compute(comm, computing, config: PiConfig, parties: int, setup: Setup, say) -> int:
    rank = comm.Get_rank()
    try:
        party = Party(timeout_s=config.timeout_s, silence_s=config.silence_s, audit=config.audit, dealer=config.dealer,
                      network=config.network, material_window=config.material_window_mb << 20).start()
        runners = {policy: with_progress(_runner(policy, setup, config), policy, say) for policy in setup.policies}
    except Exception as exc:  # noqa: BLE001
        return mpi.fail_setup(comm, role(rank), exc)
    print(f"truncbridge: {role(rank)} pid {os.getpid()} started", file=sys.stderr, flush=True)
    inputs = {p: setup.ids if p == "vanilla" else setup.inputs for p in setup.policies}
    runs: dict[str, list] = {policy: [] for policy in setup.policies}
    outputs: dict[str, list] = {policy: [] for policy in setup.policies}  # the client's logits, per run
    try:
        traces = dict(setup.traces)  # the owner's cached sequences: no recording pass for those
        for policy in [p for p in setup.policies if p not in traces]:
            say(f"recording {policy}'s dealer requests (untimed pass)")
            traces[policy] = record_requests(party, runners[policy], inputs[policy])
            store_trace(setup.trace_keys, policy, traces[policy])  # the owner keeps it for the next run
        for repetition in range(config.repeat):  # interleaved, so load drifts hit every policy alike
            for policy in setup.policies:
                say(f"running {policy} with {parties} parties ({repetition + 1}/{config.repeat})")
                mine = run_once(party, runners[policy], traces[policy], inputs[policy])
                if config.network is not None:  # the same pass on loopback first, then on the network
                    on_network = run_once(party, runners[policy], traces[policy], inputs[policy], network=True)
                    mine = replace(on_network, loopback_s=mine.wall_s)
                if rank == CLIENT:
                    outputs[policy].append(mine.logits)
                received = mpi.gather(computing, statistics(mine, keeps_its_memory(rank, config)), "stats")
                runs[policy].append(None if received is None else [RunMeasurement.from_statistics(m) for m in received])
                if rank == 0:
                    say(f"{policy}: online {max(m.wall_s for m in runs[policy][-1]):.2f} s")
    except Exception as exc:  # noqa: BLE001 - a lost or stalled peer: name it, end every party
        party.fail(exc)
    log = party.log.export() if config.audit else None
    masks = party.provider.core.masks if party.provider.core is not None else None
    party.finish()
    revealed, status = None, 0
    if rank == CLIENT:
        status = _client_result(comm, config, setup, outputs)
    elif rank == OWNER and config.benchmark_reveal:
        revealed = mpi.wait_for(comm, CLIENT, "reveal")
    pooled = mpi.gather(comm, {"peak_rss_bytes": None if keeps_its_memory(rank, config) else peak_rss_bytes(),
                               **({"log": log, "masks": masks, "mpi": mpi.RECEIPTS} if config.audit else {})}, "audit")
    if rank == OWNER:
        _report(config, parties, runs, setup, pooled, revealed, say)
    return status


def _client_result(comm, config: PiConfig, setup: Setup, outputs: dict) -> int:
    """The client prints and writes its result; under --benchmark-reveal (INSECURE) it sends its
    ids and logits to the owner. Its exit status: 2 if --client-output cannot be written."""
    given, loaded, status = setup.given, setup.loaded, 0
    try:
        client_report(loaded.name, config.seq_len, given, {p: xs[-1] for p, xs in outputs.items()}, loaded.tokenizer,
                      config.client.output, config.client.output_logits,
                      lm=loaded.model.get_output_embeddings() is not None)
    except OSError as exc:  # the others still finish; the client's status says it
        print(f"error: cannot write --client-output {config.client.output}: {exc.strerror}", file=sys.stderr, flush=True)
        status = 2
    if config.benchmark_reveal:  # INSECURE: the client's ids and logits to the owner, for accuracy
        mpi.send(comm, {"ids": given.ids, "logits": outputs}, dest=OWNER)
    return status


def _report(config: PiConfig, parties: int, runs: dict, setup: Setup, pooled: list, revealed: dict | None, say) -> None:
    refs = None if revealed is None else revealed_references(config, parties, setup.loaded, setup.plans, revealed, say)
    rows, sharing = [], cpu_sharing(setup.memory["host_ranks"], parties, torch.get_num_threads())
    for policy in setup.policies:
        row = policy_row(policy, parties, runs[policy], refs, revealed["logits"][policy] if revealed else None)
        if plan := setup.plans.get(policy):
            add_predictions(row, plan, predictions(plan, parties, config.truncation, config.fuse, config.network,
                                                   config.batch, sharing))
        rows.append(row)
    bounds = sorted({p.config.bounds for p in setup.plans.values()}) if config.plan_files else [config.bounds]
    result = {"parties": parties, "model": config.model, "preset": config.preset, "seq_len": config.seq_len,
              "truncation": config.truncation, "network": config.network, "fuse": config.fuse, "batch": config.batch,
              "bounds": ",".join(bounds), "repeat": config.repeat, "dealer": config.dealer,
              "benchmark_reveal": config.benchmark_reveal, "threads_per_party": torch.get_num_threads(),
              "plan_files": list(config.plan_files), "rows": rows, "ratios": ratios(rows), **startup(rows, say)}
    result["insecure"] = insecure_modes(result, config.audit)
    result["memory"] = {**setup.memory, "peak_rss_bytes": {process_name(rank, parties, config.dealer): p["peak_rss_bytes"]
                                                           for rank, p in enumerate(pooled)}}
    if config.audit:
        result["audit"] = audit_summary(pooled, parties, config.dealer, reveal=config.benchmark_reveal)
    print(format_table(result))
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
