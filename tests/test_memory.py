"""Memory known before it is allocated (truncbridge/memory.py): the estimate made from the config alone
agrees with the peak resident set of the real command, a model that will not fit is refused in one
line before anything is built, and ``--memory-check off`` lets it go."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from truncbridge import memory
from truncbridge.cli import main
from truncbridge.frontend import models

LIMIT_S = 3.0  # a refusal, once the libraries are imported (the estimate builds two small models on meta)

# One process imports the libraries once, then forks one child per command: os.wait4 gives each child's
# own peak resident set (which counts the pages it inherited, as a fresh process would hold them).
PROBE = """
import json, os, sys
import transformers, truncbridge.pipeline
from truncbridge.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    pid = os.fork()
    if pid == 0:
        os._exit(main(argv))
    _, status, usage = os.wait4(pid, 0)
    out[name] = {"status": os.waitstatus_to_exitcode(status), "peak": usage.ru_maxrss * 1024,
                 "cpu_s": usage.ru_utime + usage.ru_stime}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory):
    """A 22 M-parameter random Llama as a local checkpoint (3 layers, width 768): its weights are half its
    memory, so an estimate that forgot them would be caught."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("ckpt") / "llama-22m"
    config = LlamaConfig(vocab_size=1024, hidden_size=768, intermediate_size=2048, num_hidden_layers=3,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=128,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(models.DEFAULT_MODEL_DIR).save_pretrained(path)
    shutil.copy(models.DEFAULT_MODEL_DIR / "heldout.txt", path / "heldout.txt")
    return str(path)


def _estimate(command, model, seq_len, windows=0, preset=None, fake_weights=False) -> float:
    shape = memory.model_shape(model, preset)
    return memory.command_estimate(command, shape, seq_len, windows, fake_weights=fake_weights).total


@pytest.mark.slow
def test_estimate_agrees_with_peak_rss(medium_checkpoint, tmp_path):
    """A weights-heavy emulate and a --fake-weights plan of GPT-2-small: each estimate within AGREEMENT
    (0.75-1.5x) of the peak RSS the kernel measured; emulate's --json reports both (its own ru_maxrss
    matching the kernel's)."""
    jsons = {"medium": str(tmp_path / "medium.json")}
    cases = {
        "medium": ["emulate", "--model", medium_checkpoint, "--seq-len", "8", "--windows", "1", "--no-check",
                   "--json", jsons["medium"]],
        "fake": ["plan", "--model", "random:gpt2", "--preset", "gpt2-small", "--fake-weights", "--seq-len", "8",
                 "--no-plan-cache", "-o", str(tmp_path / "fake.json")],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    estimates = {"medium": _estimate("emulate", medium_checkpoint, 8, 1),
                 "fake": _estimate("plan", "random:gpt2", 8, preset="gpt2-small", fake_weights=True)}
    ratios = {}
    for name, run in measured.items():
        assert run["status"] == 0, (name, done.stderr[-2000:])
        ratios[name] = estimates[name] / run["peak"]
    print("estimate / peak RSS:", {k: round(v, 2) for k, v in ratios.items()},
          "CPU s:", {k: round(run["cpu_s"], 1) for k, run in measured.items()})
    lo, hi = memory.AGREEMENT
    assert all(lo <= r <= hi for r in ratios.values()), ratios
    for name, path in jsons.items():
        reported = json.loads(open(path).read())["memory"]
        assert reported["estimate_bytes"] == int(estimates[name])
        assert abs(reported["peak_rss_bytes"] - measured[name]["peak"]) <= 0.05 * measured[name]["peak"]


@pytest.fixture
def no_building(monkeypatch):
    """Any attempt to build or load a model fails the test's command with this line."""
    def refuse(*args, **kwargs):
        raise models.UserError("the model was about to be built")

    monkeypatch.setattr(models, "load_model", refuse)


def test_a_7b_model_without_fake_weights_is_refused_before_building(no_building, capsys):
    """llama-7b's 6.7e9 parameters need ~135 GB under emulate (27 GB of float32 weights alone): refused
    in one line naming the estimate and --fake-weights, before load_model is reached."""
    memory.model_shape("random:llama")  # the libraries imported (Llama's code too): what is timed below is the check
    start = time.perf_counter()
    assert main(["emulate", "--model", "random:llama", "--preset", "llama-7b", "--seq-len", "16"]) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6.74e9 parameters" in err[0] and "needs about 135" in err[0], err
    assert "--fake-weights" in err[0] and "--memory-check off" in err[0] and elapsed < LIMIT_S, (err, elapsed)


def _args(**given):
    defaults = dict(model="random:llama", preset="llama-7b", activations="random", memory_check="on", recipes_error=False)
    return SimpleNamespace(**{**defaults, **given})


def test_fake_weights_pass_the_check_where_whole_weights_do_not(monkeypatch):
    """The same 7B plan: whole weights (4 P + 8 P) exceed 24 GB; --fake-weights (one parameter at a time:
    8 x 131 M bytes) fits."""
    from truncbridge.cli_checks import check_memory

    monkeypatch.setattr(memory, "available_bytes", lambda: (24e9, "MemAvailable"))
    with pytest.raises(models.UserError, match=r"plan of random:llama at llama-7b .* needs about 8\d\.\d GB"):
        check_memory(_args(), "plan", 128)
    facts = check_memory(_args(), "plan", 128, fake_weights=True)
    assert facts["estimate_bytes"] < 3e9 and facts["terms"]["generated weights"] == 8 * 131_072_000


def test_little_memory_refuses_a_small_model_and_memory_check_off_lets_it_go(monkeypatch, no_building, capsys):
    """With 100 MB available (MemAvailable pretended), the 0.2 M-parameter random:llama is refused; with
    --memory-check off it goes on to build the model."""
    monkeypatch.setattr(memory, "meminfo_available", lambda: 100e6)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    argv = ["emulate", "--model", "random:llama", "--seq-len", "8", "--windows", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "needs about 0.5 GB" in err and "more than the 0.1 GB available (MemAvailable)" in err, err
    assert main([*argv, "--memory-check", "off"]) == 2
    assert capsys.readouterr().err.strip() == "truncbridge: error: the model was about to be built"


def test_a_cgroup_limit_below_memavailable_is_what_is_available(tmp_path, monkeypatch):
    """cgroup v2 (memory.max) and v1 (memory.limit_in_bytes): the limit less the usage; unlimited: None."""
    v2, v1, unlimited = (tmp_path / d for d in ("v2", "v1", "unlimited"))
    for folder, files in ((v2, ("memory.max", "memory.current")), (v1, ("memory.limit_in_bytes", "memory.usage_in_bytes")),
                          (unlimited, ("memory.limit_in_bytes", "memory.usage_in_bytes"))):
        folder.mkdir()
        limit = "9223372036854771712" if folder == unlimited else "2000000000"
        (folder / files[0]).write_text(f"{limit}\n")
        (folder / files[1]).write_text("500000000\n")
    assert memory.cgroup_headroom([v2]) == memory.cgroup_headroom([tmp_path / "absent", v1]) == 1.5e9
    assert memory.cgroup_headroom([unlimited]) is None
    monkeypatch.setattr(memory, "meminfo_available", lambda: 20e9)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 1.5e9)
    assert memory.available_bytes() == (1.5e9, "left under the cgroup's limit")


def test_parameters_are_counted_exactly_from_two_small_models():
    """The 1- and 2-layer extrapolation gives the published counts."""
    assert memory.model_shape("random:llama", "llama-7b").params == 6_738_415_616
    assert memory.model_shape("random:gpt2", "gpt2-small").params == 124_439_808


@pytest.fixture(scope="module")
def config_of_7b(tmp_path_factory):
    """A checkpoint folder holding llama-7b's config.json and a tokenizer but no weights: a check that
    read the weights, or built the model, would fail on it rather than refuse."""
    from truncbridge.frontend.models import random_config

    path = tmp_path_factory.mktemp("ckpt") / "llama-7b-config"
    config = random_config("llama", "llama-7b")
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(models.DEFAULT_MODEL_DIR / name, path / name)
    return str(path)


MPIRUN = Path(sys.executable).parent / "mpirun"
RUN_PI = Path(__file__).resolve().parent.parent / "launch" / "run_pi.py"


@pytest.mark.slow
@pytest.mark.skipif(not MPIRUN.exists(), reason="mpirun not installed here")
def test_run_pi_refuses_every_party_before_any_builds(config_of_7b):
    """run_pi of a 7B checkpoint, 2 parties and a dealer: rank 0 refuses in one line with every process's
    estimate before any party builds; the client and the dealer end with exit status 2 naming it."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([str(MPIRUN), "-n", "3", "--oversubscribe", sys.executable, str(RUN_PI), "--model", config_of_7b,
                           "--seq-len", "16", "--policy", "lazy"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    each = "(1 policy, --seq-len 16) on this host (owner 115.2, client 6.8, dealer 2.0 GB)"  # no vanilla: no 4 P arch
    assert len(errors) == 1 and each in errors[0], done.stderr[-3000:]
    assert "more than the" in errors[0] and "fewer parties" in errors[0] and "--memory-check off" in errors[0]
    stops = [line for line in done.stderr.splitlines() if "stops: party 0 (model owner) failed during set-up" in line]
    assert len(stops) == 2 and all("needs about" in line for line in stops), done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_run_pi_rows_carry_each_party_s_peak_and_the_table_each_process_s(capsys):
    """Each row's per-party peak RSS is the one after the policy's last run; the table's memory line
    names every process with its estimate."""
    from truncbridge.pi.results import RunMeasurement, memory_line, policy_row

    def run(peak):
        return RunMeasurement(wall_s=1.0, rounds=3, bytes=10, comm_s=0.5, offline_s=0.1, offline_bytes=5, weights_rounds=1,
                              weights_bytes=2, dealt_requests=4, online_dealer_requests=0, truncations_executed=7,
                              peak_rss_bytes=peak)

    row = policy_row("lazy", 2, [[run(100), run(200)], [run(300), run(250)]])
    assert [p["peak_rss_bytes"] for p in row["per_party"]] == [300, 250]
    line = memory_line({"estimate": {"owner": {"estimate_bytes": 6e8}, "dealer": {"estimate_bytes": 4e8}},
                        "peak_rss_bytes": {"owner": 5.3e8, "dealer": 3.6e8}})
    assert line == "memory: peak RSS in GB per process: owner 0.53 (estimated 0.60), dealer 0.36 (estimated 0.40)"


def test_run_pi_s_constants_are_the_backend_s():
    """memory.py stays light (no backend import for a refusal): its copies of the backend's sizes must agree."""
    from truncbridge.backends.crypten import batched, dealer

    assert (memory.WINDOW_BYTES, memory.FETCH_BYTES, memory.HALVES_PER_MESSAGE) == (
        dealer.WINDOW_BYTES, dealer.FETCH_BYTES, batched.HALVES_PER_MESSAGE)
