"""run_pi's client side and report, without processes: the client fits its input to the public
sequence length, and the owner's rows and table hold statistics only unless a benchmark reveals."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from truncbridge.frontend.models import DEFAULT_MODEL_DIR
from truncbridge.pi.client import ClientInputError, client_input, fit, report
from truncbridge.pi.results import ACCURACY, STATISTICS, RunMeasurement, format_table, insecure_modes, policy_row, within_spread


def test_fit_keeps_the_last_tokens_or_pads_on_the_right():
    ids, tokens, dropped = fit([5, 6, 7], 5, 0)
    assert ids.tolist() == [5, 6, 7, 0, 0] and tokens == 3 and dropped == 0
    ids, tokens, dropped = fit(list(range(10)), 4, 0)
    assert ids.tolist() == [6, 7, 8, 9] and tokens == 4 and dropped == 6


@pytest.fixture(scope="module")
def loaded():
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    model = SimpleNamespace(get_input_embeddings=lambda: torch.nn.Embedding(1024, 1))
    return SimpleNamespace(name="stub", model=model, tokenizer=tokenizer, heldout_text="x = 1\n" * 40)


def test_the_client_reads_a_prompt_a_file_or_its_default_window(loaded, tmp_path):
    given = client_input(loaded, 16, prompt="def f(): pass")
    ids = loaded.tokenizer("def f(): pass")["input_ids"]
    assert given.tokens == len(ids) < 16 and given.ids[: given.tokens].tolist() == ids
    assert given.ids[given.tokens:].tolist() == [given.pad_id] * (16 - len(ids)) and given.pad_id == 0  # eos
    path = tmp_path / "prompt.txt"
    path.write_text("import os\n" * 20)
    from_file = client_input(loaded, 16, text=str(path))
    assert from_file.source == f"--text {path}" and from_file.tokens == 16 and from_file.dropped > 0
    default = client_input(loaded, 16)
    assert default.source == "default window" and default.tokens == 16
    with pytest.raises(ClientInputError, match="cannot read --text"):
        client_input(loaded, 16, text=str(tmp_path / "absent.txt"))
    with pytest.raises(ClientInputError, match="empty"):
        client_input(loaded, 16, prompt="")
    assert ClientInputError.private  # mpi.fail_setup keeps its reason on the client's rank


def test_the_client_reports_its_real_positions_only(loaded, tmp_path, capsys):
    given = client_input(loaded, 8, prompt="a b")
    logits = torch.zeros(8, 1024, dtype=torch.float64)
    logits[given.tokens - 1, 42] = 5.0
    doc = report("stub", 8, given, {"eager": logits}, loaded.tokenizer, str(tmp_path / "c.json"), with_logits=True)
    r = doc["policies"]["eager"]
    assert r["next_token"] == 42 and len(r["top1"]) == len(r["logits"]) == given.tokens and len(r["top"]) == 5
    assert "client: eager: next token" in capsys.readouterr().out
    assert (tmp_path / "c.json").exists()


def stats(wall: float) -> RunMeasurement:
    return RunMeasurement(wall_s=wall, rounds=10, bytes=100, comm_s=0.1, offline_s=0.2, offline_bytes=50,
                          weights_rounds=1, weights_bytes=7, dealt_requests=3, online_dealer_requests=0,
                          truncations_executed=4)


def test_rows_hold_accuracy_only_with_revealed_logits():
    runs = [[stats(1.0), stats(1.1)]]
    assert set(runs[0][0].statistics()) <= STATISTICS
    row = policy_row("eager", 2, runs)
    assert not set(ACCURACY) & set(row)
    logits = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    revealed = policy_row("eager", 2, runs, {"float": logits, "eager": logits, "eager/spread": 0.0}, [logits])
    assert revealed["top1_agreement_vs_float"] == 1.0 and revealed["max_abs_diff_vs_emulator"] == 0.0
    result = {"model": "m", "parties": 2, "seq_len": 4, "truncation": "exact", "bounds": "static",
              "threads_per_party": 1, "repeat": 1, "dealer": "separate", "rows": [row], "ratios": {}}
    assert "INSECURE" not in format_table({**result, "insecure": insecure_modes(result, audit=False)})
    result.update(rows=[revealed], benchmark_reveal=True)
    table = format_table({**result, "insecure": insecure_modes(result, audit=True)})
    assert table.count("INSECURE: ") == 2 and "top1" in table


def test_the_table_explains_itself_and_judges_its_accuracy_columns():
    runs = [[stats(1.0), stats(1.1)]]
    base = {"model": "m", "parties": 2, "seq_len": 4, "truncation": "exact", "bounds": "static",
            "threads_per_party": 1, "repeat": 1, "dealer": "separate", "ratios": {}, "benchmark_reveal": True}
    logits = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    refs = {"float": logits, "eager": logits, "eager/spread": 0.01}
    near, far = logits + 0.015, logits + 0.5  # within 2 x spread; far outside it
    ok, out = policy_row("eager", 2, runs, refs, [near]), policy_row("eager", 2, runs, refs, [far])
    assert within_spread(ok) is True and within_spread(out) is False
    wrong = torch.zeros_like(logits)  # vanilla whose argmax never agrees: the rsqrt hint
    vanilla = policy_row("vanilla", 2, runs, refs, [wrong])
    assert within_spread(vanilla) is None  # no emulation to compare vanilla with
    table = format_table({**base, "rows": [ok, out, vanilla]})
    lines = table.splitlines()
    assert any(line.startswith("columns: wall_s") for line in lines) and any(line.startswith("accuracy") for line in lines)
    (row_ok, row_out), (row_vanilla,) = ([line for line in lines if line.startswith(p)] for p in ("eager", "vanilla"))
    assert " ok " in row_ok and " OUT " in row_out
    assert "div" in row_vanilla and " - " in row_vanilla  # divisions, no weights' halves apart
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 2 and "not compute the plan" in hints[0] and "--vanilla-rsqrt-scale" in hints[1]
    assert not [line for line in format_table({**base, "rows": [ok]}).splitlines() if line.startswith("hint")]
