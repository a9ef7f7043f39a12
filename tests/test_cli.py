"""The command line: results as JSON with exactly the documented keys; bad input -> one line, exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from truncbridge.cli import main

from helpers import EMULATE_KEYS as KEYS  # noqa: E402

METRIC_KEYS = {"top1_agreement", "top1_flips", "flip_margin_max", "kl_mean", "max_abs_logit_error", "ppl_float",
               "ppl_emulated"}
COUNT_KEYS = {"mul_private", "mul_public", "truncations", "truncated_elements", "comparisons", "compared_elements"}


@pytest.mark.slow  # the whole default model
def test_emulate_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["emulate", "--seq-len", "32", "--windows", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record) == KEYS | {"phase_s"}
    assert set(record["metrics"]) == METRIC_KEYS
    assert set(record["counts"]) == COUNT_KEYS
    assert set(record["time_s"]) == {"float", "emulated"}
    assert (record["model"], record["field_bits"], record["frac_bits"], record["policy"]) == ("default", 64, 16, "eager")
    assert record["bound_violations"] == 0
    assert record["counts"]["truncations"] > 0 and record["counts"]["comparisons"] == 0
    assert record["metrics"]["top1_agreement"] >= 0.95
    printed = capsys.readouterr().out
    assert "top-1 agreement" in printed and "truncated elements" in printed


@pytest.mark.slow  # four whole-model emulations
def test_emulate_can_sample_what_mpc_outputs(tmp_path):
    """--mpc-truncation: the protocol's own truncation (here the exact 1-round protocol's stochastic
    rounding) — different numbers from round-nearest, same seed same numbers, accuracy kept."""
    records = []
    for extra in ([], ["--mpc-truncation"], ["--mpc-truncation"], ["--mpc-truncation", "--seed", "1"]):
        out = tmp_path / f"r{len(records)}.json"
        assert main(["emulate", "--seq-len", "16", "--windows", "1", "--protocol", "crypten-exact-3pc",
                     "--json", str(out), *extra]) == 0
        records.append(json.loads(out.read_text()))
    nearest, sampled, again, other = (r["metrics"]["max_abs_logit_error"] for r in records)
    assert [r["truncation_model"] for r in records] == ["nearest", "exact-msb", "exact-msb", "exact-msb"]
    assert sampled == again and sampled != nearest and sampled != other
    assert all(r["metrics"]["top1_agreement"] >= 0.9 and r["bound_violations"] == 0 for r in records)


@pytest.fixture
def empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("  \n")
    return str(p)


BAD = [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "./no/such/dir"], "model directory not found"),
    (["--frac-bits", "64"], "--frac-bits"),
    (["--frac-bits", "20", "--field-bits", "16"], "--frac-bits"),
    (["--field-bits", "129"], "--field-bits must be between 2 and 128"),
    (["--field-bits", "1"], "--field-bits must be between 2 and 128"),
    (["--prime", "91"], "--prime 91 is not prime"),
    (["--prime", "2^127+1"], "below 2^127"),
    (["--prime", "2"], "odd prime"),
    (["--prime", "65521"], "below F_p's 15 value bits"),  # 16 fraction bits do not fit
    (["--prime", "two"], "expected an integer"),
    (["--seq-len", "0"], "must be positive"),
    (["--seq-len", "-4"], "must be positive"),
    (["--seq-len", "abc"], "expected an integer"),
    (["--text", "/no/such/file.txt"], "text file not found"),
    (["--policy", "bogus"], "invalid choice"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_and_status_2(args, message, capsys):
    assert main(["emulate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("truncbridge: error:") and message in err[0]


def test_empty_text_file(empty_file, capsys):
    assert main(["emulate", "--text", empty_file]) == 2
    assert "text file is empty" in capsys.readouterr().err


def test_text_shorter_than_a_window(tmp_path, capsys):
    p = tmp_path / "short.txt"
    p.write_text("Just a few words.")
    assert main(["emulate", "--text", str(p), "--seq-len", "64"]) == 2
    assert "fewer than --seq-len" in capsys.readouterr().err


@pytest.mark.slow  # a process of its own
def test_console_script_reports_errors_without_traceback(tmp_path):
    """Through the real entry point, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "truncbridge", "emulate", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model directory not found" in proc.stderr
