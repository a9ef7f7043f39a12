"""SiLU and the GELUs as c x + a series in x^2 (``recipes_even``): every recorded error bound holds in the
exact ring on ranges that hold 0, that do not, and that are lopsided; fewer products than the tanh
doublings on GPT-2's range; GPT-2's written-out GELU (``NewGELUActivation``) is captured whole and
lowered this way; a function whose odd part is not linear is refused."""
from __future__ import annotations

import math

import pytest
import torch
import transformers.activations as hf_activations
from test_auto_recipes import _convert, _fit_nodes
from test_wide_recipes import TOL, TORCH, _run

from truncbridge.analysis import place, static_bounds
from truncbridge.analysis.cost import plan_costs
from truncbridge.core.errors import UserError
from truncbridge.core.ir import Builder
from truncbridge.core.protocols import load_network, load_protocol
from truncbridge.core.types import PlanConfig
from truncbridge.frontend import lower_functions, recipes_compressed, recipes_even, recipes_wide, registry

CASES = [("gelu_tanh", -5.66, 5.66), ("gelu_tanh", -11.3, 4.0), ("gelu", -4.0, 4.0), ("silu", -8.0, 8.0),
         ("silu", 1.0, 6.0), ("gelu", -3.0, -0.5)]


def _even(name: str):
    fn = lambda v: TORCH[name](torch.as_tensor(v, dtype=torch.float64)).numpy()  # noqa: E731
    return fn, recipes_wide.odd_slope(name)


@pytest.mark.parametrize("name,lo,hi", CASES)
@pytest.mark.parametrize("gain_bits", [0, 2])
def test_recorded_bound_holds_in_the_ring(name, lo, hi, gain_bits):
    fn, c = _even(name)
    xs, got, violations, p = _run(lambda b, x: recipes_even.even_linear(b, x, fn, c, lo, hi, TOL, name, gain_bits),
                                  lo, hi, "lazy", 20_000)
    assert violations == 0  # no emulated value above its declared bound
    assert p["method"] == "even_chebyshev" and p["lo"] <= lo and p["hi"] >= hi
    err = (got - TORCH[name](xs)).abs().max().item()
    assert err <= p["max_error"], (err, p)
    assert not err <= p["max_error"] / 100  # negative control: a hundredth of the bound is broken
    if gain_bits == 0:  # as accurate as the tanh doublings on the same points (a rounded 1 / h on t: 12x worse)
        _, doubled, _, _ = _run(lambda b, x: recipes_wide.saturating(b, x, name, lo, hi, TOL), lo, hi, "lazy", 20_000)
        assert err <= 2 * (doubled - TORCH[name](xs)).abs().max().item()


@pytest.mark.parametrize("name,lo,hi", [("gelu_tanh", -5.66, 5.66), ("silu", -16.0, 16.0), ("gelu", -4.0, 4.0)])
def test_fewer_products_than_the_tanh_doublings(name, lo, hi):
    fn, c = _even(name)
    even = recipes_even.products(fn, c, lo, hi, TOL, name)
    assert even <= 0.75 * recipes_wide.products(name, lo, hi, TOL), even  # GPT-2's GELU: 16 against 27
    b = Builder()
    recipes_even.even_linear(b, b.input("x", (4,)), fn, c, lo, hi, TOL, name)
    assert sum(n.op == "mul" for n in b.program.nodes) == even  # the count the lowering compares is what it emits


def test_a_range_too_wide_for_the_series_is_left_to_the_doublings():
    fn, c = _even("silu")
    with pytest.raises(UserError, match="no Chebyshev fit in x"):
        recipes_even.products(fn, c, -40.0, 40.0, TOL, "silu")
    fits = lower_functions._family_fits("silu", fn, -40.0, 40.0, TOL, "silu")
    assert set(fits) == {"saturating"}
    assert set(lower_functions._family_fits("silu", fn, -8.0, 8.0, TOL, "silu")) == {"even", "saturating"}


def _seconds_on_mid(build, elements: int = 128 * 3072) -> float:
    """A recipe alone on GPT-2-small's MLP width at seq 128, placed lazily: its rounds and bytes on `mid` under
    the default protocol, in seconds."""
    b = Builder()
    b.output(build(b, b.input("x", (elements,))))
    plan = place(b.program, static_bounds(b.program), PlanConfig(64, 16, "lazy"))
    return plan_costs(plan, load_protocol("crypten-exact-2pc"), load_network("mid")).latency_s


def test_the_series_wins_in_a_plan_where_the_lowering_takes_it():
    """Products are the lowering's proxy; a plan's rounds and bytes are the truth. GPT-2's GELU range: the
    series beats the doublings on `mid` (30 % fewer bytes, one more round). A wide erf-GELU range (all-MiniLM-
    L6-v2's last layer, +-9.5), where the compression through tanh was the only recipe: the series has fewer
    products and costs less than half its time on `mid`, and the lowering takes it."""
    fn, c = _even("gelu_tanh")
    even = _seconds_on_mid(lambda b, x: recipes_even.even_linear(b, x, fn, c, -4.75, 4.75, TOL, "gelu_tanh"))
    doubled = _seconds_on_mid(lambda b, x: recipes_wide.saturating(b, x, "gelu_tanh", -4.75, 4.75, TOL))
    assert even < 0.8 * doubled, (even, doubled)
    fn, c = _even("gelu")
    even = _seconds_on_mid(lambda b, x: recipes_even.even_linear(b, x, fn, c, -9.5, 9.5, TOL, "gelu"))
    compressed = _seconds_on_mid(lambda b, x: recipes_compressed.erf_family(b, x, "gelu", -9.5, 9.5, TOL))
    assert even < 0.5 * compressed, (even, compressed)
    assert set(lower_functions._family_fits("gelu", fn, -9.5, 9.5, TOL, "gelu")) == {"even"}  # not the compression


def test_a_function_whose_odd_part_is_not_linear_is_refused():
    fn = lambda v: torch.tanh(torch.as_tensor(v)).numpy()  # noqa: E731  (tanh - x/2 is odd, not even)
    b = Builder()
    with pytest.raises(UserError, match=r"tanh: its odd part is not 0.5 x on \[-4, 4\]"):
        recipes_even.even_linear(b, b.input("x", (4,)), fn, 0.5, -4.0, 4.0, TOL, "tanh")


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_gpt2s_written_out_gelu_is_captured_whole():
    """NewGELUActivation (GPT-2's gelu_new: x^3, tanh, ... in ATen) becomes one aten.gelu(tanh), fitted in x^2."""
    converted = _convert(hf_activations.NewGELUActivation())
    (fit,) = _fit_nodes(converted.program, "gelu")
    assert fit.facts.recipe_params["method"] == "even_chebyshev"
    assert not _fit_nodes(converted.program, "tanh")
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    written = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(written, torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-12)  # one function


@pytest.mark.slow  # converts a tiny model (capture, calibration): ~5 CPU-s
def test_a_registered_gelu_class_keeps_the_users_recipe(monkeypatch):
    """register_recipe(NewGELUActivation) wins over capturing it as aten.gelu: its opaque op, the automatic fit."""
    monkeypatch.setitem(registry.MODULE_CLASSES, hf_activations.NewGELUActivation, None)
    converted = _convert(hf_activations.NewGELUActivation())
    assert not _fit_nodes(converted.program, "gelu")
    assert [n.facts.recipe_params["method"] for n in converted.program.nodes
            if (n.recipe or "").startswith("newgeluactivation") and n.facts.recipe_params] == ["chebyshev"]
