"""run_pi's generation flags (``--generate T`` and the client's sampling), parsed with the others in
``options.py`` and checked alike on every rank."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..core.errors import UserError


@dataclass(frozen=True)
class GenerationOptions:
    """--generate T: the client's prompt in, T tokens out (``pi/generation.py``)."""

    tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    seed: int = 0  # the client's own sampling seed (read on its rank only)
    eos: bool = False  # stop at the tokenizer's end-of-sequence token

    def sampler(self):
        """A fresh sampler: every pass (untimed, timed) picks the same tokens from the same logits."""
        from ..generation.sampling import Sampler

        return Sampler(self.temperature, self.top_k, self.seed)


def add_generation_arguments(p) -> None:
    g = p.add_argument_group("generation (--generate T)")
    g.add_argument("--generate", type=int, metavar="T", default=None,
                   help="generate T tokens after the client's prompt (its length is public, its content the client's): "
                        "a prefill and T-1 steps on a secret-shared KV cache; --seq-len is then the default prompt's length")
    g.add_argument("--prompt-file", dest="text", metavar="FILE", help="the client's prompt, a UTF-8 file (as --text)")
    g.add_argument("--temperature", type=float, default=0.0, help="the client samples at this temperature (default 0: greedy)")
    g.add_argument("--top-k", type=int, default=0, help="the client samples from its k most likely tokens (default 0: all)")
    g.add_argument("--seed", type=int, default=0, help="the client's sampling seed (default 0)")
    g.add_argument("--eos", action="store_true", help="stop at the tokenizer's end-of-sequence token (the number of "
                   "steps is then public: the client tells the others after each step whether to go on)")


def generation_options(args: argparse.Namespace) -> GenerationOptions | None:
    """The checked generation options, or None without --generate (its flags then refused)."""
    if args.generate is None:
        given = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--seed", args.seed),
                                ("--eos", args.eos)) if v]
        if given:
            raise UserError(f"{', '.join(given)} applies to --generate T only")
        return None
    if args.generate < 1:
        raise UserError(f"--generate must be at least 1 token, got {args.generate}")
    if args.plan:
        raise UserError("--generate plans its prefill and steps itself: --plan files are for one forward pass")
    if args.repeat != 1:
        raise UserError("--generate runs each policy once: its steps are the repetitions (--repeat is for one pass)")
    options = GenerationOptions(args.generate, args.temperature, args.top_k, args.seed, args.eos)
    options.sampler()  # an unknown sampling setting: refused here, on every rank alike
    return options
