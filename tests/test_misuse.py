"""A new user's mistakes, tried on the command line: each is refused with one line on stderr and exit
status 2 before any heavy work (no model built, nothing captured: each case returns in under 3 s once
the libraries are imported), and a mistyped name gets the nearest valid ones."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from truncbridge.cli import main
from truncbridge.frontend.models import SHIPPED

LIMIT_S = 3.0  # per case, on a loaded 2-core box (the checks themselves take milliseconds)


@pytest.fixture(scope="module")
def lazy_plan(tmp_path_factory):
    """A lazy plan of random:llama at 8 tokens, Z_2^64, 16 fraction bits, faithful-2pc."""
    path = tmp_path_factory.mktemp("plan") / "lazy.json"
    assert main(["plan", "--model", "random:llama", "--seq-len", "8", "--policy", "lazy", "--protocol", "faithful-2pc",
                 "-o", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def fake_plan(tmp_path_factory):
    """An eager --fake-weights plan of random:llama at 8 tokens."""
    path = tmp_path_factory.mktemp("plan") / "fake.json"
    assert main(["plan", "--model", "random:llama", "--fake-weights", "--seq-len", "8", "-o", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def no_tokenizer(tmp_path_factory):
    """A checkpoint directory with the default model's config and weights, and no tokenizer files."""
    path = tmp_path_factory.mktemp("ckpt") / "no_tokenizer"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        (path / name).symlink_to(SHIPPED["default"] / name)
    return str(path)


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("a handful of words, far fewer than a window")
    return str(path)


# (argv, what the one line must say); PLAN, FAKE_PLAN, NO_TOKENIZER and TEXT stand for the fixtures above
CASES = [
    # a plan fixes its field, policy, numbers and shapes: a flag that says otherwise is refused
    (["emulate", "--plan", "PLAN", "--field-bits", "128"], "--field-bits 128 differs from the plan's Z_2^64"),
    (["emulate", "--plan", "PLAN", "--policy", "eager"], "--policy eager differs from the plan's lazy"),
    (["emulate", "--plan", "PLAN", "--prime", "2^61-1"], "--prime 2305843009213693951 differs from the plan's Z_2^64"),
    (["emulate", "--plan", "PLAN", "--frac-bits", "12"], "--frac-bits 12 differs from the plan's 16"),
    (["emulate", "--plan", "PLAN", "--protocol", "crypten-2pc"], "--protocol crypten-2pc differs from the plan's faithful-2pc"),
    (["emulate", "--plan", "PLAN", "--headroom", "5"], "--headroom 5 differs from the plan's 0 bits"),
    (["emulate", "--plan", "PLAN", "--bounds", "calibrated"], "--bounds calibrated differs from the plan's static"),
    (["emulate", "--plan", "PLAN", "--objective", "wan"], "--objective wan differs from the plan's elements"),
    (["emulate", "--plan", "PLAN", "--precision-tolerance", "off"], "--precision-tolerance off differs from the plan's 2 bits"),
    (["emulate", "--plan", "PLAN", "--seq-len", "16"], "--seq-len 16 differs from the plan's 8 tokens"),
    (["emulate", "--plan", "PLAN", "--relu", "smooth"], "--relu does not apply with --plan"),
    (["emulate", "--plan", "PLAN", "--time-limit", "5"], "--time-limit does not apply with --plan"),
    (["emulate", "--plan", "PLAN", "--calibration-text", "TEXT"], "--calibration-text does not apply with --plan"),
    (["emulate", "--plan", "PLAN", "--model", "random:gpt2"], "plan was made for model random:llama, not --model random:gpt2"),
    (["emulate", "--plan", "FAKE_PLAN"], "is a --fake-weights plan of random:llama"),
    # a flag that changes nothing under the policy or bounds chosen
    (["emulate", "--objective", "mid", "--policy", "eager"], "--objective mid applies to --policy optimal only"),
    (["compare", "--objective", "lan", "--policies", "eager,lazy"], "--objective lan applies to --policy optimal only"),
    (["emulate", "--margin-bits", "2"], "--margin-bits applies to --bounds calibrated only"),
    (["plan", "--precision-tolerance", "3", "-o", "OUT"], "--precision-tolerance applies to lazy and optimal only"),
    (["emulate", "--seed", "3"], "--seed applies to --mpc-truncation only"),
    (["plan", "--model", "random:llama", "--fake-weights", "--bounds", "calibrated", "-o", "OUT"], "static bounds"),
    # values checked before the model is built
    (["emulate", "--objective", "fast", "--policy", "optimal"], "--objective: unknown network 'fast'"),
    (["plan", "--objective", "wna", "--policy", "optimal", "-o", "OUT"], "(did you mean wan?)"),
    (["report", "PLAN", "--network", "lann"], "--network: unknown network 'lann' (did you mean lan?)"),
    (["emulate", "--headroom", "-3"], "--headroom must be >= 0 bits"),
    (["emulate", "--calibration-text", "/no/such/calibration.txt"], "--calibration-text: text file not found"),
    (["plan", "--calibration-text", "TEXT", "-o", "OUT"], "--calibration-text has 20 tokens, fewer than --seq-len 128"),
    (["report", "PLAN", "--plot", "/no/such/dir/plan.png"], "--plot: directory does not exist"),
    # presets and fake weights need a random model
    (["plan", "--preset", "llama-7b", "--fake-weights", "-o", "OUT"], "--preset llama-7b needs --model random:llama"),
    (["plan", "--fake-weights", "-o", "OUT"], "--fake-weights needs --model random:<model_type>"),
    (["plan", "--model", "default", "--preset", "gemma-2b", "-o", "OUT"], "--model random:gemma --preset gemma-2b"),
    (["emulate", "--model", "random:gpt2", "--preset", "llama-7b"], "preset llama-7b is a llama model, not gpt2"),
    # mistyped names: the nearest valid ones
    (["emulate", "--model", "defualt"], "unknown model 'defualt' (did you mean default"),
    (["emulate", "--model", "lama"], "(did you mean random:llama"),
    (["emulate", "--model", "llama-7b"], "(a preset: --model random:llama --preset llama-7b)"),
    (["emulate", "--model", "random:lama"], "unknown model_type 'lama' (did you mean llama"),
    (["emulate", "--policy", "lazzy"], "(did you mean lazy?)"),
    (["emulate", "--protocol", "crypten-2p"], "(did you mean crypten-2pc"),
    (["compare", "--policies", "eager,lazzy"], "unknown policy 'lazzy' (did you mean lazy?)"),
    (["emulat"], "invalid choice: 'emulat'"),
    # what does not convert, refused in one line naming why
    (["emulate", "--model", "random:bark"], "random:bark is an audio model"),
    (["emulate", "--model", "random:t5"], "random:t5 is an encoder-decoder model"),
    (["emulate", "--model", "random:vit"], "random:vit is a vision model"),
    (["emulate", "--model", "random:llava"], "random:llava is a multimodal model"),
    (["emulate", "--model", "random:time_series_transformer"], "neither a causal LM nor a text encoder"),
    # a checkpoint without its tokenizer
    (["emulate", "--model", "NO_TOKENIZER"], "no tokenizer in"),
]


