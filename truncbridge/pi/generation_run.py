"""One policy's private generation on the shares (``pi/generation.py`` sets it up): the prefill and each
step, the KV cache kept as shares, the client alone picking tokens; measured per step."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from ..backends.crypten.roles import CLIENT
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


class StepRunners:
    """The runner of every cache length of one policy, and how each takes its inputs and its cache."""

    def __init__(self, policy: str, setup, config, vocab: int):
        from ..backends.crypten.runner import PlanRunner
        from ..crypten.vanilla import VanillaRunner

        self.vanilla, self.vocab = policy == "vanilla", vocab
        if self.vanilla:
            self.runners = {c: VanillaRunner(g, rsqrt_scale=config.vanilla_rsqrt_scale) for c, g in setup.captured.items()}
        else:
            self.runners = {c: PlanRunner(p, truncation=config.truncation, fuse=config.fuse, batch=config.batch)
                            for c, p in setup.plans[policy].items()}
        self.lengths = list(self.runners)

    def prepare(self) -> None:
        """The weights' shares and halves of every plan: input-independent, before the online phase."""
        for runner in self.runners.values():
            getattr(runner, "prepare", lambda: None)()

    def run(self, cached: int, ids: torch.Tensor | None, cache: dict) -> list:
        runner = self.runners[cached]
        if self.vanilla:
            return runner.run(ids, state=cache)
        tokens = None if ids is None else {"tokens": torch.nn.functional.one_hot(ids, self.vocab).to(torch.float64)}
        return runner.run(tokens, shared=cache)

    def open_logits(self, cached: int, outs: list) -> torch.Tensor | None:
        """The last position's logits, opened to the client only (None elsewhere)."""
        opened = self.runners[cached].open_outputs(outs[:1], dst=CLIENT)
        return None if opened is None else opened[0][0, -1]

    def appended(self, cache: dict, new: list) -> dict:
        """The cache's shares with the new positions' keys and values appended: local, nothing opened."""
        from ..frontend.capture_cached import cache_names

        out = {}
        for name, value in zip(cache_names(len(new) // 2), new, strict=True):
            out[name] = value if name not in cache else self._cat(cache[name], value)
        return out

    def _cat(self, old, new):
        if self.vanilla:
            import crypten

            return crypten.cat([old, new], dim=2)
        return type(old).from_shares(torch.cat([old.share, new.share], dim=2), precision=0)

    def truncations(self, cached: int) -> int:
        return getattr(self.runners[cached], "truncations_executed", 0)


def generate(party, steps: StepRunners, prompt: torch.Tensor | None, sampler, eos: int | None, control=None,
             network: bool = False) -> GenerationPass:
    """Prepare every runner, then the prefill and the steps, each measured; the client picks each token. With
    ``eos``, after each step the client tells the others over ``control`` (MPI, the computing parties) whether to go on."""
    party.reset_stats()
    with party.audited():
        steps.prepare()
    weights = party.stats()
    party.crypten.communicator.get().barrier()
    out = GenerationPass(total=None)
    is_client = party.rank == CLIENT
    ids, cache, t0 = (prompt[None] if is_client else None), {}, time.perf_counter()
    for cached in steps.lengths:
        party.reset_stats()
        t = time.perf_counter()
        with party.audited(), party.on_network(network):
            outs = steps.run(cached, ids, cache)
            with party.revealing_output(elements=outs[0].share.numel()):  # the logits: a cache tensor would be flagged
                logits = steps.open_logits(cached, outs)
        cache = steps.appended(cache, outs[1:])
        wall = time.perf_counter() - t
        s = party.stats()
        out.steps.append(RunMeasurement(wall_s=wall, rounds=s["rounds"], bytes=s["bytes"], comm_s=s["comm_s"],
                                        offline_s=0.0, offline_bytes=0, weights_rounds=0, weights_bytes=0,
                                        dealt_requests=0, online_dealer_requests=0,
                                        truncations_executed=steps.truncations(cached), peak_rss_bytes=peak_rss_bytes()))
        if is_client:
            out.ids.append(sampler.pick(logits))
            out.step_s.append(wall)
            ids = torch.tensor([[out.ids[-1]]])
        if eos is not None and not mpi.bcast(control, is_client and out.ids[-1] != eos, "control", root=CLIENT):
            break
    wall = time.perf_counter() - t0
    out.total = RunMeasurement(wall_s=wall, rounds=sum(m.rounds for m in out.steps), bytes=sum(m.bytes for m in out.steps),
                               comm_s=sum(m.comm_s for m in out.steps), offline_s=0.0, offline_bytes=0,
                               weights_rounds=weights["rounds"], weights_bytes=weights["bytes"], dealt_requests=0,
                               online_dealer_requests=0, truncations_executed=sum(m.truncations_executed for m in out.steps),
                               peak_rss_bytes=peak_rss_bytes())
    return out


def record(party, steps: StepRunners, prompt, sampler_factory, eos, control) -> list:
    """An untimed generation with the dealer answering on demand; returns its request sequence."""
    with party.provider.recording_requests() as trace:
        generate(party, steps, prompt, sampler_factory(), eos, control)
    return trace


def timed(party, steps: StepRunners, trace: list, prompt, sampler_factory, eos, control,
          network: bool = False) -> GenerationPass:
    """Deal the whole generation's material (offline), then the timed generation."""
    provider = party.provider
    provider.reset_offline()
    provider.deal(trace)
    offline = dict(provider.offline)
    measured = generate(party, steps, prompt, sampler_factory(), eos, control, network)
    measured.total = replace(measured.total, offline_s=offline["seconds"], offline_bytes=offline["bytes"],
                             dealt_requests=offline["requests"], online_dealer_requests=provider.online_requests)
    return measured
