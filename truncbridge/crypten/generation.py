"""Private generation in a CrypTen program of your own: the prefill and one step per cache length on
shares, the KV cache kept as shares (never opened), the client alone seeing each step's logits and
picking the next token, which it secret-shares for the next step as a one-hot row.

    import truncbridge.crypten as tbc
    from truncbridge.generation.convert import build_generation_plans, convert_generation

    tbc.init()                                  # every process; the dealer never returns from it
    plans = build_generation_plans(convert_generation(loaded, prompt_len, tokens, 16), config)  # every rank
    generation = tbc.PrivateGeneration(plans, vocab)
    ids = generation.generate(prompt_ids if rank == 1 else None)   # the client's new tokens; None elsewhere

Every computing party holds the same plans (rank 0's weights are the ones shared; the client's and the
helper's are not read). ``launch/run_pi.py --generate T`` runs the same loop with its measurements and
its receipt audit around each step (``pi/generation_run.py``: ``Hooks``).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..backends.crypten.roles import CLIENT
from ..core.types import Plan
from ..generation.convert import one_hot_tokens
from ..generation.sampling import Sampler


class CachedRunners:
    """The runner of every cache length of one policy (a ``PlanRunner`` per plan, or vanilla CrypTen's
    ``VanillaRunner`` per captured graph), and how each takes its token and its cache."""

    def __init__(self, runners: dict, vocab: int, vanilla: bool = False, client: int = CLIENT):
        self.runners, self.vocab, self.vanilla, self.client = runners, vocab, vanilla, client
        self.lengths = list(runners)  # 0 (the prefill), then the steps' cache lengths

    @classmethod
    def of_plans(cls, plans: dict[int, Plan], vocab: int, truncation: str = "exact", fuse: bool = True,
                 batch: bool = True, client: int = CLIENT) -> CachedRunners:
        from ..backends.crypten.runner import PlanRunner

        return cls({c: PlanRunner(p, client=client, truncation=truncation, fuse=fuse, batch=batch)
                    for c, p in plans.items()}, vocab, client=client)

    def prepare(self) -> None:
        """The weights' shares and halves of every plan: input-independent, before the online phase."""
        for runner in self.runners.values():
            getattr(runner, "prepare", lambda: None)()

    def run(self, cached: int, ids: torch.Tensor | None, cache: dict) -> list:
        runner = self.runners[cached]
        if self.vanilla:
            return runner.run(ids, state=cache)
        return runner.run(None if ids is None else one_hot_tokens(ids, self.vocab), shared=cache)

    def open_logits(self, cached: int, outs: list) -> torch.Tensor | None:
        """The last position's logits, opened to the client only (None elsewhere)."""
        opened = self.runners[cached].open_outputs(outs[:1], dst=self.client)
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


class Hooks:
    """What a caller wraps around the steps; these defaults do nothing but the one thing every caller
    needs, the client's stop bit (``go_on``). run_pi's measure and audit (``pi/generation_run.py``)."""

    def preparing(self):
        """Around ``runners.prepare()``: the weights' phase, before any input is shared."""
        return nullcontext()

    def step(self, cached: int):
        """Around one step: its run, the opening of its logits, the cache's append."""
        return nullcontext()

    def revealing(self, elements: int):
        """Around the opening of the logits to the client (``elements`` of them)."""
        return nullcontext()

    def stepped(self, cached: int, picked: int | None) -> None:
        """After a step (``picked``: the client's next token; None elsewhere)."""

    def go_on(self, client_says: bool, client: int = CLIENT) -> bool:
        """The client's public bit, sent to every computing party: go on (no end-of-sequence token yet)."""
        import crypten

        flag = torch.tensor([int(client_says)])
        return bool(crypten.communicator.get().broadcast(flag, client).item())


def generate(runners: CachedRunners, prompt: torch.Tensor | None, sampler: Sampler, eos: int | None = None,
             hooks: Hooks | None = None, client: int = CLIENT) -> list[int] | None:
    """The prefill, then a step per cache length until the plans run out or the client picks ``eos``. Call on
    every computing party, after ``runners.prepare()``; ``prompt`` (1-D token ids) on the client only. Returns
    the client's tokens there, None elsewhere."""
    import crypten

    hooks = hooks or Hooks()
    is_client = crypten.communicator.get().get_rank() == client
    ids, cache, picked = (prompt[None] if is_client else None), {}, []
    for cached in runners.lengths:
        with hooks.step(cached):
            outs = runners.run(cached, ids, cache)
            with hooks.revealing(outs[0].share.numel()):  # the logits: a cache tensor would be flagged
                logits = runners.open_logits(cached, outs)
            cache = runners.appended(cache, outs[1:])
        if is_client:
            picked.append(sampler.pick(logits))
            ids = torch.tensor([[picked[-1]]])
        hooks.stepped(cached, picked[-1] if is_client else None)
        if eos is not None and not hooks.go_on(is_client and picked[-1] != eos, client):
            break
    return picked if is_client else None


class PrivateGeneration:
    """Generation plans (``generation.convert.build_generation_plans``: the prefill at the prompt's length,
    a step per cache length) run on shares in a CrypTen program (see the module docstring)."""

    def __init__(self, plans: dict[int, Plan], vocab: int, truncation: str = "exact", client: int = CLIENT):
        self.runners = CachedRunners.of_plans(plans, vocab, truncation, client=client)
        self.client = client

    def generate(self, prompt: torch.Tensor | None, sampler: Sampler | None = None, eos: int | None = None,
                 hooks: Hooks | None = None) -> list[int] | None:
        """The client's new tokens (one per plan, fewer with ``eos``: on the other parties any value, the
        client's bit decides); None on the other parties. ``sampler``: the client's (greedy by default)."""
        hooks = hooks or Hooks()
        with hooks.preparing():
            self.runners.prepare()
        return generate(self.runners, prompt, sampler or Sampler(), eos, hooks, client=self.client)
