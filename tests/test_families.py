"""Any Hugging Face family, with no per-family code: `emulate --model random:<model_type> --policy
lazy --check` at Z_2^64 / 16 fraction bits agrees with the float model (top-1 >= 0.98 for decoders,
mean cosine of the last hidden states >= 0.999 for encoders) and no value exceeds its static bound.
Each family brings its own ops, and the plan must show that they were lowered, not skipped."""
from __future__ import annotations

import json

import pytest

from truncbridge.cli import main
from truncbridge.frontend.model_types import TESTED_FAMILIES as FAMILIES  # what `truncbridge models --types` calls tested

# FAMILIES: model_type -> a recipe (or "comparisons") its plan must contain: the family's own nonlinearity
FAST = {"llama"}  # make test-fast runs this one (the quick loop stays under a minute)


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=() if t in FAST else pytest.mark.slow) for t in FAMILIES])
def test_family_emulates_within_its_bounds(model_type, tmp_path):
    out = tmp_path / "r.json"
    args = ["emulate", "--model", f"random:{model_type}", "--policy", "lazy", "--check",
            "--seq-len", "16", "--windows", "8", "--json", str(out)]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["bound_violations"] == 0
    m = record["metrics"]
    if model_type == "bert":
        assert m["cosine_mean"] >= 0.999
    else:
        assert m["top1_agreement"] >= 0.98
    assert record["counts"]["truncations"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["gemma2", "opt", "bloom", "gpt_neox"])
def test_family_plan_contains_its_nonlinearity(model_type):
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import build_plan, convert, plan_config

    plan = build_plan(convert(load_model(f"random:{model_type}"), 8, 16), plan_config("lazy"))
    wanted = FAMILIES[model_type]
    if wanted == "comparisons":
        assert plan.counts()["comparisons"] > 0
    else:
        assert wanted in {n.recipe for n in plan.program.nodes}


def test_an_unknown_model_type_is_one_line(capsys):
    assert main(["emulate", "--model", "random:no-such-family"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model_type 'no-such-family'" in err


def test_a_preset_of_another_family_is_refused(capsys):
    assert main(["plan", "--model", "random:gpt2", "--preset", "llama-7b", "--out", "/dev/null"]) == 2
    assert "preset llama-7b is a llama model, not gpt2" in capsys.readouterr().err


def test_random_llama_is_an_alias():
    from truncbridge.frontend.models import load_model

    a, b = load_model("random-llama").model, load_model("random:llama").model
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
