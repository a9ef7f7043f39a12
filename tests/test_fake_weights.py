"""Full-size plans without the full model: parameters on meta, each weight generated when the
calibration pass reaches it and kept as statistics. On a small model the plan equals the one made
with every weight in memory; the statistics bound what the analysis reads from real tensors."""
from __future__ import annotations

import json

import pytest
import torch

from truncbridge.cli import main
from truncbridge.core.weight_stats import col_l1, max_abs, moved, row_col_l2, row_l1, spectral, stats_of
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import build_plan, convert, emulate, plan_config, tokenize_windows


@pytest.mark.slow  # plans of whole random models
@pytest.mark.parametrize("model_type", ["llama", "gemma"])
def test_a_plan_from_statistics_holds_for_the_weights_they_came_from(model_type):
    """The plan is made from statistics alone; put the very weights that were generated into a model
    and emulate it: every value within its bound, logits as the float model's."""
    fake = load_model(f"random:{model_type}", fake_weights=True)
    assert all(p.is_meta for p in fake.model.parameters())
    converted = convert(fake, 16, 16)
    assert fake.generated.generated >= sum(p.numel() for p in fake.model.parameters())
    plan = build_plan(converted, plan_config("lazy"))
    assert plan.model["hash"].startswith("generated:") and plan.counts()["truncations"] > 0
    assert any(w.is_meta for w in plan.program.weights.values())  # matrices known by statistics only

    real = load_model(f"random:{model_type}")
    weights = {name: fake.generated(name) for name in plan.program.weights}
    real.model.load_state_dict(weights, strict=False)
    plan.program.weights.update({k: v.double() for k, v in weights.items()})
    windows = tokenize_windows(real.tokenizer, real.heldout_text, 16, limit=3)
    result = emulate(real.model, plan, windows)
    assert result.bound_violations == 0 and result.metrics["max_abs_logit_error"] <= 0.01
    # random weights leave near-tied logits: the top-1 may flip only where the float model's top
    # two are closer than twice the largest logit error
    with torch.no_grad():
        top2 = torch.cat([real.model(w[None]).logits[0].topk(2, -1).values for w in windows])
    decided = (top2[:, 0] - top2[:, 1] > 2 * result.metrics["max_abs_logit_error"]).double().mean().item()
    assert result.metrics["top1_agreement"] >= decided > 0.9


def test_weight_statistics_bound_what_the_analysis_reads():
    w = torch.randn(300, 70, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    s = stats_of(w)
    assert max_abs(s) == pytest.approx(max_abs(w))
    assert col_l1(w) <= col_l1(s) <= col_l1(w) * (1 + 1e-3) and row_l1(w) <= row_l1(s) <= row_l1(w) * (1 + 1e-3)
    assert all(a <= b <= a * (1 + 1e-3) for a, b in zip(row_col_l2(w), row_col_l2(s)))
    assert spectral(w) <= spectral(s)  # a bound, not the value
    t = moved(s, "aten.t.default", ["$0"], (70, 300))
    assert (row_l1(t), col_l1(t)) == (col_l1(s), row_l1(s))
    assert moved(s, "aten.view.default", ["$0", [70, 300]], (70, 300)) is None  # a view that mixes rows


def test_generated_plans_refuse_what_needs_the_model(tmp_path, capsys):
    out = str(tmp_path / "p.json")
    assert main(["plan", "--model", "random:llama", "--fake-weights", "--bounds", "calibrated", "-o", out,
                 "--seq-len", "8"]) == 2
    assert "static bounds" in capsys.readouterr().err
    assert main(["plan", "--model", "default", "--fake-weights", "-o", out]) == 2
    assert "random:<model_type> models only" in capsys.readouterr().err


@pytest.mark.slow  # plans of whole random models
def test_report_puts_plans_side_by_side_under_every_profile(tmp_path, capsys):
    paths = []
    for policy in ("eager", "lazy"):
        paths.append(str(tmp_path / f"{policy}.json"))
        assert main(["plan", "--model", "random:llama", "--fake-weights", "--seq-len", "8", "--policy", policy,
                     "--protocol", "crypten-exact-3pc", "-o", paths[-1]]) == 0
    out = tmp_path / "r.json"
    assert main(["report", *paths, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    from truncbridge.core.protocols import protocol_names

    assert [(r["protocol"], r["policy"]) for r in rows] == [(p, q) for p in protocol_names() for q in ("eager", "lazy")]
    exact3 = [r for r in rows if r["protocol"] == "crypten-exact-3pc"]
    assert exact3[1]["counts"]["truncated_elements"] < exact3[0]["counts"]["truncated_elements"]
    assert exact3[1]["latency_wan_s"] < exact3[0]["latency_wan_s"]
    assert "per token" in capsys.readouterr().out
