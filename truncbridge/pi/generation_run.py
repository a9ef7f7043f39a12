"""One policy's private generation on the shares (``pi/generation.py`` sets it up): the loop of
``crypten/generation.py`` — the prefill and each step, the KV cache kept as shares, the client alone
picking tokens — with run_pi's hooks around each step: audited, on the emulated network, measured."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from ..backends.crypten.roles import CLIENT
from ..crypten.generation import CachedRunners, Hooks
from ..crypten.generation import generate as generate_on_shares
from ..memory import peak_rss_bytes
from . import mpi
from .results import RunMeasurement


@dataclass
class GenerationPass:
    """One party's measurements of one timed generation: the whole pass (offline, weights) and each step."""

    total: RunMeasurement
    steps: list[RunMeasurement] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the generated tokens: at the client only
    step_s: list[float] = field(default_factory=list)  # what the client saw per step


def step_runners(policy: str, setup, config, vocab: int) -> CachedRunners:
    """The runner of every cache length of one policy: the owner's plans, or vanilla CrypTen's graphs."""
    from ..crypten.vanilla import VanillaRunner

    if policy == "vanilla":
        runners = {c: VanillaRunner(g, rsqrt_scale=config.vanilla_rsqrt_scale) for c, g in setup.captured.items()}
        return CachedRunners(runners, vocab, vanilla=True)
    return CachedRunners.of_plans(setup.plans[policy], vocab, config.truncation, config.fuse, config.batch)


class MeasuredSteps(Hooks):
    """run_pi's hooks: each step audited and on the emulated network, its wall, rounds and bytes measured;
    the client's stop bit over MPI (kind ``control``, which the audit allows from the client only)."""

    def __init__(self, party, runners: CachedRunners, network: bool, control, out: GenerationPass):
        self.party, self.runners, self.network, self.control, self.out = party, runners, network, control, out
        self.wall = 0.0

    @contextmanager
    def step(self, cached: int):
        self.party.reset_stats()
        t = time.perf_counter()
        with self.party.audited(), self.party.on_network(self.network):
            yield
        self.wall = time.perf_counter() - t

    def revealing(self, elements: int):
        return self.party.revealing_output(elements=elements)

    def stepped(self, cached: int, picked: int | None) -> None:
        s = self.party.stats()
        self.out.steps.append(RunMeasurement(wall_s=self.wall, rounds=s["rounds"], bytes=s["bytes"], comm_s=s["comm_s"],
                                             offline_s=0.0, offline_bytes=0, weights_rounds=0, weights_bytes=0,
                                             dealt_requests=0, online_dealer_requests=0,
                                             truncations_executed=self.runners.truncations(cached),
                                             peak_rss_bytes=peak_rss_bytes()))
        if picked is not None:
            self.out.ids.append(picked)
            self.out.step_s.append(self.wall)

    def go_on(self, client_says: bool, client: int = CLIENT) -> bool:
        return mpi.bcast(self.control, client_says, "control", root=client)


def generate(party, steps: CachedRunners, prompt, sampler, eos: int | None, control=None,
             network: bool = False) -> GenerationPass:
    """Prepare every runner, then the prefill and the steps, each measured; the client picks each token. With
    ``eos``, after each step the client tells the others over ``control`` (MPI, the computing parties) whether to go on."""
    party.reset_stats()
    with party.audited(before_input=True):
        steps.prepare()
    weights, _ = party.stats(), party.provider.ready_for_pass()
    party.crypten.communicator.get().barrier()
    out = GenerationPass(total=None)
    t0 = time.perf_counter()
    generate_on_shares(steps, prompt, sampler, eos, MeasuredSteps(party, steps, network, control, out))
    wall = time.perf_counter() - t0
    out.total = RunMeasurement(wall_s=wall, rounds=sum(m.rounds for m in out.steps), bytes=sum(m.bytes for m in out.steps),
                               comm_s=sum(m.comm_s for m in out.steps), offline_s=0.0, offline_bytes=0,
                               weights_rounds=weights["rounds"], weights_bytes=weights["bytes"], dealt_requests=0,
                               online_dealer_requests=0, truncations_executed=sum(m.truncations_executed for m in out.steps),
                               peak_rss_bytes=peak_rss_bytes(), late_expansion_s=party.provider.late["seconds"])
    return out


def record(party, steps: CachedRunners, prompt, sampler_factory, eos, control) -> list:
    """An untimed generation with the dealer answering on demand; returns its request sequence."""
    with party.provider.recording_requests() as trace:
        generate(party, steps, prompt, sampler_factory(), eos, control)
    return trace


def timed(party, steps: CachedRunners, trace: list, prompt, sampler_factory, eos, control,
          network: bool = False) -> GenerationPass:
    """Deal the whole generation's material (offline), then the timed generation."""
    provider = party.provider
    provider.reset_offline()
    provider.deal(trace)
    offline = dict(provider.offline)
    party.settle("dealt")  # party 0 may deal for longer than a receive waits
    measured = generate(party, steps, prompt, sampler_factory(), eos, control, network)
    measured.total = replace(measured.total, offline_s=offline["seconds"], offline_bytes=offline["bytes"],
                             dealt_requests=offline["requests"], online_dealer_requests=provider.online_requests)
    return measured
