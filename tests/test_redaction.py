"""Redacted plans: what the model owner sends the client and helpers carries no float bound,
declared norm, recipe parameter or weights hash, and still runs bit-identically."""
from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
import torch

from truncbridge.backends import RingExecutor
from truncbridge.core.errors import UserError
from truncbridge.core.planfile import attach_weights, plan_from_json, plan_to_json, redact_plan_json
from truncbridge.frontend.lower import lower
from truncbridge.pipeline import build_plan, one_hot, plan_config

pytestmark = pytest.mark.slow  # plans of random models, static and calibrated
SECRET_KEYS = {"row_l2", "recipe_params", "hash"}
PUBLIC_FACTS = {"row_stochastic"}
HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@pytest.fixture(scope="module", params=["static", "calibrated"])
def plans(request, random_converted):
    """(original plan, its JSON, the redacted JSON after a trip through text, the loaded redacted plan)."""
    plan = build_plan(random_converted, plan_config("lazy", bounds=request.param))
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


# -- the constants a non-owner receives: functions of bit widths, not of the owner's exact ranges --------
PROBE = 1.0 + 2.0**-20  # every weight times this: each exact range moves, no bit width does (checked)


@pytest.fixture(scope="module")
def probed_converted():
    """random-llama with every parameter scaled by PROBE: other weights, other calibrated ranges."""
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import convert

    loaded = load_model("random-llama")
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.mul_(PROBE)
    return convert(loaded, 16, 16)


def _public_numbers(red: dict) -> list:
    """What a redacted plan says besides its constants: structure, shapes, scales, bit widths, shifts."""
    return [(n["op"], n["inputs"], n["shape"], n["scale"], n["bound_bits"]) for n in red["nodes"]] + \
        [(t["node"], t["shift"]) for t in red["truncations"]]


def _decoded_consts(red: dict) -> dict[str, np.ndarray]:
    return {k: np.frombuffer(base64.b64decode(v["data"]), dtype=np.dtype(v["dtype"])).reshape(v["shape"])
            for k, v in red["consts"].items()}


def _differing_constants(red: dict, other: dict) -> list[str]:
    """Every constant of ``red`` (decoded) and every node attr, against ``other``'s: those that differ."""
    users = {n["attrs"]["const"]: n for n in red["nodes"] if "const" in n["attrs"]}
    mine, theirs = _decoded_consts(red), _decoded_consts(other)
    out = []
    for name, value in mine.items():
        got = theirs.get(name)
        if got is None or got.dtype != value.dtype or got.shape != value.shape or got.tobytes() != value.tobytes():
            user = users.get(name, {})
            diff = float(np.max(np.abs(got - value))) if got is not None and got.shape == value.shape else math.nan
            out.append(f"const {name} ({user.get('recipe') or user.get('op')} at {user.get('origin')}): "
                       f"{value.ravel()[:2].tolist()} vs {None if got is None else got.ravel()[:2].tolist()}, "
                       f"max |diff| {diff:.3g}")
    out += [f"node {a['id']} attrs {a['attrs']} vs {b['attrs']}" for a, b in zip(red["nodes"], other["nodes"])
            if a["attrs"] != b["attrs"]]
    return out


def test_every_constant_a_non_owner_receives_is_a_function_of_bit_widths(plans, probed_converted):
    """Two models whose redacted plans agree on every bit width, shift and scale, but whose weights and
    calibrated ranges differ (all weights x (1 + 2^-20)), must send byte-identical constants (every
    base64 table decoded, every attr): the constants reveal nothing finer than the bit widths. Recipes
    fitted on ranges rounded out to the grid 2^(k/4) pass; fitted on the exact ranges they fail it
    (the negative control below)."""
    plan, _, red, _ = plans
    probed = plan_to_json(build_plan(probed_converted, plan.config), redacted=True)
    assert all(not torch.equal(w, probed_converted.program.weights[k]) for k, w in plan.program.weights.items())
    assert _public_numbers(probed) == _public_numbers(red), "the probe moved a bit width: choose a smaller one"
    assert len(red["consts"]) > 0 and any(n["recipe"] for n in red["nodes"] if "const" in n["attrs"])
    differing = _differing_constants(red, probed)
    assert not differing, f"{len(differing)} of {len(red['consts'])} constants differ:\n" + "\n".join(differing[:8])
    assert probed == red  # and so the whole redacted plan is the same document


def _on_a_fine_grid(converted, monkeypatch):
    """``converted`` lowered again with a grid of 2^40 steps per octave: its recipes fitted, in effect,
    on the exact calibrated ranges (what they were before the grid)."""
    from truncbridge.frontend import recipe_base
    from truncbridge.frontend.calibrate import calibrate
    from truncbridge.pipeline import Converted, calibration_windows

    monkeypatch.setattr(recipe_base, "RANGE_GRID_STEPS", 2**40)
    windows = calibration_windows(converted.loaded.tokenizer, converted.captured.seq_len)
    ranges = calibrate(converted.captured, [w[None] for w in windows])
    return Converted(converted.loaded, converted.captured, lower(converted.captured, ranges, 16))


def test_the_constants_check_fails_without_the_grid(random_converted, probed_converted, monkeypatch):
    """Negative control: on a grid finer than the probe, the same two models send other constants,
    and the check above names them (the SiLU's Chebyshev fits); bit widths still agree."""
    config = plan_config("lazy")
    red, probed = (plan_to_json(build_plan(_on_a_fine_grid(c, monkeypatch), config), redacted=True)
                   for c in (random_converted, probed_converted))
    assert _public_numbers(probed) == _public_numbers(red)
    differing = _differing_constants(red, probed)
    assert differing and all("sigmoid" in d for d in differing), differing


def test_every_recipe_of_the_owners_plan_was_fitted_on_the_grid(plans):
    """The ranges the owner's plan records for its recipes (``recipe_params``) are grid points."""
    from truncbridge.frontend.recipe_base import RANGE_GRID_STEPS as q

    plan = plans[0]
    ends = [v for n in plan.program.nodes for k, v in (n.facts.recipe_params or {}).items()
            if k in ("lo", "hi", "zlo", "zhi")]
    assert len(ends) >= 20
    assert all(v == 0 or q * math.log2(abs(v)) == pytest.approx(round(q * math.log2(abs(v))), abs=1e-9)
               for v in ends), ends
