"""Recipes approximate their functions over their declared ranges, in float and in the ring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from truncbridge.backends import run_float
from truncbridge.core.errors import UserError
from truncbridge.core.ir import Builder
from truncbridge.frontend import recipes

from helpers import emulate_program


def unary_program(build, n: int):
    b = Builder()
    x = b.input("x", (n,))
    b.output(build(b, x))
    return b.program


def check(build, fn, xs, tol_float, tol_ring, relative=False):
    """Max error (relative if asked) of the recipe in float64 and in Z_2^64 with 16 fraction bits."""
    xs = torch.tensor(xs, dtype=torch.float64)
    prog = unary_program(build, len(xs))
    want = torch.tensor(fn(xs.numpy()))
    scale = want.abs() if relative else torch.ones_like(want)
    got_float = run_float(prog, {"x": xs})[0]
    assert ((got_float - want).abs() / scale).max() <= tol_float
    (got_ring,), plan, violations = emulate_program(prog, {"x": xs})
    assert violations == 0
    assert ((got_ring - want).abs() / scale).max() <= tol_ring
    return plan


TOL = 2.0**-12


def test_exp_limit_method():
    xs = np.linspace(-8, 0, 301)
    check(lambda b, x: recipes.exp(b, x, -8, 3), np.exp, xs, 1e-5, 2.0 ** (recipes.EXP_MIN_ITERS - 16 + 1))
    # eager rounding: relative error ~ 2^(squarings - frac_bits) where exp(x) is not tiny
    xs = np.linspace(-2, 3, 101)
    check(lambda b, x: recipes.exp(b, x, -8, 3), np.exp, xs, 1e-4, 2.0 ** (recipes.EXP_MIN_ITERS - 16 + 1), relative=True)


def test_exp_takes_more_squarings_for_wide_negative_ranges():
    assert recipes.exp_iterations(-10) == recipes.EXP_MIN_ITERS
    n = recipes.exp_iterations(-1000)
    assert 1 - 1000 / 2**n >= 0.5


@pytest.mark.parametrize("lo,hi", [(0.5, 64), (1e-3, 1.0), (3.0, 5000.0)])
def test_reciprocal_newton(lo, hi):
    xs = np.geomspace(lo, hi, 257)
    check(lambda b, x: recipes.reciprocal(b, x, lo, hi, TOL), lambda v: 1 / v, xs, TOL, 4 * TOL + 1 / lo * 2**-14,
          relative=True)


@pytest.mark.parametrize("lo,hi", [(1e-2, 10.0), (0.05, 400.0)])
def test_rsqrt_newton(lo, hi):
    xs = np.geomspace(lo, hi, 257)
    check(lambda b, x: recipes.rsqrt(b, x, lo, hi, TOL), lambda v: 1 / np.sqrt(v), xs, TOL, 8 * TOL, relative=True)


def test_newton_rejects_non_positive_range():
    with pytest.raises(UserError, match="positive input range"):
        unary_program(lambda b, x: recipes.rsqrt(b, x, -1.0, 4.0, TOL), 4)


@pytest.mark.parametrize("name,fn,lo,hi", [
    ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), -8.0, 8.0),
    ("silu", lambda v: v / (1 + np.exp(-v)), -6.0, 4.0),
    ("tanh", np.tanh, -3.0, 3.0),
])
def test_chebyshev_fits(name, fn, lo, hi):
    xs = np.linspace(lo, hi, 401)
    plan = check(lambda b, x: recipes.chebyshev(b, x, fn, lo, hi, TOL, name), fn, xs, TOL, 4 * TOL)
    assert all(n.recipe == name for n in plan.program.nodes if n.op in ("mul", "mul_public"))


def test_chebyshev_refuses_impossible_accuracy():
    with pytest.raises(UserError, match="no Chebyshev fit"):
        recipes.chebyshev_fit(lambda v: np.abs(v), -1, 1, 1e-9, "abs")


def _causal_scores(rows: int, seed: int, spread: float):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows, rows, generator=g, dtype=torch.float64) * spread
    keep = torch.ones(rows, rows, dtype=torch.bool).tril().expand(2, rows, rows)
    return x, keep


@pytest.mark.parametrize("spread", [0.5, 3.0, 8.0])
def test_softmax_matches_torch_with_causal_mask(spread):
    rows = 24
    x, keep = _causal_scores(rows, 0, spread)
    want = torch.softmax(x.masked_fill(~keep, float("-inf")), -1)
    from truncbridge.frontend.calibrate import centered_scores

    z = centered_scores(x.masked_fill(~keep, -1e9), -1)[keep]
    b = Builder()
    xi = b.input("x", tuple(x.shape))
    b.output(recipes.softmax(b, xi, -1, keep, z.min().item() - 1, z.max().item() + 1, TOL))
    got_float = run_float(b.program, {"x": x})[0]
    assert (got_float - want).abs().max() <= 2e-3
    (got_ring,), plan, violations = emulate_program(b.program, {"x": x})
    assert violations == 0
    assert (got_ring - want).abs().max() <= 3e-3
    assert torch.all(got_ring[~keep] == 0)
    assert (got_ring.sum(-1) - 1).abs().max() <= 3e-3


def test_softmax_reciprocal_ranges_are_static():
    m, n_sq = recipes.softmax_plan(-40.0, 25.0, 128)
    assert math.exp(25.0 / 2**m) <= 128
    assert n_sq >= m and 1 - 40.0 / 2**n_sq > 0.25


def test_rsqrt_coupled_steps_take_newtons_iterates_at_one_round_each(monkeypatch):
    """The coupled steps (v = u y^2 carried along) compute Newton's own iterates; in a plan whose
    truncation carries products, each costs one round on the critical path, where plain Newton
    steps (the control, coupling switched off) cost two."""
    from truncbridge.analysis.cost import plan_costs
    from truncbridge.core.protocols import load_network, load_protocol
    from truncbridge.frontend import newton

    lo, hi = 0.02, 5.0
    xs = np.geomspace(lo, hi, 257)

    def rounds_and_params():
        prog = unary_program(lambda b, x: recipes.rsqrt(b, x, lo, hi, TOL), len(xs))
        (_,), plan, _ = emulate_program(prog, {"x": torch.tensor(xs)}, policy="lazy")
        cost = plan_costs(plan, load_protocol("crypten-exact-3pc"), load_network("lan"))
        return cost.rounds, prog.nodes[1].facts.recipe_params, run_float(prog, {"x": torch.tensor(xs)})[0].numpy()

    rounds, params, got = rounds_and_params()
    plain = params["iterations"] - 2 - params["coupled"]  # plain steps before the coupled ones
    assert params["coupled"] >= params["iterations"] - 3 and plain >= 0  # all but the first, the last (and one)
    u, c = xs / 4.0 ** params["shift"], params["start"]
    y = c * (1.5 - 0.5 * c * c * u)
    for _ in range(params["iterations"] - 1):
        y = y * (1.5 - 0.5 * u * y * y)
    assert np.max(np.abs(got / (y / 2.0 ** params["shift"]) - 1)) <= 1e-12
    assert rounds <= params["iterations"] + 4 + plain, rounds
    monkeypatch.setattr(newton, "_newton_split", lambda c, r, steps, tol: (steps, 0))
    plain_rounds, plain_params, plain_got = rounds_and_params()
    assert plain_params["coupled"] == 0 and np.max(np.abs(plain_got / got - 1)) <= 1e-12
    assert plain_rounds >= 2 * (params["iterations"] - 1), plain_rounds


def test_public_range_rounds_outward_to_quarter_octaves():
    """Recipes fit on [lo, hi] rounded out to {0, +-2^(k/4)}: outward, by less than a quarter octave,
    onto the grid, and a second rounding changes nothing."""
    from truncbridge.frontend.recipe_base import public_range

    rng = np.random.default_rng(0)
    ends = np.concatenate([rng.uniform(-50, 50, 4000), np.exp(rng.uniform(-30, 30, 4000)), [0.0, 1.0, 2.0, -0.5]])
    for lo, hi in zip(np.sort(ends.reshape(-1, 2), axis=1)[:, 0], np.sort(ends.reshape(-1, 2), axis=1)[:, 1]):
        glo, ghi = public_range(float(lo), float(hi))
        assert glo <= lo <= hi <= ghi and public_range(glo, ghi) == (glo, ghi)
        for v, g in ((lo, glo), (hi, ghi)):
            assert (g == 0) == (v == 0) and (v == 0 or max(g / v, v / g) < 2**0.25)
            assert g == 0 or 4 * math.log2(abs(g)) == pytest.approx(round(4 * math.log2(abs(g))), abs=1e-9)
    assert public_range(-3.1, 2.9) == pytest.approx((-(2**1.75), 2**1.75), rel=1e-15)
    assert public_range(1.0, 2.0) == (1.0, 2.0)
