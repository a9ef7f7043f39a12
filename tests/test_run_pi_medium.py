"""run_pi at a medium size, by real processes: a 4-layer, 256-wide Llama (3.7 M parameters, a local
checkpoint written by launch/make_random_checkpoint.py), seq 32, two computing parties and the dealer.
Every process stays within the memory run_pi estimated for it before anything was built, and the
client's output is the emulator's. The material window is set small, so most dealt material is
expanded during the pass (``dealer.DealtProvider``): bounded memory must not change a result."""
from __future__ import annotations

import subprocess
import sys

import pytest
from test_run_pi import ROOT, run_json, starts_processes

from truncbridge import memory

MEDIUM = ["--layers", "4", "--hidden", "256", "--heads", "4", "--mlp", "1024"]


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("medium") / "llama-4x256"
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "make_random_checkpoint.py"), str(path), *MEDIUM],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return str(path)


@starts_processes
def test_a_medium_model_runs_within_its_memory_estimate_and_matches_the_emulator(medium_checkpoint, tmp_path):
    result, _ = run_json(tmp_path, 3, "--model", medium_checkpoint, "--seq-len", "32", "--policy", "lazy",
                         "--material-window", "4", "--benchmark-reveal", "--timeout", "120")
    row = result["rows"][0]
    assert row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9
    assert row["rounds"] == row["predicted"]["rounds_critical_path"] + 1
    assert row["online_dealer_requests"] == 0 and row["late_expansion_s"] > 0  # the window held most of it back
    estimates, peaks = result["memory"]["estimate"], result["memory"]["peak_rss_bytes"]
    assert set(peaks) == {"owner", "client", "dealer"}
    lo, hi = memory.AGREEMENT  # the estimate's stated agreement with the kernel's peak
    ratios = {name: estimates[name]["estimate_bytes"] / peak for name, peak in peaks.items()}
    assert all(lo <= r <= hi for r in ratios.values()), ratios
