"""Generation in the ring: the prefill and step plans run exactly (``backends.RingExecutor``), the KV
cache kept as field integers from plan to plan, each token picked from the emulated logits
(``sampling.pick``) — against the float model's own generation with a KV cache.

Per step it reports: the token, whether it is the float model's greedy token at that step, the largest
logit error against the float model *on the same prefix* (the emulator's own tokens, so a step's error
is its own and not an earlier divergence's), the margin of the float top-2 (how near a tie the step
was), bound violations and the plan's counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..backends import RingExecutor
from ..core.types import Plan
from ..frontend.capture_cached import cache_argument, float_cache, returned_cache
from .convert import PREFILL, cache_lengths, one_hot_tokens
from .sampling import Sampler


@dataclass
class Generated:
    """A generation's tokens and per-step logits (the prompt's last position first)."""

    ids: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # float64 (vocab,) per generated token
    seconds: list[float] = field(default_factory=list)
    violations: list[int] = field(default_factory=list)


@torch.no_grad()
def float_generation(model: torch.nn.Module, prompt: torch.Tensor, tokens: int, sampler: Sampler | None = None,
                     eos: int | None = None) -> Generated:
    """The float model's generation with a KV cache, as transformers' ``generate`` runs it (greedy by default)."""
    sampler = sampler or Sampler()
    out, ids, cache = Generated(), prompt[None], None
    for _ in range(tokens):
        t = time.perf_counter()
        result = model(ids, use_cache=True, **({cache_argument(model): cache} if cache is not None else {}))
        cache = returned_cache(result)
        logits = result.logits[0, -1].double()
        out.seconds.append(time.perf_counter() - t)
        out.logits.append(logits)
        out.ids.append(sampler.pick(logits))
        if out.ids[-1] == eos:
            break
        ids = torch.tensor([[out.ids[-1]]])
    return out


def emulated_generation(plans: dict[int, Plan], prompt: torch.Tensor, tokens: int, vocab: int,
                        sampler: Sampler | None = None, eos: int | None = None, check: bool = True,
                        device: str = "cpu", progress=None) -> Generated:
    """Run the prefill and step plans in the ring: the cache stays field integers (at frac_bits)."""
    sampler = sampler or Sampler()
    out, cache, ids = Generated(), {}, prompt[None]
    for cached in cache_lengths(len(prompt), tokens):
        plan = plans[cached]
        executor = RingExecutor(plan, device)
        t = time.perf_counter()
        outs, violations = executor.run({**one_hot_tokens(ids, vocab), **cache}, check=check)
        logits = executor.decode_outputs(outs[:1])[0][0, -1]
        cache = _appended(cache, outs[1:], plan)
        out.seconds.append(time.perf_counter() - t)
        out.violations.append(violations)
        out.logits.append(logits)
        out.ids.append(sampler.pick(logits))
        if progress is not None:
            progress()
        if out.ids[-1] == eos or len(out.ids) == tokens:
            break
        ids = torch.tensor([[out.ids[-1]]])
    return out


def _appended(cache: dict[str, torch.Tensor], new: list[torch.Tensor], plan: Plan) -> dict[str, torch.Tensor]:
    """The cache with the new positions' keys and values appended (field integers, on the sequence axis)."""
    from .convert import state_outputs

    names = list(state_outputs(plan.program))
    return {name: torch.cat([cache[name], v], dim=2) if name in cache else v for name, v in zip(names, new, strict=True)}


@torch.no_grad()
def teacher_forced_logits(model: torch.nn.Module, prompt: torch.Tensor, generated: list[int]) -> list[torch.Tensor]:
    """The float model's logits at each generation step, on the given tokens (one pass with a cache)."""
    ids = torch.cat([prompt, torch.tensor(generated[:-1], dtype=torch.long)])[None]
    logits = model(ids).logits[0].double()
    return [logits[len(prompt) - 1 + k] for k in range(len(generated))]


def compare_steps(model: torch.nn.Module, prompt: torch.Tensor, emulated: Generated, reference: Generated,
                  plans: dict[int, Plan]) -> list[dict]:
    """Per generated token: agreement with the float generation, the logit error on the same prefix, the float
    top-2 margin there, violations, and the step plan's counts."""
    floats = teacher_forced_logits(model, prompt, emulated.ids)
    rows = []
    for k, (cached, token) in enumerate(zip(cache_lengths(len(prompt), len(emulated.ids)), emulated.ids)):
        top2 = floats[k].topk(2).values
        rows.append({"step": k, "cached": cached, "token": token,
                     "float_token": reference.ids[k] if k < len(reference.ids) else None,
                     "agrees": k < len(reference.ids) and token == reference.ids[k],
                     "max_abs_logit_error": (emulated.logits[k] - floats[k]).abs().max().item(),
                     "float_top2_margin": (top2[0] - top2[1]).item(),
                     "bound_violations": emulated.violations[k], "seconds": emulated.seconds[k],
                     "counts": plans[cached].counts()})
    return rows


def check_cache_matches(model: torch.nn.Module, prompt: torch.Tensor, plans: dict[int, Plan], vocab: int) -> float:
    """The prefill's cache against the float model's keys and values: the largest absolute difference."""
    plan = plans[PREFILL]
    executor = RingExecutor(plan)
    outs, _ = executor.run(one_hot_tokens(prompt[None], vocab))
    decoded = executor.decode_outputs(outs)[1:]
    floats = float_cache(model, prompt[None])
    return max((d - floats[name].double()).abs().max().item() for name, d in zip(floats, decoded, strict=True))
