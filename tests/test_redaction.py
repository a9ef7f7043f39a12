"""Redacted plans: what the model owner sends the client and helpers carries no float bound,
declared norm, recipe parameter or weights hash, and still runs bit-identically."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from truncbridge.backends import RingExecutor
from truncbridge.core.errors import UserError
from truncbridge.core.planfile import attach_weights, plan_from_json, plan_to_json, redact_plan_json
from truncbridge.pipeline import build_plan, one_hot, plan_config

SECRET_KEYS = {"row_l2", "recipe_params", "hash"}
PUBLIC_FACTS = {"row_stochastic"}
HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@pytest.fixture(scope="module", params=["static", "calibrated"])
def plans(request, random_converted):
    """(original plan, its JSON, the redacted JSON after a trip through text, the loaded redacted plan)."""
    plan = build_plan(random_converted, plan_config("lazy", 64, 16, bounds=request.param))
    doc = json.loads(json.dumps(plan_to_json(plan)))
    red = json.loads(json.dumps(plan_to_json(plan, redacted=True)))
    return plan, doc, red, plan_from_json(red)


def _walk(x, key=None):
    """Every (key, value) pair in a JSON document, leaves included; key is the enclosing dict key."""
    yield key, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _walk(v, k)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v, key)


def _is_pow2(v: float) -> bool:
    return v > 0 and math.frexp(v)[0] == 0.5


def _leaks(doc: dict, secret_floats: set[float]) -> dict[str, int]:
    """Counts of what a redacted document must not hold."""
    pairs = list(_walk(doc))
    return {
        "secret_keys": sum(isinstance(v, dict) and bool(SECRET_KEYS & set(v)) for _, v in pairs),
        "secret_facts": sum(k == "facts" and bool(set(v) - PUBLIC_FACTS) for k, v in pairs if isinstance(v, dict)),
        "secret_floats": sum(isinstance(v, float) and v in secret_floats for _, v in pairs),
        "hex64": sum(isinstance(v, str) and HEX64.fullmatch(v) is not None for _, v in pairs),
        "bound_sources": sum(k == "bound_source" and v != "redacted" for k, v in pairs),
    }


def _secret_floats(doc: dict) -> set[float]:
    """Original float bounds that are no power of two, and the declared bounds and row norms."""
    out = {n["bound"] for n in doc["nodes"] if not _is_pow2(n["bound"])}
    declared = {n["facts"][k] for n in doc["nodes"] for k in ("bound", "row_l2") if k in n["facts"]}
    return out | {v for v in declared if not _is_pow2(v)}


def test_redacted_json_holds_no_owner_secrets(plans):
    _, doc, red, _ = plans
    assert red["redacted"] is True and "solver" not in red
    assert set(red["model"]) <= {"name", "class", "seq_len", "batch", "vocab"} and red["model"]["seq_len"] == 16
    assert all(_is_pow2(n["bound"]) for n in red["nodes"])
    assert _leaks(red, _secret_floats(doc)) == {"secret_keys": 0, "secret_facts": 0, "secret_floats": 0, "hex64": 0,
                                                 "bound_sources": 0}


def test_unredacted_json_shows_the_secrets(plans):
    """Negative control: the same search finds every kind of secret in the owner's plan."""
    _, doc, _, _ = plans
    leaks = _leaks(doc, _secret_floats(doc))
    assert all(count > 0 for count in leaks.values()), leaks


def test_redacted_plan_keeps_bits_and_truncations(plans):
    plan, doc, red, loaded = plans
    assert [loaded.bound_bits(n) for n in loaded.program.nodes] == [plan.bound_bits(n) for n in plan.program.nodes]
    assert [(n.id, n.attrs["shift"]) for n in loaded.program.nodes if n.op == "trunc"] == \
        [(n.id, n.attrs["shift"]) for n in plan.program.nodes if n.op == "trunc"]
    for key in ("truncations", "inputs", "outputs", "consts", "counts", "config", "budget_bits"):
        assert red[key] == doc[key], key
    assert [(n["op"], n["inputs"], n["shape"], n["scale"]) for n in red["nodes"]] == \
        [(n["op"], n["inputs"], n["shape"], n["scale"]) for n in doc["nodes"]]
    assert redact_plan_json(red) == red  # redacting twice changes nothing
    assert plan_to_json(loaded) == red  # a loaded redacted plan stays redacted when written again


def test_redacted_plan_runs_bit_identically(plans):
    plan, _, _, loaded = plans
    loaded.program.weights = plan.program.weights  # the owner's shares, here given in the clear
    vocab = plan.model["vocab"]
    inputs = {"tokens": one_hot(torch.arange(16)[None] * 7 % vocab, vocab)}
    want, want_violations = RingExecutor(plan).run(inputs, check=True)
    got, got_violations = RingExecutor(loaded).run(inputs, check=True)
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    assert got_violations == want_violations


def test_attach_weights_refuses_a_redacted_plan(plans, random_converted):
    _, _, red, _ = plans
    with pytest.raises(UserError, match="redacted"):
        attach_weights(plan_from_json(red), random_converted.loaded.model, "random-llama")


def test_tampered_redacted_bound_is_corrupt(plans):
    _, _, red, _ = plans
    bad = json.loads(json.dumps(red))
    bad["nodes"][-1]["bound"] *= 4.0
    with pytest.raises(UserError, match="bound_bits"):
        plan_from_json(bad)
