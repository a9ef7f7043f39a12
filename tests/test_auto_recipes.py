"""Automatic recipes: an elementwise function that no recipe names becomes a Chebyshev fit of the
function itself over its calibrated range; the error bound the plan records holds on sampled
inputs; users register ops and module classes; an op that cannot be lowered names itself, where
it is, and how to register a recipe. Comparisons (ReLU, max, clamp) are exact and counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from truncbridge.backends import run_float
from truncbridge.core.errors import UserError
from truncbridge.core.ir import Builder
from truncbridge.frontend import recipes
from truncbridge.frontend.lower_comparisons import smooth_relu
from truncbridge.frontend.lower_functions import torch_function
from truncbridge.frontend.models import LoadedModel, load_model
from truncbridge.frontend.registry import MODULE_CLASSES, register_recipe
from truncbridge.pipeline import build_plan, convert, one_hot, plan_config

from helpers import emulate_program

VOCAB, WIDTH = 1024, 16


class SquashPlus(torch.nn.Module):
    """A custom activation no recipe names: x * sigmoid(1.7 x) + 0.1 sin(x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.7 * x) + 0.1 * torch.sin(x)


class TinyLM(torch.nn.Module):
    """Embedding -> activation -> linear, enough to capture, calibrate and lower an activation."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.act = act
        self.head = torch.nn.Linear(WIDTH, 8)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, use_cache=False):
        return self.head(self.act(self.embed(input_ids) * 0.5))


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _convert(act):
    tokenizer = load_model("default").tokenizer
    return convert(LoadedModel("tiny", TinyLM(act).eval(), tokenizer, None), 8, 16)


def _fit_nodes(program, name):
    return [n for n in program.nodes if n.recipe == name and n.facts.recipe_params]


register_recipe(SquashPlus)  # automatic fit of the module's own forward

FUNCTIONS = {  # name in the plan -> (activation module, the function as torch evaluates it)
    "mish": (torch.nn.Mish(), torch.nn.functional.mish),
    "softplus": (torch.nn.Softplus(), torch.nn.functional.softplus),
    "atan": (Lambda(torch.atan), torch.atan),  # an ATen op no rule names: the pointwise fallback
    "squashplus_0": (SquashPlus(), SquashPlus().forward),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_recorded_error_bound_holds_on_sampled_inputs(name):
    act, fn = FUNCTIONS[name]
    converted = _convert(act)
    prefix = name.split("_")[0]
    (fit,) = [n for n in converted.program.nodes if (n.recipe or "").startswith(prefix) and n.facts.recipe_params]
    p = fit.facts.recipe_params
    assert p["method"] == "chebyshev" and 0 < p["fit_error"] <= 2.0 ** -12 / 2 * 1.1  # half the tolerance 2^-(16 - 4)
    assert p["max_error"] > p["fit_error"]  # the roundings come on top
    # the same fit, rebuilt on 100 000 uniform samples of its range: within fit_error in real
    # arithmetic, within max_error in the exact ring (16 fraction bits)
    xs = torch.rand(100_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * (p["hi"] - p["lo"]) + p["lo"]
    b = Builder()
    x = b.input("x", tuple(xs.shape))
    out = b.output(recipes.chebyshev(b, x, torch_function(fn, (), {}), p["lo"], p["hi"], 2.0 ** -12, prefix))
    assert b.program[1].facts.recipe_params["max_error"] == pytest.approx(p["max_error"], rel=1e-12)
    (got,) = run_float(b.program, {"x": xs})
    assert out is not None and (got - fn(xs)).abs().max().item() <= p["fit_error"]
    (ring,), _, violations = emulate_program(b.program, {"x": xs}, bounds="static")
    assert violations == 0 and (ring - fn(xs)).abs().max().item() <= p["max_error"]


def test_an_understated_bound_is_caught():
    """Negative control: the sampled check fails when the recorded bound is a tenth of the truth."""
    fn = torch_function(torch.nn.functional.mish, (), {})
    m, h, coef = recipes.chebyshev_fit(fn, -3.0, 3.0, 2.0 ** -12, "mish")
    xs = np.random.default_rng(0).uniform(-3, 3, 100_000)
    err = np.abs(np.polynomial.chebyshev.chebval((xs - m) / h, coef) - fn(xs)).max()
    assert err <= recipes.fit_error(fn, m, h, coef, -3.0, 3.0)
    assert not err <= recipes.fit_error(fn, m, h, coef, -3.0, 3.0) / 10


def test_a_user_recipe_for_a_module_class():
    """A recipe of one's own: x^2 + 1 for a module computing it, as one product and one addition."""
    class SquarePlusOne(torch.nn.Module):
        def forward(self, x):
            return x * x + 1

    register_recipe(SquarePlusOne, lambda b, x, lo, hi, tol: b.add_public(b.mul(x, x), 1.0))
    try:
        converted = _convert(SquarePlusOne())
    finally:
        MODULE_CLASSES.pop(SquarePlusOne)
    user = [n for n in converted.program.nodes if (n.recipe or "").startswith("squareplusone")]
    assert [n.op for n in user] == ["mul", "add_public"] and user[0].facts.recipe_params["method"] == "user"
    ids = torch.arange(8)[None] * 7
    with torch.no_grad():
        want = converted.loaded.model(ids).double()
    (got,) = run_float(converted.program, {"tokens": one_hot(ids, VOCAB)})
    assert (got - want).abs().max().item() < 1e-5  # exactly the module's function (float32 model)


