"""Recipes on wide ranges: the tanh family by doublings of a low-degree fit, the Chebyshev fit on
its exact interval; every recorded error bound (fit plus fixed-point rounding) holds when the
emitted program runs in the exact ring (64-bit, 16 fraction bits), and every declared bound holds
on what the ring computes. A range no recipe covers is a one-line error naming the node."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_auto_recipes import VOCAB, Lambda, _convert

from truncbridge.analysis import place, static_bounds
from truncbridge.backends.emulator import RingExecutor
from truncbridge.core.errors import UserError
from truncbridge.core.ir import Builder
from truncbridge.core.types import PlanConfig
from truncbridge.frontend import lower_functions, recipes, recipes_compressed, recipes_wide
from truncbridge.pipeline import build_plan, one_hot, plan_config

TOL = 2.0**-12  # lower.py's tolerance at 16 fraction bits
SAMPLES = 100_000
TORCH = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu, "erf": torch.erf,
    "gelu": torch.nn.functional.gelu, "gelu_tanh": lambda v: torch.nn.functional.gelu(v, approximate="tanh"),
    "ndtr": torch.special.ndtr,  # an op no rule names: the automatic recipe
    "softplus": torch.nn.functional.softplus,
}
CASES = [  # (recipe, lo, hi): up to +-1000 where the function saturates, the real encoder's GELU range
    ("tanh", -1000.0, 1000.0), ("sigmoid", -1000.0, 1000.0), ("silu", -1000.0, 1000.0),
    ("gelu_tanh", -25.79, 34.08), ("gelu", -3.0, 3.0), ("erf", -3.0, 3.0),
    ("compressed gelu", -25.79, 34.08), ("compressed erf", -1000.0, 1000.0), ("auto ndtr", -1000.0, 1000.0),
    ("softplus softplus", -1000.0, 1000.0),
]
BUILD = {
    "saturating": recipes_wide.saturating, "compressed": recipes_compressed.erf_family,
    "softplus": lambda b, x, name, lo, hi, tol: recipes_compressed.softplus(b, x, lo, hi, tol),
    "auto": lambda b, x, name, lo, hi, tol: recipes_compressed.auto_compressed(b, x, _numpy(TORCH[name]), lo, hi, tol, name),
}


def _run(build, lo: float, hi: float, policy: str, samples: int = SAMPLES):
    """The recipe's program on SAMPLES seeded uniform points of [lo, hi] in the exact ring; static
    bounds, so the declared bounds are what the run checks."""
    xs = torch.rand(samples, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * (hi - lo) + lo
    b = Builder()
    x = b.input("x", (samples,))
    b.output(build(b, x))
    ex = RingExecutor(place(b.program, static_bounds(b.program), PlanConfig(64, 16, policy)))
    outs, beyond_bits = ex.run({"x": xs}, check=True)
    (got,) = ex.decode_outputs(outs)
    return xs, got, beyond_bits + ex.above_bound, b.program.nodes[1].facts.recipe_params


def _numpy(fn):
    return lambda v: fn(torch.as_tensor(v, dtype=torch.float64)).numpy()


@functools.cache
def _family_case(case: str, lo: float, hi: float):
    method, name = case.split() if " " in case else ("saturating", case)
    return _run(lambda b, x: BUILD[method](b, x, name, lo, hi, TOL), lo, hi, "eager")


@pytest.mark.parametrize("name,lo,hi", CASES)
def test_recorded_bound_holds_in_the_ring(name, lo, hi):
    xs, got, violations, p = _family_case(name, lo, hi)
    assert violations == 0  # no emulated value above its declared bound (nor outside its bit width)
    assert {"lo", "hi", "method", "degree", "steps", "max_error"} <= set(p) and p["lo"] <= lo and p["hi"] >= hi
    err = (got - TORCH[name.split()[-1]](xs)).abs().max().item()
    assert err <= p["max_error"], (err, p)


def test_an_understated_bound_is_caught():
    """Negative control: the same check fails when the bound is a hundredth of the recorded one."""
    xs, got, _, p = _family_case("tanh", -1000.0, 1000.0)
    assert (got - torch.tanh(xs)).abs().max().item() <= p["max_error"]
    assert not (got - torch.tanh(xs)).abs().max().item() <= p["max_error"] / 100


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_the_encoders_gelu_range_is_lowered():
    """The real encoder's GELU range that no fit of degree <= 96 reached: erf compressed through tanh."""
    converted = _convert(TinyGelu())
    (fit,) = [n for n in converted.program.nodes if n.recipe == "gelu" and n.facts.recipe_params]
    p = fit.facts.recipe_params
    assert p["method"] == "tanh_compressed" and p["lo"] <= -25.79 and p["hi"] >= 34.08 and p["degree"] <= 32


