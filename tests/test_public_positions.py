"""Models that number positions from the token ids (RoBERTa-style: the cumsum of ids != padding_idx) convert
without reading the secret ids: capture passes the positions of an unpadded window as a public input
(frontend/capture.py, padding_positions). The plan must still agree with the float model computing its own
positions from the ids."""
from __future__ import annotations

import pytest
import torch

from truncbridge.core.errors import UserError
from truncbridge.frontend import capture as capture_module
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import build_plan, convert, emulate, plan_config

SEQ = 12


@pytest.fixture(scope="module")
def mpnet():
    return load_model("random:mpnet")


def test_mpnet_plan_matches_the_float_model_that_numbers_its_own_positions(mpnet):
    assert capture_module.padding_positions(mpnet.model) == 1  # MPNetEmbeddings.padding_idx
    converted = convert(mpnet, SEQ, 16)
    positions = [v for v in converted.captured.publics.values()
                 if isinstance(v, torch.Tensor) and v.dtype == torch.long and v.shape == (1, SEQ)]
    assert len(positions) == 1 and positions[0].tolist() == [list(range(2, 2 + SEQ))]
    plan = build_plan(converted, plan_config("lazy"))
    windows = torch.randint(2, mpnet.tokenizer.vocab_size, (2, SEQ))  # no padding token (id 1)
    result = emulate(mpnet.model, plan, windows)  # the float model computes its positions from the ids
    assert result.bound_violations == 0 and result.above_bound == 0
    assert result.metrics["cosine_mean"] >= 0.999


def test_a_model_without_id_positions_gets_none():
    assert capture_module.padding_positions(load_model("random:bert").model) is None


def test_positions_that_do_not_reproduce_the_model_are_refused(mpnet, monkeypatch):
    monkeypatch.setattr(capture_module, "unpadded_positions",
                        lambda padding_idx, batch, seq_len: torch.arange(seq_len).expand(batch, seq_len))
    with pytest.raises(UserError, match="do not reproduce its output"):
        capture_module.capture(mpnet.model, SEQ)
