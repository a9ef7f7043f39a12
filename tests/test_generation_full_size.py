"""A decode step at full size without the model (``truncbridge plan --decode-step C --fake-weights``): the
plan of one token after C cached positions, its cache bounds settled over the prefill and the step.

Checked against independent computations on a small random:llama (not a preset): the very weights that
were generated, put into a real model, give keys and values within the settled bounds and, run in the
ring against the float model's own cache, the float model's logits; the step costs a fraction of a full
forward pass at the same length; the cache layout read from a config is the one a float run returns."""
from __future__ import annotations

import json

import pytest
import torch

from truncbridge.analysis import static_bounds
from truncbridge.backends import RingExecutor
from truncbridge.cli import main
from truncbridge.frontend.capture_cached import cache_layout, config_layout, float_cache
from truncbridge.frontend.models import load_model
from truncbridge.generation.convert import state_outputs
from truncbridge.generation.full_size import convert_decode_step, decode_step_plan
from truncbridge.pipeline import build_plan, convert, one_hot, plan_config, tokenize_windows

CACHED = 16


@pytest.fixture(scope="module")
def step():
    fake = load_model("random:llama", fake_weights=True)
    programs = convert_decode_step(fake, CACHED, 16)
    return fake, programs, decode_step_plan(programs, plan_config("lazy"))


@pytest.mark.slow  # the step's conversion (the module's fixture, about 10 s)
def test_the_step_reads_its_cache_at_the_settled_bounds(step):
    fake, programs, plan = step
    names = set(programs.cache_bounds)
    assert len(names) == 2 * fake.model.config.num_hidden_layers
    assert {n for n in plan.program.inputs if n.startswith("cache.")} == names
    for name in names:
        nid = plan.program.inputs[name]
        assert plan.program[nid].facts.bound == programs.cache_bounds[name] == plan.bounds[nid].value > 0
    for program in (c.program for c in programs.converted.values()):  # the bound covers what prefill and step append
        node_bounds = static_bounds(program)
        assert all(node_bounds[nid].value <= programs.cache_bounds[n] for n, nid in state_outputs(program).items())
    assert plan.model["cached"] == CACHED and plan.model["seq_len"] == 1 and plan.model["hash"].startswith("generated:")


@pytest.mark.slow  # and a full forward pass's
def test_the_step_costs_a_fraction_of_a_full_forward_pass(step):
    fake, _, plan = step
    full = build_plan(convert(fake, CACHED + 1, 16), plan_config("lazy")).counts()
    counts = plan.counts()
    for key in ("truncations", "truncated_elements", "mul_private"):
        assert 0 < counts[key] <= full[key]
    assert counts["truncated_elements"] < full["truncated_elements"] / 4


def _real_model_with(fake):
    real = load_model("random:llama")
    real.model.load_state_dict({n: fake.generated(n) for n, _ in real.model.named_parameters()})
    return real


def _run_step(plan, real, inputs) -> tuple[RingExecutor, torch.Tensor, int]:
    plan.program.weights.update({n: p.detach().double() for n, p in real.model.named_parameters()})
    executor = RingExecutor(plan)
    outs, violations = executor.run(inputs, check=True)
    return executor, executor.decode_outputs(outs[:1])[0][0, -1], violations


@pytest.mark.slow  # the step's conversion, a second model, the emulator
def test_the_generated_weights_keep_within_the_bounds_and_the_step_gives_the_float_logits(step):
    """The weights generated for the plan, in a real model, on held-out text (not the calibration window):
    every key and value within its settled bound; the step run in the ring on the float model's own cache
    gives its logits, no value beyond its bound. Control: the cache declared below what it holds is caught."""
    fake, programs, plan = step
    real = _real_model_with(fake)
    window = tokenize_windows(real.tokenizer, real.heldout_text, CACHED + 1, limit=1)[0]
    cache = float_cache(real.model, window[None])
    seen = {name: t.abs().max().item() for name, t in cache.items()}
    assert all(seen[name] <= programs.cache_bounds[name] for name in seen)
    inputs = {"tokens": one_hot(window[None, CACHED:], plan.model["vocab"]),
              **{name: t[:, :, :CACHED].double() for name, t in cache.items()}}
    executor, logits, violations = _run_step(plan, real, inputs)
    with torch.no_grad():
        expected = real.model(window[None]).logits[0, -1].double()
    assert violations == 0 and executor.above_bound == 0
    assert (logits - expected).abs().max().item() < 0.01
    settled = programs.cache_bounds
    programs.cache_bounds = {name: 0.9 * seen[name] for name in settled}
    try:
        control, _, _ = _run_step(decode_step_plan(programs, plan_config("lazy")), real, inputs)
    finally:
        programs.cache_bounds = settled
    assert control.above_bound > 0


@pytest.mark.parametrize("model_type", ["llama", "gemma", "qwen2", "gpt2"])
def test_the_cache_layout_from_the_config_is_the_float_runs(model_type):
    loaded = load_model(f"random:{model_type}")
    assert config_layout(loaded.model.config) == cache_layout(loaded.model)


@pytest.mark.slow  # a plan of a whole (small) random model
def test_plan_decode_step_cli_writes_a_plan_report_reads(tmp_path):
    out, rep = tmp_path / "step.json", tmp_path / "r.json"
    assert main(["plan", "--model", "random:llama", "--fake-weights", "--decode-step", "4", "--policy", "eager",
                 "-o", str(out)]) == 0
    assert main(["report", str(out), "--network", "wan", "--json", str(rep)]) == 0
    costs = json.loads(rep.read_text())
    assert costs["counts"]["truncations"] > 0 and costs["rounds"] > 0 and costs["latency_s"] > 0


def test_plan_decode_step_refuses_what_means_nothing(tmp_path, capsys):
    out = tmp_path / "step.json"
    for argv, says in ((["--decode-step", "4", "--seq-len", "8"], "--seq-len means nothing"),
                       (["--decode-step", "0"], "at least 1"),
                       (["--decode-step", "600"], "exceed the model's context")):
        assert main(["plan", "--model", "random:llama", "--fake-weights", *argv, "-o", str(out)]) == 2
        assert says in capsys.readouterr().err
