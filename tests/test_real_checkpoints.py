"""Real pretrained checkpoints (`make test-real`, outside `make test`): each one that
`python launch/fetch_checkpoint.py NAME` has put in the cache emulates within its bounds and agrees with the
float model, the way an encoder is used: cosine >= 0.999 of the mean-pooled sentence embedding and of the
last hidden state per token, 0 bound violations, 0 values above their bounds — under static and calibrated
bounds, eager / lazy / optimal; and `truncbridge compare` gives the same on every policy.

Skipped unless TRUNCBRIDGE_TEST_REAL=1 (what `make test-real` sets): minutes on two cores, and the cache is
outside the repository. A checkpoint not in the cache is skipped with the command that fetches it.
Windows: 2 of 32 tokens of the default model's held-out text (fetch_checkpoint writes it as heldout.txt).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "launch" / "fetch_checkpoint.py"
spec = importlib.util.spec_from_file_location("fetch_checkpoint", SCRIPT)
fetch_checkpoint = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fetch_checkpoint  # its dataclasses look their module up
spec.loader.exec_module(fetch_checkpoint)

pytestmark = pytest.mark.skipif(os.environ.get("TRUNCBRIDGE_TEST_REAL") != "1",
                                reason="real checkpoints run under `make test-real` (TRUNCBRIDGE_TEST_REAL=1)")

SEQ_LEN, WINDOWS = 32, 2
COSINE = 0.999
OPTIMAL_TIME_LIMIT_S = 60.0
ENCODERS = ["all-mpnet-base-v2", "all-minilm-l6-v2"]


def checkpoint_dir(name: str) -> Path:
    path = fetch_checkpoint.cache_root(None) / name
    if not (path / fetch_checkpoint.MANIFEST).is_file():
        pytest.skip(f"{name} is not in {path.parent}: python launch/fetch_checkpoint.py {name}")
    return path


@pytest.fixture(scope="module", params=ENCODERS)
def converted(request):
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import convert, tokenize_windows

    loaded = load_model(str(checkpoint_dir(request.param)))
    windows = tokenize_windows(loaded.tokenizer, loaded.heldout_text, SEQ_LEN, limit=WINDOWS)
    return request.param, convert(loaded, SEQ_LEN, 16), windows


def assert_accurate_within_bounds(what: str, metrics: dict, violations: int, above_bound: int) -> None:
    """above_bound: elements above their bound, bit width kept or not (the emulator's --check count)."""
    print(f"\n{what}: cosine per token {metrics['cosine_mean']:.6f}, mean-pooled {metrics['cosine_pooled']:.6f}, "
          f"violations {violations}, above bound {above_bound}")
    assert violations == 0 and above_bound == 0, what
    assert metrics["cosine_pooled"] >= COSINE and metrics["cosine_mean"] >= COSINE, what


@pytest.mark.parametrize("bounds", ["static", "calibrated"])
@pytest.mark.parametrize("policy", ["eager", "lazy", "optimal"])
def test_a_real_encoder_emulates_within_its_bounds(converted, bounds, policy):
    from truncbridge.pipeline import build_plan, emulate, plan_config

    name, conv, windows = converted
    plan = build_plan(conv, plan_config(policy, bounds=bounds, time_limit_s=OPTIMAL_TIME_LIMIT_S))
    result = emulate(conv.loaded.model, plan, windows, check=True)
    counts = plan.counts()
    what = (f"{name} {bounds} {policy} ({counts['truncated_elements']:,} truncated elements, "
            f"{counts['comparisons']} comparisons)")
    assert_accurate_within_bounds(what, result.metrics, result.bound_violations, result.above_bound)


@pytest.mark.parametrize("name", ENCODERS)
def test_compare_on_a_real_encoder(name, tmp_path):
    from truncbridge.cli import main

    out = tmp_path / "compare.json"
    assert main(["compare", "--model", str(checkpoint_dir(name)), "--seq-len", str(SEQ_LEN), "--windows", str(WINDOWS),
                 "--field-bits", "64", "--policies", "eager,lazy,optimal", "--time-limit", str(OPTIMAL_TIME_LIMIT_S),
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["policy"] for r in rows if r["feasible"]] == ["eager", "lazy", "optimal"]
    for r in rows:
        assert_accurate_within_bounds(f"compare {name} {r['policy']}", r["metrics"], r["bound_violations"],
                                      r["above_bound"])
    eager, lazy, optimal = (r["counts"]["truncated_elements"] for r in rows)
    assert optimal <= lazy <= eager
