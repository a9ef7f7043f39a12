"""Accuracy metrics stay defined when a sampled truncation failure makes the emulated logits huge."""
from __future__ import annotations

import math

import pytest
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


def test_a_flip_reports_the_float_margin_it_overturned():
    ids = torch.tensor([0, 1, 2])
    f = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9], [5.0, 0.0, 4.0]])
    e = f.clone()
    e[1, 2] += 0.2  # position 1: 2.0 vs 1.9, a near tie, overturned by a 0.2 error
    e[2, 2] += 1.5  # position 2: a margin of 1.0 overturned
    m = compare_logits(f, e, ids)
    assert m["top1_flips"] == 2 and math.isclose(m["top1_agreement"], 1 / 3)
    assert math.isclose(m["flip_margin_max"], 1.0)
    assert compare_logits(f, f, ids)["top1_flips"] == 0 and compare_logits(f, f, ids)["flip_margin_max"] == 0.0


def test_encoder_cosines_per_token_and_of_the_mean_pooled_sentence_embedding():
    from truncbridge.metrics import compare_hidden, mean_pooled

    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = f.flip(0)  # each token's vector swapped: per-token cosine 0, the same sentence embedding
    m = compare_hidden(f, e)
    assert m["cosine_mean"] == 0.0 and math.isclose(m["cosine_pooled"], 1.0)
    e = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # pooled (0.5, 0.5) vs (0.5, -0.5): orthogonal
    assert math.isclose(compare_hidden(f, e)["cosine_pooled"], 0.0, abs_tol=1e-12)
    # sentence-transformers' pooling: sum(mask * h) / sum(mask), the masked position left out
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]])
    assert mean_pooled(h, torch.tensor([1, 1, 0])).tolist() == [2.0, 3.0]
    assert torch.allclose(mean_pooled(h.double()), torch.tensor([104 / 3, -94 / 3], dtype=torch.float64))


@pytest.mark.slow  # builds and converts random:bert (~10 s)
def test_compare_on_an_encoder_reports_its_cosines(tmp_path, capsys):
    import json

    from truncbridge.cli import main

    out = tmp_path / "rows.json"
    assert main(["compare", "--model", "random:bert", "--seq-len", "8", "--windows", "1", "--field-bits", "64",
                 "--policies", "lazy", "--json", str(out)]) == 0
    row, = json.loads(out.read_text())
    assert row["metrics"]["cosine_pooled"] >= 0.999 and row["bound_violations"] == 0
    assert "pooled cosine" in capsys.readouterr().out
