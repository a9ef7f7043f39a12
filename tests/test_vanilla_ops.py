"""Vanilla CrypTen (the baseline) runs the families' own ops on secret data — LayerNorm, which CrypTen 0.4.1
lacks, split and ReLU — and a graph with an op it has no rule for is refused by name before any pass
(GPT-2-small under run_pi once failed at its first LayerNorm after minutes of the other policies' passes)."""
from __future__ import annotations

import pytest
from test_run_pi import run_json, starts_processes

from truncbridge.core.errors import UserError
from truncbridge.crypten import vanilla
from truncbridge.frontend.capture import capture
from truncbridge.frontend.models import load_model


def graph(model: str):
    return capture(load_model(model).model, 8)


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "phi3"])  # LayerNorm and split; ReLU; a fused MLP's split
def test_vanilla_has_a_rule_for_every_op_a_family_runs_on_secret_data(model_type):
    vanilla.check_supported(graph(f"random:{model_type}"))


def test_an_op_without_a_rule_is_refused_by_name(monkeypatch):
    rules = vanilla._rules
    monkeypatch.setattr(vanilla, "_rules", lambda rsqrt: {k: v for k, v in rules(rsqrt).items()
                                                          if k != vanilla.aten.native_layer_norm.default})
    with pytest.raises(UserError, match=r"no rule for ATen op aten.native_layer_norm.default on secret data "
                                        r"\(node native_layer_norm, in transformer.h.0.ln_1 .*leave vanilla out"):
        vanilla.check_supported(graph("random:gpt2"))


@starts_processes
def test_vanilla_runs_a_trained_gpt2_as_the_float_model_does(tmp_path):
    """The shipped trained GPT-2 (LayerNorm, GELU, a fused qkv split) under vanilla CrypTen, 2 parties and a
    dealer: the client's logits keep the float model's top-1 everywhere and stay within 0.1 of its logits
    (CrypTen's approximations: GELU by a sigmoid, inv_sqrt with the hand-made rescaling by 4: 0.040 off here).
    Negative control: a LayerNorm without its centring was 0.175 off."""
    result, _ = run_json(tmp_path, 3, "--model", "default-gpt2", "--seq-len", "16", "--policy", "vanilla",
                         "--vanilla-rsqrt-scale", "4", "--benchmark-reveal")
    row = result["rows"][0]
    assert row["top1_agreement_vs_float"] == 1.0 and row["max_abs_diff_vs_float"] < 0.1, row