class TinyGelu(torch.nn.Module):
    """GELU (erf form) of 40 x: the tiny model's activations spread over a range as wide as the real encoder's."""

    def forward(self, x):
        return torch.nn.functional.gelu(x * 40.0)


def test_wider_ranges_take_more_doublings():
    steps = []
    for r in (2.0, 16.0, 128.0, 1000.0):
        b = Builder()
        recipes_wide.saturating(b, b.input("x", (4,)), "tanh", -r, r, TOL)
        steps.append(b.program.nodes[1].facts.recipe_params["steps"])
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] >= 8


@pytest.mark.parametrize("lo,hi,policy", [(-5.66, 5.66, "lazy"), (-11.3, 6.7, "eager")])
def test_chebyshev_on_the_default_gpt2_ranges_holds_its_bounds_in_the_ring(lo, hi, policy):
    """default-gpt2's tanh ranges: the fit on the exact interval (degree 54 where the power-of-two
    interval took 87), and bounds widened by the roundings, so no value is above its bound."""
    xs, got, violations, p = _run(lambda b, x: recipes.chebyshev(b, x, np.tanh, lo, hi, TOL, "tanh"), lo, hi, policy, 20_000)
    assert violations == 0 and p["degree"] <= 60
    assert (got - torch.tanh(xs)).abs().max().item() <= p["max_error"]


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_an_uncoverable_range_is_one_line_naming_the_node_and_the_range():
    """sin on hundreds of periods: no fit of degree <= 96; the conversion stops with one line that
    names the op, the fitted range and the graph node."""
    with pytest.raises(UserError) as info:
        _convert(Lambda(lambda x: torch.sin(400.0 * x)))
    message = str(info.value)
    assert "\n" not in message and message.startswith("sin: no Chebyshev fit") and "(node sin)" in message
    lo, hi = (float(v) for v in message.split(" on [")[1].split("]")[0].split(", "))
    assert lo < -100 and hi > 100


def _ring_error(act, policy: str = "eager") -> float:
    """max |emulated - float model| of TinyLM(act) (test_auto_recipes) on one window."""
    converted = _convert(act)
    plan = build_plan(converted, plan_config(policy))
    ids = torch.arange(8)[None] * 13
    ex = RingExecutor(plan)
    outs, violations = ex.run({"tokens": one_hot(ids, VOCAB)}, check=True)
    with torch.no_grad():
        want = converted.loaded.model(ids).double()
    assert violations == 0
    return (ex.decode_outputs(outs)[0] - want).abs().max().item()


def _small_rms_norm(x):
    """Gemma2's post-norm of a small sublayer output: rms ~ 0.01, mean(x^2) ~ 2^-13."""
    y = 0.01 * x
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_a_small_square_keeps_its_fraction_bits(monkeypatch):
    """x^2 of a small x as (2^s x)^2 2^-2s: the norm's output error falls at least fourfold
    against the plain x * x (the control: MAX_SQUARE_GAIN_BITS = 0)."""
    gained = _ring_error(Lambda(_small_rms_norm))
    monkeypatch.setattr(lower_functions, "MAX_SQUARE_GAIN_BITS", 0)
    plain = _ring_error(Lambda(_small_rms_norm))
    assert gained * 4 <= plain, (gained, plain)


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_soft_capping_keeps_the_cap_out_of_the_error(monkeypatch):
    """cap * tanh(x / cap) (Gemma2's soft-capping, cap 50): x / cap and tanh's output carry log2(cap)
    more fraction bits, so the cap does not multiply their roundings (the control: gain off)."""
    act = Lambda(lambda x: 50.0 * torch.tanh(x / 50.0))
    gained = _ring_error(act)
    monkeypatch.setattr(lower_functions, "output_scale", lambda node: 1.0)
    plain = _ring_error(act)
    assert gained * 4 <= plain, (gained, plain)