def test_registering_something_else_is_refused():
    with pytest.raises(UserError, match="an ATen op or an nn.Module class"):
        register_recipe("mish")
    with pytest.raises(UserError, match="must be callable"):
        register_recipe(torch.ops.aten.atan, recipe=3)


def test_an_op_without_a_rule_names_itself_its_module_and_the_fix():
    with pytest.raises(UserError) as info:
        _convert(Lambda(lambda x: torch.cumsum(x, -1)))
    message = str(info.value)
    assert "aten.cumsum.default" in message and "in act (Lambda)" in message and "register_recipe" in message


def test_relu_and_clamp_are_exact_comparisons():
    converted = _convert(Lambda(lambda x: torch.clamp(torch.relu(x) - 0.5, max=1.0)))
    plan = build_plan(converted, plan_config("lazy"))
    counts = plan.counts()
    assert counts["comparisons"] == 2 and counts["compared_elements"] == 2 * 8 * WIDTH
    assert not any(n.recipe for n in plan.program.nodes)  # no approximation anywhere


def test_comparisons_where_and_max_match_the_model_exactly_in_real_arithmetic():
    """where(x > 0.3, x, 2x) with a secret condition, max over the last dim, softplus decomposed
    into its where(x > 20, ...) form: the IR agrees with the module."""
    def fn(x):
        return torch.where(x > 0.3, x, 2 * x) + x.amax(-1, keepdim=True) - torch.minimum(x, x.max(-1).values[..., None] * 0.5)

    converted = _convert(Lambda(fn))
    counts = build_plan(converted, plan_config("lazy")).counts()
    assert counts["comparisons"] == 1 + 2 * 4 + 1  # gt, two trees of 4 pairwise levels (16 wide), minimum
    ids = torch.arange(8)[None] * 11
    with torch.no_grad():
        want = converted.loaded.model(ids).double()
    (got,) = run_float(converted.program, {"tokens": one_hot(ids, VOCAB)})
    assert (got - want).abs().max().item() < 1e-5


def _smooth_relu_error(p: dict, xs: torch.Tensor) -> float:
    """The smooth ReLU rebuilt for its recorded range, evaluated in real arithmetic at xs."""
    b = Builder()
    b.output(smooth_relu(b, b.input("x", tuple(xs.shape)), p["lo"], p["hi"], 2.0 ** -12))
    (got,) = run_float(b.program, {"x": xs})
    return (got - xs.clamp(min=0)).abs().max().item()


def test_smooth_relu_needs_no_comparison_and_its_recorded_bound_holds():
    """--relu smooth: ReLU and clamp without a comparison; on 100 000 samples of each recipe's range
    (and at 0, where the smoothing is furthest off) the error stays within the recorded bound, and
    the bound is not vacuous: a quarter of it is exceeded (the negative control)."""
    act = Lambda(lambda x: torch.clamp(torch.relu(x) - 0.5, max=1.0))
    converted = convert(LoadedModel("tiny", TinyLM(act).eval(), load_model("default").tokenizer, None), 8, 16, "smooth")
    counts = build_plan(converted, plan_config("lazy")).counts()
    assert counts["comparisons"] == 0
    fits = _fit_nodes(converted.program, "smooth_relu")
    assert len(fits) == 2  # the relu, and the clamp's upper limit
    for fit in fits:
        p = fit.facts.recipe_params
        xs = torch.cat([torch.zeros(1, dtype=torch.float64),
                        torch.rand(100_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
                        * (p["hi"] - p["lo"]) + p["lo"]])
        err = _smooth_relu_error(p, xs)
        assert err <= p["max_error"] and not err <= p["max_error"] / 4
        assert p["max_error"] == pytest.approx(p["eps"] / 2, rel=0.05)  # the smoothing dominates
