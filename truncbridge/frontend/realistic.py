"""Real activation ranges on random weights (``--activations real``): the statistics of a trained LLM, without it.

Random-init weights keep every activation within a few units; trained LLMs do not, and plans must face what
they do. Two documented, deterministic changes to the random weights give a ``random:<model_type>`` model
(small or at a preset's shapes, whole or ``--fake-weights``) the two ranges that matter for a fixed-point plan:

1. **Massive activations** (Sun, Chen, Kolter, Liu 2024, "Massive Activations in Large Language Models",
   arXiv 2402.17762): in Llama-2-7B two fixed residual channels (1415 and 2533) carry values of about 2,000 —
   10^4 to 10^5 times the median — at the starting token and at the first "." or "\\n"; GPT-2 and OPT show the same.
   Here: the input-embedding rows of the tokens "." and "\\n" get +TARGET and -TARGET in two channels (1415 and 2533
   where the model is that wide, the same fractions of the width otherwise), divided by the family's embedding
   multiplier (Gemma's sqrt(hidden)). The residual stream carries them from the embedding on, through every layer,
   at every "." and "\\n" (a window here starts mid-text, with no start token, and weights cannot count, so every
   occurrence, not only the first: more positions than the paper's, the same magnitude). Where the embedding is
   tied to the LM head, it is untied (``untie``): a fresh random head, so the logits stay within a few units.
   Families whose residual stream is normalised before it can carry them are refused (bloom's embedding LayerNorm,
   BERT's post-LN blocks).
2. **Attention logits spread over tens**: Gemma 2 caps its pre-softmax attention logits at 50
   (``attn_logit_softcapping``, Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size"),
   a cap its training reaches; random init gives a standard deviation of about 0.03 at hidden 64 and 1.6 at 4096.
   The query and key projections are rescaled so that the logits' standard deviation is about ATTENTION_LOGIT_STD
   (10: over a 128-token window the largest |logit| lands near 50): entries of rms s with
   s^2 = std / (scaling * hidden * sqrt(head_dim)), since for unit-rms normalised inputs at two positions the logit
   q.k * scaling has standard deviation scaling * hidden * sqrt(head_dim) * s^2. Families with q/k norms (qwen3,
   gemma3) normalise q and k per head: their norm weights are set to sqrt(std / (scaling *
   sqrt(head_dim))) instead. Biases (zero at initialisation) are left.

Norms, values, MLPs and the head keep their random weights: the model still computes a sane function, now with
real ranges. ``tests/test_realistic_ranges.py`` measures both statistics on the float model of every family.
"""
from __future__ import annotations

import math

import torch

from ..core.errors import UserError

ACTIVATION_MODES = ("random", "real")
MASSIVE_ACTIVATION = 2000.0  # |residual| in the massive channels (Llama-2-7B: about 2,000; Sun et al. 2024, Fig. 1)
MASSIVE_CHANNELS_7B = (1415, 2533)  # Llama-2-7B's two channels, of 4096 (Sun et al. 2024, Fig. 1)
MASSIVE_TOKENS = (".", "\n")  # the delimiters that carry them (Sun et al.: the first "." or "\n")
ATTENTION_LOGIT_STD = 10.0  # standard deviation of pre-softmax attention logits: over a 128-token window the largest
# |logit| lands near 50, Gemma 2's cap (attn_logit_softcapping): "tens of units"

# families whose residual stream is normalised right after the embedding or after every block: it cannot carry them
REFUSED = {
    "bloom": "normalises its embeddings (word_embeddings_layernorm) before the residual stream",
    "bert": "normalises its residual stream after every block (post-LN)",
}
GEMMA_NORMS = ("gemma", "gemma2", "gemma3_text")  # RMSNorm scales by (1 + w), embeddings by sqrt(hidden)
EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


def check_activations(model_type: str, activations: str) -> None:
    if activations not in ACTIVATION_MODES:
        raise UserError(f"unknown --activations {activations!r}: choose from {', '.join(ACTIVATION_MODES)}")
    if activations == "real" and model_type in REFUSED:
        raise UserError(f"--activations real: {model_type} {REFUSED[model_type]}: it cannot carry massive activations "
                        "(docs/models.md, \"Real activation ranges\")")


def untie(config) -> None:
    """A tied head would read the massive rows back as logits of thousands: the head becomes its own random matrix."""
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False


