"""Generation plans from the owner's plan cache (``plan_cache``): each plan of a generation is stored under
its own key — the model, the prompt length, the number of tokens, its cache length and the config — so a
second run of the same generation converts nothing. A miss converts the whole generation once (the
cache's bounds tie every plan to every other) and places each plan."""
from __future__ import annotations

import time

from ..core.types import Plan, PlanConfig
from ..frontend.models import LoadedModel
from ..plan_cache import PlanMaker
from .convert import GenerationPrograms, cache_lengths, convert_generation


def generation_plans(loaded: LoadedModel, prompt_len: int, tokens: int, config: PlanConfig, use_cache: bool = True,
                     say=None, relu: str = "comparison", made: list | None = None) -> dict[int, Plan]:
    """Cache length -> plan under ``config``, read from the plan cache where it holds them. ``made``: a list that
    keeps the conversion for the next call (another policy's plans of the same generation)."""
    say = say or (lambda text: None)
    made: list[GenerationPrograms] = [] if made is None else made

    def converted(cached: int):
        if not made:
            t = time.perf_counter()
            say(f"converting the prefill ({prompt_len} tokens) and {tokens - 1} steps")
            made.append(convert_generation(loaded, prompt_len, tokens, config.frac_bits, relu))
            say(f"converted in {time.perf_counter() - t:.1f} s")
        return made[0].converted[cached]

    plans, weights_hash, hits = {}, "", 0
    for cached in cache_lengths(prompt_len, tokens):
        maker = PlanMaker(loaded, f"generation {prompt_len}+{tokens} at cache {cached}", config.frac_bits, relu,
                          use_cache=use_cache)
        maker._weights_hash = weights_hash  # hashed once for the whole generation
        maker.convert = lambda cached=cached: converted(cached)
        plans[cached] = maker.plan(config)
        plans[cached].model["cached"] = cached
        weights_hash, hits = maker._weights_hash, hits + len(maker.hits)
    if hits:
        say(f"{hits} of {len(plans)} {config.policy} plans from the plan cache")
    return plans
