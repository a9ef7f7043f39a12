"""run_pi --generate: private generation by real processes (2 computing parties and a dealer) with a
secret-shared KV cache — the client's tokens against the float model's greedy generation computed here,
the receipt audit over the whole generation, its negative control (a cache opened by mistake), the cost
model's rounds per token, and bad input refused on every rank."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from test_run_pi import ENV, VARIANTS, mpirun, run_json, starts_processes

PROMPT = "def add(a, b):\n    return"
GENERATE = ["--model", "default", "--generate", "3", "--prompt", PROMPT, "--policy", "eager"]


@pytest.fixture(scope="module")
def float_tokens():
    from truncbridge.frontend.models import load_model
    from truncbridge.generation.emulate import float_generation

    loaded = load_model("default")
    return float_generation(loaded.model, torch.tensor(loaded.tokenizer(PROMPT)["input_ids"]), 3).ids


@starts_processes
@pytest.mark.slow
def test_private_generation_is_the_float_models_and_its_audit_is_clean(tmp_path, float_tokens):
    """The client's 3 tokens are the float model's greedy ones (computed here, from the prompt alone) and the
    emulator's; every receipt over the whole generation is a share, a fresh-masked opening or the client's logits
    (the cache never opened); the rounds per step are the cost model's plus the logits' opening."""
    client_out = tmp_path / "client.json"
    result, _ = run_json(tmp_path, 3, *GENERATE, "--audit", "--benchmark-reveal", "--client-output", str(client_out))
    client = json.loads(client_out.read_text())
    assert client["policies"]["eager"]["ids"] == float_tokens
    row = result["rows"][0]
    assert row["accuracy"] == {"tokens_vs_float": 1.0, "tokens_vs_emulator": 1.0}
    assert result["audit"]["finding_count"] == 0, result["audit"]["findings"][:5]
    assert row["online_dealer_requests"] == 0  # every step's material was dealt before the online phase
    assert row["per_token_rounds"] == row["predicted_per_token"]["rounds"]
    assert row["per_token_bytes"] == pytest.approx(row["predicted_per_token"]["bytes"], rel=1e-12)  # logits' opening in
    assert row["tokens"] == 3 and len(row["steps"]) == 3 and row["steps"][1]["rounds"] < row["steps"][0]["rounds"]


@starts_processes
@pytest.mark.slow
def test_a_cache_opened_by_mistake_is_flagged(tmp_path):
    """Negative control: each step opens its new keys and values to the client with its logits."""
    result, _ = run_json(tmp_path, 3, "open-cache", *GENERATE[:4], "--generate", "2", "--policy", "eager", "--audit",
                         script=VARIANTS)
    findings = result["audit"]["findings"]
    assert result["audit"]["finding_count"] > 0
    assert all(f.startswith("party 1: reduce of ") and "outside any masked opening" in f for f in findings), findings[:3]


@pytest.mark.parametrize("args, words", [
    (["--generate", "0"], "--generate must be at least 1 token"),
    (["--generate", "2", "--top-k", "3"], "needs --temperature"),
    (["--generate", "2", "--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "0.5"], "applies to --generate T only"),
    (["--generate", "2", "--plan", "x.json"], "--plan files are for one forward pass"),
])
def test_bad_generation_flags_are_refused_alike_on_every_rank(args, words):
    """Parsed the same on every rank (rank 0 says it for all; run_pi's other usage errors show that path)."""
    from truncbridge.core.errors import UserError
    from truncbridge.pi.options import parse_args

    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        parse_args(args)


@starts_processes
@pytest.mark.slow
def test_an_empty_prompt_is_one_line_and_exit_2_on_every_rank():
    """The client's own input error: said on its rank (its reason stays there), every rank exits 2, no hang."""
    command = mpirun(3, "--generate", "2", "--prompt=", "--policy", "eager")
    command.insert(1, "--tag-output")
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("[1,")]
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert [ln for ln in lines if "error:" in ln] == ["[1,1]<stderr>: error: the prompt (--prompt) is empty: it has no tokens"]
    assert sum("party 1 (client) failed during set-up (its reason stays with it)" in ln for ln in lines) == 2, lines