def _argv(args, fixtures, tmp_path):
    swap = {**fixtures, "OUT": str(tmp_path / "out.json")}
    return [swap.get(a, a) for a in args]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_misuse_is_one_line_before_any_work(args, message, request, tmp_path, capsys):
    fixtures = {"PLAN": "lazy_plan", "FAKE_PLAN": "fake_plan", "NO_TOKENIZER": "no_tokenizer", "TEXT": "short_text"}
    # only the fixtures this case names are made (a plan costs seconds; most cases need none)
    argv = _argv(args, {k: request.getfixturevalue(f) for k, f in fixtures.items() if k in args}, tmp_path)
    main(["models"])  # the libraries a case may need, imported before the clock starts
    capsys.readouterr()
    start = time.perf_counter()
    status = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    print(f"{elapsed:.3f} s  {' '.join(args)}")
    assert status == 2
    assert len(err) == 1 and err[0].startswith("truncbridge: error:"), err
    assert message in err[0]
    assert elapsed < LIMIT_S


def test_a_flag_that_is_only_a_limit_is_noted(capsys):
    """--time-limit with no optimal placement changes nothing: said on stderr (a note, not a refusal),
    and the command goes on to its next check (here a mistyped model)."""
    assert main(["emulate", "--time-limit", "5", "--policy", "lazy", "--model", "defualt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "truncbridge: note: --time-limit applies to --policy optimal only: lazy ignores it"
    assert err[1].startswith("truncbridge: error: unknown model 'defualt'") and len(err) == 2


def test_an_empty_tokenizer_is_named(tmp_path, capsys):
    """A checkpoint whose vocabulary files are empty: transformers builds a tokenizer of no tokens."""
    ckpt = tmp_path / "empty_vocab"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).symlink_to(SHIPPED["default-gpt2"] / name)
    (ckpt / "vocab.json").write_text("{}")
    (ckpt / "merges.txt").write_text("#version: 0.2\n")
    assert main(["emulate", "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the tokenizer in {ckpt} is empty" in err[0]


def test_a_model_transformers_cannot_build_is_one_line(monkeypatch, capsys):
    """Whatever a family's constructor raises (NotImplementedError, as bark's did) is one line, exit 2."""
    import transformers

    def refuse(*args, **kwargs):
        raise NotImplementedError("this family has no causal-LM head")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", refuse)
    assert main(["emulate", "--model", "random:llama", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["truncbridge: error: cannot build random:llama: NotImplementedError: this family has no causal-LM head"]


def test_a_preset_too_big_for_memory_is_refused(monkeypatch, capsys):
    """--preset without --fake-weights builds the whole model: its memory estimated from the config first
    (truncbridge/memory.py), and refused when it exceeds the memory available (here pretended to be 100 MB)."""
    from truncbridge import memory

    monkeypatch.setattr(memory, "meminfo_available", lambda: 100_000_000)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    start = time.perf_counter()
    assert main(["plan", "--model", "random:gpt2", "--preset", "gpt2-small", "-o", "/dev/null"]) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan of random:gpt2 at gpt2-small (0.12e9 parameters, --seq-len 128) needs about 2.4 GB" in err[0]
    assert "--fake-weights" in err[0] and elapsed < LIMIT_S


def test_models_lists_what_converts(capsys):
    from truncbridge.frontend.model_types import TESTED_FAMILIES

    assert main(["models", "--types"]) == 0
    rows = [line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines()]
    listed = {name: note for name, note in rows}
    assert [name for name, note in rows if note == "tested"] == list(TESTED_FAMILIES)
    assert set(listed.values()) == {"tested", "text model, untested"}
    assert not {"bark", "t5", "vit", "llava", "whisper", "wav2vec2", "bart"} & set(listed)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "default-gpt2" in out and "random-llama" in out and "--preset llama-7b" in out


def test_without_a_tokenizer_the_message_says_what_was_looked_for(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(SHIPPED["default"], ckpt, ignore=shutil.ignore_patterns("tokenizer*", "*.safetensors"))
    assert main(["plan", "--model", str(ckpt), "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert f"no tokenizer in {ckpt} (looked for tokenizer.json, tokenizer.model" in err
    assert "tokenizer.save_pretrained" in err
    assert not Path(tmp_path / "p.json").exists()
