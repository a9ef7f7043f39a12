"""Generation in the ring (``truncbridge generate``): the prefill and decode-step plans with a KV cache.

Checked against independent computations: the float model's own generation with a KV cache (transformers'
``generate``), the float model's keys and values, and a plan made without any cache (the full-sequence plan),
whose logits the cached steps must reproduce up to fixed-point rounding."""
from __future__ import annotations

import json

import pytest
import torch

from truncbridge.cli import main
from truncbridge.core.errors import UserError
from truncbridge.frontend.models import load_model
from truncbridge.generation.convert import build_generation_plans, cache_lengths, convert_generation, state_outputs
from truncbridge.generation.emulate import check_cache_matches, emulated_generation, float_generation
from truncbridge.generation.sampling import Sampler
from truncbridge.pipeline import plan_config, vocab_size

PROMPT, TOKENS = 8, 3


@pytest.fixture(scope="module")
def default():
    loaded = load_model("default")
    prompt = torch.tensor(loaded.tokenizer(loaded.heldout_text)["input_ids"][:PROMPT])
    return loaded, prompt, convert_generation(loaded, PROMPT, TOKENS, 16)


@pytest.fixture(scope="module")
def eager_plans(default):
    return build_generation_plans(default[2], plan_config("eager"))


def test_cache_lengths_are_the_prefill_then_one_step_per_further_token():
    assert cache_lengths(8, 3) == [0, 8, 9]
    assert cache_lengths(5, 1) == [0]


@pytest.mark.slow
def test_float_reference_is_transformers_greedy_generate(default):
    """Our float loop with a KV cache picks what transformers' own generate picks (greedy, no sampling)."""
    loaded, prompt, _ = default
    ours = float_generation(loaded.model, prompt, TOKENS)
    with torch.no_grad():
        theirs = loaded.model.generate(prompt[None], max_new_tokens=TOKENS, do_sample=False, min_new_tokens=TOKENS,
                                       pad_token_id=0)
    assert ours.ids == theirs[0, PROMPT:].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["eager", "lazy"])
def test_ring_generation_follows_the_float_model_token_for_token(default, eager_plans, policy):
    """Every generated token is the float model's greedy token; no value leaves its bound; each step's logits are
    within 0.01 of the float model's on the same prefix."""
    loaded, prompt, programs = default
    plans = eager_plans if policy == "eager" else build_generation_plans(programs, plan_config(policy))
    emulated = emulated_generation(plans, prompt, TOKENS, vocab_size(loaded.model))
    reference = float_generation(loaded.model, prompt, TOKENS)
    assert emulated.ids == reference.ids
    assert sum(emulated.violations) == 0
    floats = reference.logits  # same prefix: the tokens agree
    assert max((e - f).abs().max().item() for e, f in zip(emulated.logits, floats)) < 0.01
    assert check_cache_matches(loaded.model, prompt, plans, vocab_size(loaded.model)) < 0.01


@pytest.mark.slow
def test_cache_outputs_are_at_frac_bits_and_inputs_carry_the_settled_bounds(default, eager_plans):
    """What a step appends is at frac_bits (the next step reads it there); every cache input is declared at the
    settled bound, which is at least the static bound of every output appending to it."""
    from truncbridge.analysis import static_bounds

    _, _, programs = default
    plans = eager_plans
    for cached, plan in plans.items():
        outputs = state_outputs(plan.program)
        assert len(outputs) == 8 and all(plan.program[o].scale == 16 for o in outputs.values())
        for name, nid in plan.program.inputs.items():
            if name != "tokens":
                assert plan.program[nid].facts.bound == programs.cache_bounds[name] and cached != 0
        source = programs.converted[cached].program
        bounds = static_bounds(source)
        for name, nid in state_outputs(source).items():
            assert bounds[nid].value <= programs.cache_bounds[name]


@pytest.mark.slow
def test_a_step_costs_a_fraction_of_the_full_prefix(eager_plans):
    """The point of the cache: one step truncates far fewer elements than the prefill of the prompt."""
    plans = eager_plans
    prefill, step = plans[0].counts()["truncated_elements"], plans[PROMPT].counts()["truncated_elements"]
    assert step * 4 < prefill


@pytest.mark.slow
def test_a_cache_bound_below_what_steps_append_is_caught_by_the_check(default, eager_plans):
    """Negative control of the settled bounds: a step whose cache is declared 64x below its values breaks its
    promised bit widths at run time (the emulator's check counts them); the prefill, unchanged, does not."""
    from truncbridge.generation.convert import declare_cache_bounds
    from truncbridge.pipeline import build_plan

    loaded, prompt, programs = default
    plans = dict(eager_plans)
    step = programs.converted[PROMPT]
    declare_cache_bounds(step.program, {k: v / 64 for k, v in programs.cache_bounds.items()})
    try:
        plans[PROMPT] = build_plan(step, plan_config("eager"))
    finally:
        declare_cache_bounds(step.program, programs.cache_bounds)
    emulated = emulated_generation(plans, prompt, 2, vocab_size(loaded.model))
    assert emulated.violations[0] == 0 and emulated.violations[1] > 0


