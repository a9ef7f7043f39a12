"""Accuracy metrics stay defined when a sampled truncation failure makes the emulated logits huge."""
from __future__ import annotations

import math

import torch

from truncbridge.metrics import compare_logits


def test_a_failed_truncation_gives_an_infinite_perplexity_not_a_traceback():
    ids = torch.tensor([1, 2, 3, 0])
    f = torch.zeros(4, 5)
    e = f.clone()
    e[:, 4] = 2.0**47  # a wrapped value: the failure CrypTen's truncation has once in a while
    m = compare_logits(f, e, ids)
    assert m["ppl_emulated"] == math.inf and m["top1_agreement"] == 0.0
    assert math.isclose(m["ppl_float"], 5.0)  # uniform over 5 tokens
    e[:, 4] = 30.0  # merely bad: finite
    assert math.isfinite(compare_logits(f, e, ids)["ppl_emulated"])
