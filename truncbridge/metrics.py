"""Accuracy of emulated outputs against the float model, per position over windows of text:
logits of causal LMs, last hidden states of encoders."""
from __future__ import annotations

import math

import torch


def compare_logits(float_logits: torch.Tensor, emu_logits: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """Logits (positions, vocab) of both models and the token ids they were run on.

    top1_agreement: share of positions where both models predict the same next token; top1_flips those
    where they do not, and flip_margin_max the largest float margin such a flip overturned (the float
    logit of the float's top token less that of the emulation's): a near tie where it is within the logit
    error; kl_mean: mean KL(p_float || p_emulated) in nats; perplexities are of ids[1:] given the prefix.
    """
    f, e = float_logits.double(), emu_logits.double()
    logp_f, logp_e = f.log_softmax(-1), e.log_softmax(-1)
    targets = ids[1:]
    top_f, top_e = f.argmax(-1), e.argmax(-1)
    flipped = top_f != top_e
    margins = (f.gather(-1, top_f[:, None]) - f.gather(-1, top_e[:, None]))[:, 0][flipped]
    return {
        "top1_agreement": (~flipped).double().mean().item(),
        "top1_flips": int(flipped.sum()),
        "flip_margin_max": margins.max().item() if len(margins) else 0.0,
        "kl_mean": (logp_f.exp() * (logp_f - logp_e)).sum(-1).mean().item(),
        "max_abs_logit_error": (f - e).abs().max().item(),
        "ppl_float": exp_or_inf(-logp_f[:-1].gather(-1, targets[:, None]).mean().item()),
        "ppl_emulated": exp_or_inf(-logp_e[:-1].gather(-1, targets[:, None]).mean().item()),
    }


def exp_or_inf(x: float) -> float:
    """e^x, or inf where it overflows a float: a sampled truncation failure can make logits huge,
    and its perplexity is then infinite, not a traceback."""
    return math.exp(x) if x < 709.0 else math.inf


def compare_hidden(float_hidden: torch.Tensor, emu_hidden: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> dict[str, float]:
    """Hidden states (positions, width) of an encoder: cosine_mean is the mean over positions of
    the cosine similarity of the float and emulated vectors; cosine_pooled that of the sentence
    embeddings, the way an encoder is used (``mean_pooled``)."""
    f, e = float_hidden.double(), emu_hidden.double()
    pooled = [mean_pooled(h, attention_mask) for h in (f, e)]
    return {
        "cosine_mean": torch.nn.functional.cosine_similarity(f, e, dim=-1).mean().item(),
        "cosine_pooled": torch.nn.functional.cosine_similarity(*pooled, dim=0).item(),
        "max_abs_error": (f - e).abs().max().item(),
    }


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The sentence embedding of sentence-transformers' mean pooling: the attention-mask-weighted mean of
    the last hidden state (positions, width) over positions (no mask: every position, an unpadded window)."""
    weights = torch.ones(hidden.shape[0], dtype=hidden.dtype) if attention_mask is None else attention_mask.to(hidden.dtype)
    return (weights[:, None] * hidden).sum(0) / weights.sum().clamp(min=1e-9)