class RealRanges:
    """The transformation, one parameter at a time (``__call__(name, value)``): what a whole model and the
    weights generated one by one (``fake_weights.GeneratedWeights``) share."""

    def __init__(self, config, massive_token_ids: list[int]):
        self.model_type = config.model_type
        check_activations(self.model_type, "real")
        self.hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden // self.heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or self.heads
        if self.model_type == "falcon" and getattr(config, "multi_query", False):
            self.kv_heads = 1
        self.scaling = (getattr(config, "query_pre_attn_scalar", None) or self.head_dim) ** -0.5
        self.embed_multiplier = math.sqrt(self.hidden) if self.model_type in GEMMA_NORMS else 1.0
        self.channels = massive_channels(self.hidden)
        self.token_ids = list(massive_token_ids)

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if name.endswith(EMBEDDINGS) and value.dim() == 2:
            return self.massive_rows(value)
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            return self.qk_norm(value)
        rows = self.qk_rows(name, value)
        if rows is not None:
            return self.spread_logits(value, rows, transposed=name.endswith("c_attn.weight"))
        return value

    def massive_rows(self, table: torch.Tensor) -> torch.Tensor:
        table = table.clone()
        target = MASSIVE_ACTIVATION / self.embed_multiplier
        for sign, channel in zip((1.0, -1.0), self.channels):
            table[self.token_ids, channel] = sign * target
        return table

    def qk_norm(self, weight: torch.Tensor) -> torch.Tensor:
        gain = math.sqrt(ATTENTION_LOGIT_STD / (self.scaling * math.sqrt(self.head_dim)))
        return torch.full_like(weight, gain - 1.0 if self.model_type in GEMMA_NORMS else gain)

    def spread_logits(self, weight: torch.Tensor, rows: list[torch.Tensor], transposed: bool) -> torch.Tensor:
        """Each of q's and k's rows (columns of GPT-2's Conv1D) rescaled to entries of rms s."""
        s = math.sqrt(ATTENTION_LOGIT_STD / (self.scaling * self.hidden * math.sqrt(self.head_dim)))
        weight = weight.clone()
        view = weight.t() if transposed else weight
        for index in rows:
            block = view[index]
            view[index] = block * (s / block.pow(2).mean().sqrt().clamp_min(1e-30))
        return weight

    def qk_rows(self, name: str, weight: torch.Tensor) -> list[torch.Tensor] | None:
        """The output rows of the query and of the key projection in this weight, or None (not one)."""
        if weight.dim() != 2 or self.model_type in ("qwen3", "gemma3_text"):  # q/k norms: set by qk_norm
            return None
        hd, q, kv = self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if name.endswith(("q_proj.weight", "k_proj.weight", "self.query.weight", "self.key.weight")):
            return [torch.arange(weight.shape[0])]
        if name.endswith("c_attn.weight"):  # GPT-2 Conv1D (in, 3 * hidden): q, k, v columns
            return [torch.arange(0, q), torch.arange(q, 2 * q)]
        if name.endswith("qkv_proj.weight"):  # phi3: q rows, k rows, v rows
            return [torch.arange(0, q), torch.arange(q, q + kv)]
        if name.endswith("query_key_value.weight"):
            if self.model_type == "gpt_neox":  # per head: q, k, v of head_dim each
                per_head = torch.arange(self.heads)[:, None] * 3 * hd
                return [(per_head + torch.arange(hd)).flatten(), (per_head + hd + torch.arange(hd)).flatten()]
            if self.model_type == "falcon" and self.kv_heads == 1:  # multi-query: all q heads, one k, one v
                return [torch.arange(0, q), torch.arange(q, q + hd)]
            raise UserError(f"--activations real: the fused query_key_value layout of {self.model_type} is not known here")
        return None


def massive_channels(hidden: int) -> tuple[int, int]:
    """Llama-2-7B's channels where the model is as wide, the same fractions of the width otherwise."""
    if hidden > max(MASSIVE_CHANNELS_7B):
        return MASSIVE_CHANNELS_7B
    return tuple(int(c * hidden / 4096) for c in MASSIVE_CHANNELS_7B)


def massive_token_ids(tokenizer) -> list[int]:
    """The ids of the single tokens "." and "\\n" in the tokenizer random models read text with."""
    ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for t in MASSIVE_TOKENS]
    return [i[0] for i in ids if len(i) == 1]


@torch.no_grad()
def apply(model: torch.nn.Module, transform: RealRanges) -> None:
    """The transformation on a whole model's parameters, in place."""
    for name, param in model.named_parameters():
        param.copy_(transform(name, param.detach()))
