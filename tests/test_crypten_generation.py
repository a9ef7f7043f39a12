"""Private generation from a CrypTen program of your own (``truncbridge.crypten.PrivateGeneration``): two
computing parties and the dealer as their own processes, the client's prompt in and its tokens out, equal
to the emulator's and the float model's greedy tokens; every receipt audited, only the client's logits opened."""
from __future__ import annotations

import json

import pytest
import torch
from test_crypten_backend import audited_openings, run_parties

from truncbridge.core.planfile import save_plan
from truncbridge.frontend.models import load_model
from truncbridge.generation.convert import build_generation_plans, convert_generation
from truncbridge.generation.emulate import emulated_generation, float_generation
from truncbridge.pipeline import plan_config, vocab_size

PROMPT, TOKENS = 8, 2


@pytest.mark.slow
def test_a_crypten_program_generates_the_float_models_tokens(tmp_path):
    loaded = load_model("default")
    prompt = torch.tensor(loaded.tokenizer(loaded.heldout_text)["input_ids"][:PROMPT])
    plans = build_generation_plans(convert_generation(loaded, PROMPT, TOKENS, 16),
                                   plan_config("lazy", protocol="crypten-exact-2pc"))  # what the exact truncation runs
    folder = tmp_path / "plans"
    folder.mkdir()
    for cached, plan in plans.items():
        save_plan(plan, folder / f"plan{cached}.json")
    (folder / "prompt.json").write_text(json.dumps(prompt.tolist()))
    (folder / "vocab.json").write_text(json.dumps(vocab_size(loaded.model)))
    results = run_parties(2, str(folder), "exact", tmp_path / "run", mode="generate")
    expected = emulated_generation(plans, prompt, TOKENS, vocab_size(loaded.model)).ids
    assert expected == float_generation(loaded.model, prompt, TOKENS).ids
    assert results[1]["outputs"] == expected and results[0]["outputs"] is None
    audited_openings(tmp_path / "run", 2, outputs=TOKENS)  # every receipt masked; the logits to the client alone
