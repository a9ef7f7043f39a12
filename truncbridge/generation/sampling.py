"""How the client picks its next token from the logits it alone learns: greedy (the default), or
sampled at a temperature from the top k, with the client's own seed. The same code picks for the
emulator and for run_pi's client, so both generate the same tokens from the same logits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.errors import UserError


@dataclass
class Sampler:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: every token
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise UserError(f"--temperature must be a finite number >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: every token), got {self.top_k}")
        if self.top_k and not self.temperature:
            raise UserError("--top-k samples: it needs --temperature above 0 (0 is greedy)")
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from one position's logits (vocab,)."""
        if self.greedy:
            return int(logits.argmax())
        scaled = logits.double() / self.temperature
        if self.top_k:
            kept = scaled.topk(min(self.top_k, scaled.numel()))
            probs = torch.softmax(kept.values, -1)
            return int(kept.indices[torch.multinomial(probs, 1, generator=self.generator)])
        return int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=self.generator))

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        return f"sampled at temperature {self.temperature:g}" + (f" from the top {self.top_k}" if self.top_k else "") + \
            f" (seed {self.seed})"
