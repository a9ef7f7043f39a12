"""Capture -> lower -> place -> emulate on real models."""
from __future__ import annotations

import pytest
import torch

from truncbridge.backends import RingExecutor, run_float
from truncbridge.core.errors import UserError
from truncbridge.frontend.calibrate import calibrate
from truncbridge.frontend.capture import capture
from truncbridge.frontend.lower import lower
from truncbridge.pipeline import build_plan, convert, emulate, one_hot, plan_config, tokenize_windows


def test_ir_float_follows_the_float_model(random_converted):
    """The IR with recipes (no rounding) stays close to the HF model's own logits."""
    c = random_converted
    ids = torch.randint(0, 1024, (1, c.captured.seq_len), generator=torch.Generator().manual_seed(1))
    want = c.loaded.model(ids).logits.double()
    got = run_float(c.program, {"tokens": one_hot(ids, 1024)})[0]
    assert (got - want).abs().max() < 1e-3


def test_public_structure_is_folded(random_converted):
    """Rotary tables and the causal mask are public: no IR node computes them."""
    ops = {n.op for n in random_converted.program.nodes}
    assert ops <= {"input", "weight", "add", "neg", "mul", "matmul", "mul_public", "add_public", "sum", "pow2",
                   "move", "output"}
    inputs = [n for n in random_converted.program.nodes if n.op == "input"]
    assert [(n.attrs["name"], n.attrs["integer"]) for n in inputs] == [("tokens", True)]


def test_eager_truncates_every_product_back_to_frac_bits(random_converted):
    plan = build_plan(random_converted, plan_config("eager"))
    nodes = plan.program.nodes
    users = plan.program.users()
    products = [n for n in nodes if n.op in ("mul", "matmul", "mul_public") and n.scale > 16]
    for n in products:
        (user,) = users[n.id]
        assert nodes[user].op == "trunc" and nodes[user].scale == 16
    truncs = [n for n in nodes if n.op == "trunc"]
    assert all(nodes[t.inputs[0]] in products for t in truncs)
    assert plan.counts()["truncations"] == len(products) > 0


@pytest.mark.slow  # the whole default model
def test_default_model_emulates_exactly_within_bounds(default_converted):
    c = default_converted
    plan = build_plan(c, plan_config("eager"))
    windows = tokenize_windows(c.loaded.tokenizer, c.loaded.heldout_text, 32, 3)
    result = emulate(c.loaded.model, plan, windows)
    assert result.bound_violations == 0
    assert result.metrics["top1_agreement"] >= 0.97
    assert abs(result.metrics["ppl_emulated"] / result.metrics["ppl_float"] - 1) <= 0.02
    # the emulator is deterministic: same inputs, same bits
    ex = RingExecutor(plan)
    inputs = {"tokens": one_hot(windows[0][None], c.vocab)}
    a, _ = ex.run(inputs)
    b, _ = ex.run(inputs)
    assert torch.equal(a[0], b[0])


@pytest.mark.slow  # the whole default model (shared with the test above)
def test_frac_bits_must_fit_the_field(default_converted):
    with pytest.raises(UserError, match="frac bits"):
        build_plan(default_converted, plan_config("eager", field_bits=16, frac_bits=16))


class _CumsumLM(torch.nn.Module):
    """A toy causal LM whose forward uses an op the lowering has no rule for (cumsum)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.config = type("C", (), {"max_position_embeddings": 16})()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, use_cache=False):
        return (torch.cumsum(self.embed(input_ids), dim=1),)


def test_unknown_aten_op_is_named():
    model = _CumsumLM().eval()
    captured = capture(model, 4)
    ranges = calibrate(captured, [torch.randint(0, 10, (1, 4))])
    with pytest.raises(UserError, match=r"no lowering for ATen op aten\.cumsum\.default"):
        lower(captured, ranges, 16)


@pytest.mark.slow  # three placements and emulations of the second trained model
def test_the_trained_gpt2_emulates_like_float_under_every_policy():
    """The second shipped trained model (GPT-2: LayerNorm, tanh GeLU, learned positions): top-1 >= 0.99
    and perplexity within 2 % of float at Z_2^64 under eager, lazy and optimal, within its bounds."""
    from truncbridge.frontend.models import load_model

    loaded = load_model("default-gpt2")
    converted = convert(loaded, 64, 16)
    windows = tokenize_windows(loaded.tokenizer, loaded.heldout_text, 64, 4)
    for policy in ("eager", "lazy", "optimal"):
        result = emulate(loaded.model, build_plan(converted, plan_config(policy, time_limit_s=20)), windows)
        assert result.bound_violations == 0, policy
        assert result.metrics["top1_agreement"] >= 0.99, policy
        assert abs(result.metrics["ppl_emulated"] / result.metrics["ppl_float"] - 1) <= 0.02, policy