def test_sampling_is_seeded_and_refuses_unknown_settings():
    logits = torch.randn(50, dtype=torch.float64)
    assert Sampler().pick(logits) == int(logits.argmax())
    a = [Sampler(0.8, 5, seed=3).pick(logits) for _ in range(3)]
    assert a == [Sampler(0.8, 5, seed=3).pick(logits) for _ in range(3)]
    assert all(i in logits.topk(5).indices.tolist() for i in a)
    for bad, words in [((-1.0, 0), "--temperature"), ((float("nan"), 0), "--temperature"), ((0.5, -2), "--top-k"),
                       ((0.0, 5), "needs --temperature")]:
        with pytest.raises(UserError, match=words):
            Sampler(*bad)


@pytest.mark.parametrize("argv, words", [
    (["--prompt", ""], "empty"),
    (["--tokens", "0"], "positive"),
    (["--tokens", "200"], "exceed the model's context of 128"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "3"], "needs --temperature"),
    (["--model", "random:bert"], "not a causal LM"),
])
def test_bad_generation_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(["generate", "--prompt-tokens", "8", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.slow
def test_generate_command_writes_its_steps(tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["generate", "--prompt-tokens", "6", "--tokens", "1", "--policy", "eager", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())  # the prefill alone: the steps' path is the tests' above
    assert doc["agreement"] == 1.0 and len(doc["steps"]) == 1 and doc["steps"][0]["cached"] == 0
    assert doc["prompt_tokens"] == 6 and set(doc["cache_bounds"]) == {f"cache.{i}.{x}" for i in range(4) for x in "kv"}
    assert doc["text"] == doc["float_text"] and "agreement with the float generation: 1/1" in capsys.readouterr().out


@pytest.mark.slow
def test_generation_stops_at_the_end_of_sequence_token(default, eager_plans):
    """--eos: the emulator stops right after it picks the end-of-sequence id (here the float model's first token,
    standing in for the tokenizer's), as the float reference does; without it, it goes on."""
    loaded, prompt, _ = default
    reference = float_generation(loaded.model, prompt, TOKENS)
    eos = reference.ids[0]
    emulated = emulated_generation(eager_plans, prompt, TOKENS, vocab_size(loaded.model), eos=eos)
    assert emulated.ids == reference.ids[:1] == float_generation(loaded.model, prompt, TOKENS, eos=eos).ids
    assert len(reference.ids) == TOKENS


def _cached_attention(cached: int = 15):
    """A step's attention in miniature: the new token's key (a product, scale 2f) joined with a cache read at
    frac_bits, then the scores q . [cache; k]^T — wide enough (bounds 2^10) that 48 bits do not hold the scores at 3f."""
    from truncbridge.core.ir import Builder

    b, d = Builder(), 8
    x = b.input("x", (1, d))
    b.declare(x, 2.0**10, "input")
    cache = b.input("cache.0.k", (cached, d))
    b.declare(cache, 2.0**10, "input")
    k = b.matmul(x, b.weight("w", torch.eye(d, dtype=torch.float64)))
    keys = b.move("aten.cat.default", [cache, k], [["$0", "$1"], 0])
    b.output(b.matmul(x, b.move("aten.t.default", [keys], ["$0"])))
    b.output(b.move("aten.slice.Tensor", [keys], ["$0", 0, cached, cached + 1]), state=True)  # as DynamicCache does
    return b.program


def test_lazy_truncates_the_new_keys_not_the_whole_cache():
    """Lazy hoists its truncation above the join (``Emitter._aligned_up``): it truncates the new token's key
    (8 elements), never the joined cache (128). Negative control: without the hoist, the whole join is truncated."""
    from truncbridge.analysis import place, static_bounds
    from truncbridge.analysis.emit import Emitter
    from truncbridge.core.types import PlanConfig

    def truncated_shapes():
        program = _cached_attention()
        plan = place(program, static_bounds(program), PlanConfig(48, 8, "lazy"))
        return sorted(plan.program[n.inputs[0]].shape for n in plan.program.nodes if n.op == "trunc")

    assert (16, 8) not in truncated_shapes() and (1, 8) in truncated_shapes()
    hoist = Emitter._aligned_up
    Emitter._aligned_up = lambda self, nid: False
    try:
        assert (16, 8) in truncated_shapes()
    finally:
        Emitter._aligned_up = hoist
