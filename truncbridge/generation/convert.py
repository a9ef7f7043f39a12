"""Generation's programs: the prefill on the prompt, and one decode step per cache length.

A generation of ``tokens`` tokens after a ``prompt_len``-token prompt runs:

* the **prefill** (cache length 0): the model on the prompt, giving the first token's logits and the
  prompt's keys and values;
* a **step** at every cache length ``C = prompt_len .. prompt_len + tokens - 2``: the model on one
  new token after ``C`` cached positions, giving the next logits and the new token's keys and values.

Each is captured with ``frontend.capture_cached`` at its own fixed shape (the lengths are public),
calibrated on the bundled text read as a generation would read it (the cache of a window's first
``C`` tokens, then its next token), and lowered. The cache's bounds (``settle_cache_bounds``) are
one number per cache tensor for the whole generation: at least every plan's bound of the keys and
values it appends — the prefill's and every step's — so that each step may read any of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..analysis import static_bounds
from ..core.errors import UserError
from ..core.ir import Program
from ..core.types import Plan, PlanConfig
from ..frontend.calibrate import calibrate
from ..frontend.capture_cached import cache_names, capture_cached, check_generates, float_cache
from ..frontend.lower import lower
from ..frontend.models import LoadedModel
from ..pipeline import CALIBRATION_WINDOWS, Converted, build_plan, calibration_windows

PREFILL = 0  # the cache length the prefill starts from


def cache_lengths(prompt_len: int, tokens: int) -> list[int]:
    """Cache length of every plan of a generation, in the order they run: the prefill (0), then each step."""
    return [PREFILL, *range(prompt_len, prompt_len + tokens - 1)]


def check_generation(loaded: LoadedModel, prompt_len: int, tokens: int) -> None:
    check_generates(loaded.model)
    if prompt_len < 1:
        raise UserError("the prompt is empty: generation needs at least one prompt token")
    if tokens < 1:
        raise UserError(f"the number of tokens to generate must be at least 1, got {tokens}")
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit is not None and prompt_len + tokens > limit:
        raise UserError(f"a prompt of {prompt_len} tokens and {tokens} generated tokens exceed the model's context "
                        f"of {limit} positions")


@dataclass
class GenerationPrograms:
    """The lowered programs of one generation, by cache length (``cache_lengths``)."""

    loaded: LoadedModel
    prompt_len: int
    tokens: int
    converted: dict[int, Converted] = field(default_factory=dict)
    cache_bounds: dict[str, float] = field(default_factory=dict)  # settle_cache_bounds

    def new_tokens(self, cached: int) -> int:
        return self.prompt_len if cached == PREFILL else 1


def convert_generation(loaded: LoadedModel, prompt_len: int, tokens: int, frac_bits: int, relu: str = "comparison",
                       progress=None) -> GenerationPrograms:
    """Capture, calibrate and lower the prefill and every step; then settle the cache's bounds."""
    check_generation(loaded, prompt_len, tokens)
    out = GenerationPrograms(loaded, prompt_len, tokens)
    windows = calibration_windows(loaded.tokenizer, prompt_len + tokens, CALIBRATION_WINDOWS)
    caches = [float_cache(loaded.model, w[None, :-1]) for w in windows]  # each window read as a generation reads it
    for cached in cache_lengths(prompt_len, tokens):
        t = time.perf_counter()
        n = out.new_tokens(cached)
        captured = capture_cached(loaded.model, n, cached)
        batches = [w[None, cached: cached + n] for w in windows]
        states = [{k: v[:, :, :cached] for k, v in c.items()} for c in caches]
        ranges = calibrate(captured, batches, states)
        program = lower(captured, ranges, frac_bits, relu)
        out.converted[cached] = Converted(loaded, captured, program, {"capture+lower": time.perf_counter() - t})
        if progress is not None:
            progress()
    out.cache_bounds = settle_cache_bounds([c.program for c in out.converted.values()])
    return out


def state_outputs(program: Program) -> dict[str, int]:
    """Cache tensor name -> the output node that appends to it."""
    nodes = [o for o in program.outputs if program[o].attrs.get("state")]
    return dict(zip(cache_names(len(nodes) // 2), nodes, strict=True))


def declare_cache_bounds(program: Program, bounds: dict[str, float]) -> None:
    """Give every cache input of ``program`` its settled bound (the one assumption its analysis starts from)."""
    for name, nid in program.inputs.items():
        if name in bounds:
            facts = program[nid].facts
            facts.bound, facts.bound_source = bounds[name], "input"


def settle_cache_bounds(programs: list[Program], rounds: int | None = None) -> dict[str, float]:
    """One bound per cache tensor, at least the static bound of every output that appends to it, with
    every program's cache inputs declared at those bounds: a fixed point, reached by raising the
    bounds until no output exceeds them (each layer's new keys and values depend only on the
    earlier layers' caches, so it takes at most a pass per layer)."""
    names = [n for p in programs for n in state_outputs(p)]
    bounds = dict.fromkeys(names, 0.0)
    for _ in range(rounds or len(names) + 2):
        seen = dict(bounds)
        for program in programs:
            declare_cache_bounds(program, bounds)
            if any(program[nid].facts.bound == 0.0 for name, nid in program.inputs.items() if name in bounds):
                continue  # a step reads a cache no plan has bounded yet: the next round
            node_bounds = static_bounds(program)
            for name, nid in state_outputs(program).items():
                seen[name] = max(seen[name], node_bounds[nid].value)
        if seen == bounds:
            return bounds
        bounds = seen
    raise UserError("the KV cache's static bounds do not settle: each step's keys or values grow the bound of the "
                    "next (a model whose cache is not normalised)")


def build_generation_plans(programs: GenerationPrograms, config: PlanConfig, progress=None) -> dict[int, Plan]:
    """A plan per cache length under ``config`` (static bounds: the cache's settled ones)."""
    if config.bounds != "static":
        raise UserError("generation plans use static bounds: the cache's bounds are settled over every step "
                        "(--bounds calibrated is not supported for generation)")
    plans = {}
    for cached, converted in programs.converted.items():
        declare_cache_bounds(converted.program, programs.cache_bounds)
        plan = build_plan(converted, config)
        plan.model["cached"] = cached
        plans[cached] = plan
        if progress is not None:
            progress()
    return plans


def one_hot_tokens(ids: torch.Tensor, vocab: int) -> dict[str, torch.Tensor]:
    return {"tokens": torch.nn.functional.one_hot(ids, vocab).to(torch.float64)}
