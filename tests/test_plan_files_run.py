"""Plan files run where users run plans (issue 28.2): a plan made by ``truncbridge plan`` with its
defaults runs in run_pi (``--plan``, real processes) and as a ``PlanModule``; run_pi refuses, in one
line, a plan made for another model or length or one its truncation cannot run; ``report`` says
when a plan is costed under a protocol it was not made for, and whether that protocol can run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from truncbridge import cli
from truncbridge.backends import RingExecutor, truncation_model_for
from truncbridge.core.errors import UserError
from truncbridge.core.planfile import attach_weights, load_plan, save_plan
from truncbridge.core.protocols import load_protocol
from truncbridge.pi.options import parse_args
from truncbridge.pi.owner import read_plans
from truncbridge.pipeline import build_plan, one_hot, plan_config

from helpers import run_processes

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = Path(sys.executable).parent / "mpirun"
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
SMALL = ["--model", "random-llama", "--seq-len", "16"]
TOKENS = [5, 17, 300, 2, 9, 44, 101, 7, 250, 3, 61, 8, 12, 400, 33, 1]


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory) -> Path:
    """``truncbridge plan`` with its defaults (policy, protocol, field, bounds) on the small model."""
    path = tmp_path_factory.mktemp("plans") / "default.json"
    assert cli.main(["plan", *SMALL, "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def default_lazy_plan(tmp_path_factory) -> Path:
    """The same with --policy lazy: the default profile's headroom decides where it truncates."""
    path = tmp_path_factory.mktemp("plans") / "lazy.json"
    assert cli.main(["plan", *SMALL, "--policy", "lazy", "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize("argv,protocol", [([], "crypten-exact-2pc"), (["--protocol", "faithful-2pc"], "faithful-2pc"),
                                           (["--field-bits", "96"], "faithful-2pc"), (["--prime", "2^61-1"], "faithful-2pc")])
def test_plan_defaults_to_a_profile_crypten_runs(argv, protocol):
    """In Z_2^64 (CrypTen's ring) plan's default profile is one CrypTen's backend runs; a profile
    given, or another field, is kept."""
    from truncbridge.cli_args import parse_args as parse_cli

    assert cli.plan_protocol(parse_cli(["plan", *SMALL, "-o", "p.json", *argv])) == protocol


def emulated(plan_path: Path, ids: list[int]) -> tuple[torch.Tensor, float]:
    """The plan's exact emulation on ``ids`` and the spread of CrypTen's exact truncation model over 8 seeds."""
    plan = load_plan(plan_path)
    from truncbridge.frontend.models import load_model

    loaded = load_model(plan.model["name"])
    attach_weights(plan, loaded.model, loaded.name)
    inputs = {"tokens": one_hot(torch.tensor([ids]), plan.model["vocab"])}
    ex = RingExecutor(plan)
    exact = ex.decode_outputs(ex.run(inputs)[0])[0][0]
    model = truncation_model_for(load_protocol("crypten-exact-2pc"))
    spread = 0.0
    for seed in range(8):
        noisy = RingExecutor(plan, truncation=model, seed=seed)
        spread = max(spread, (noisy.decode_outputs(noisy.run(inputs)[0])[0][0] - exact).abs().max().item())
    return exact, spread


@pytest.mark.slow
@pytest.mark.skipif(not MPIRUN.exists(), reason="mpirun not installed in this environment")
def test_default_plans_run_in_run_pi(default_plan, default_lazy_plan, tmp_path):
    """Owner, client and dealer run the plan files as they are (the defaults' eager, and lazy): the
    plans' truncations, the cost model's rounds, and the revealed logits within the protocol's own
    spread of each plan's emulation."""
    out = tmp_path / "pi.json"
    cmd = [str(MPIRUN), "-n", "3", "--oversubscribe", sys.executable, str(ROOT / "launch" / "run_pi.py"), *SMALL,
           "--plan", str(default_plan), str(default_lazy_plan), "--benchmark-reveal", "--json", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["plan_files"] == [str(default_plan), str(default_lazy_plan)]
    assert [row["policy"] for row in result["rows"]] == ["eager", "lazy"]
    for path, row in zip((default_plan, default_lazy_plan), result["rows"]):
        plan = load_plan(path)
        assert plan.policy == row["policy"] and plan.protocol == "crypten-exact-2pc"  # made with the defaults
        assert row["truncations_executed"] == row["planned_truncations"] == plan.counts()["truncations"]
        assert row["rounds"] == row["predicted"]["rounds_critical_path"] + 1  # + the output's opening
        assert row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9


@pytest.mark.slow
def test_a_default_plan_runs_as_a_plan_module(default_plan, tmp_path):
    """Two parties and the dealer run the same file as a ``PlanModule`` (the owner the full plan, the
    others its redacted copy): the client's output is the emulation's, within the protocol's spread
    (and one LSB of each edge conversion)."""
    redacted = tmp_path / "redacted.json"
    save_plan(load_plan(default_plan), redacted, redacted=True)
    env = {**os.environ, "WORLD_SIZE": "2", "RENDEZVOUS": f"file://{tmp_path / 'rendezvous'}", "DISTRIBUTED_BACKEND": "gloo"}
    party = ROOT / "tests" / "plan_file_party.py"
    run_processes(lambda r: [sys.executable, str(party), str(default_plan), str(redacted), ",".join(map(str, TOKENS)),
                           str(tmp_path / f"out{r}.json")], [{**env, "RANK": str(r)} for r in range(3)], timeout_s=180)
    results = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    assert results[0]["output"] is None  # only the client learns the output
    exact, spread = emulated(default_plan, TOKENS)
    got = torch.tensor(results[1]["output"], dtype=torch.float64)[0]
    assert results[1]["truncations"] == load_plan(default_plan).counts()["truncations"]  # the plan's, no more
    assert (got - exact).abs().max().item() <= 2 * spread + 2.0 ** -14


@pytest.fixture(scope="module")
def plan_files(random_converted, tmp_path_factory) -> dict[str, Path]:
    """Lazy plans of the small model (16 tokens): made for faithful-2pc (no headroom: values up to
    2^63), crypten-exact-2pc (values below 2^62) and crypten-2pc (16 bits of headroom)."""
    folder = tmp_path_factory.mktemp("lazy")
    paths = {}
    for protocol in ("faithful-2pc", "crypten-exact-2pc", "crypten-2pc"):
        paths[protocol] = folder / f"{protocol}.json"
        save_plan(build_plan(random_converted, plan_config("lazy", protocol=protocol)), paths[protocol])
    return paths


def read(random_converted, *argv: str, parties: int = 3) -> dict:
    return read_plans(parse_args([*SMALL, *argv]), random_converted.loaded, parties, lambda msg: None)


def test_run_pi_refuses_a_plan_of_another_length(random_converted, plan_files):
    config = parse_args(["--model", "random-llama", "--seq-len", "8", "--plan", str(plan_files["crypten-exact-2pc"])])
    with pytest.raises(UserError, match="was made for 16 tokens, this run's --seq-len is 8$"):
        read_plans(config, random_converted.loaded, 2, lambda msg: None)


def test_run_pi_reads_the_plans_it_can_run(random_converted, plan_files):
    plans = read(random_converted, "--plan", str(plan_files["crypten-exact-2pc"]))  # a 2PC profile, run by 3 parties
    assert list(plans) == ["lazy"] and plans["lazy"].program.weights  # the owner's full plan, with its weights
    assert list(read(random_converted, "--truncation", "crypten", "--plan", str(plan_files["crypten-2pc"]))) == ["lazy"]


@pytest.mark.parametrize("argv,message", [
    (["--plan", "{faithful-2pc}"], "exact-msb truncation needs |x| < 2^62, and this plan truncates values up to 2^63 "
                                   "→ cannot run: make it with --protocol crypten-exact-3pc"),
    (["--truncation", "crypten", "--plan", "{faithful-2pc}"], "expected failures per forward pass: make it with "
                                                             "--protocol crypten-3pc"),
    (["--plan", "{crypten-exact-2pc}", "{crypten-2pc}"], "are both lazy plans: one plan per policy"),
])
def test_run_pi_refuses_plans_it_cannot_run(random_converted, plan_files, argv, message):
    with pytest.raises(UserError, match="^--plan ") as refused:
        read(random_converted, *[a.format(**{k: str(v) for k, v in plan_files.items()}) for a in argv])
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_run_pi_refuses_a_plan_of_another_model(random_converted, plan_files):
    from truncbridge.frontend.models import load_model

    other = load_model("random:gpt2")
    with pytest.raises(UserError, match="was made for model random:llama, this run's --model is random:gpt2"):
        read_plans(parse_args(["--model", "random:gpt2", "--seq-len", "16", "--plan", str(plan_files["crypten-2pc"])]),
                   other, 2, lambda msg: None)


@pytest.mark.parametrize("argv", [["--policy", "lazy"], ["--policy", "eager,vanilla"]])
def test_plan_files_name_their_own_policies(argv):
    with pytest.raises(UserError, match="--policy may add vanilla only"):
        parse_args([*SMALL, "--plan", "p.json", *argv])
    assert parse_args([*SMALL, "--plan", "p.json", "--policy", "vanilla"]).policies == ("vanilla",)


@pytest.mark.parametrize("flag,value", [("--bounds", "static"), ("--frac-bits", "16"), ("--time-limit", "5")])
def test_planning_flags_do_not_apply_to_plan_files(flag, value):
    with pytest.raises(UserError, match=f"^--plan runs plan files as they were made: {flag} would change how"):
        parse_args([*SMALL, "--plan", "p.json", flag, value])
    assert parse_args([*SMALL, flag, value])  # without --plan they choose how run_pi plans


@pytest.mark.parametrize("protocol,note", [
    (None, None),  # its own profile: no note (the negative control)
    ("faithful-2pc", None),
    ("crypten-exact-2pc", "note: plan made for faithful-2pc (headroom 0 bits); costed under crypten-exact-2pc: its "
                          "exact-msb truncation needs |x| < 2^62, and this plan truncates values up to 2^63 → cannot run"),
    ("crypten-2pc", "note: plan made for faithful-2pc (headroom 0 bits); costed under crypten-2pc: its truncations take "
                    "values up to 2^63; crypten-2pc's probabilistic-local truncation fails with probability about "
                    "|x|/2^64 per element and wants 16 bits of headroom →"),
])
def test_report_says_which_protocol_a_plan_was_made_for(plan_files, protocol, note, capsys, tmp_path):
    out = tmp_path / "report.json"
    assert cli.main(["report", str(plan_files["faithful-2pc"]), *(["--protocol", protocol] if protocol else []),
                     "--json", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    fit = json.loads(out.read_text())["fit"]
    if note is None:
        assert "note:" not in text and fit["warning"] == "" and fit["runnable"]
        return
    assert note in text and fit["warning"] in text
    assert fit["runnable"] == (protocol != "crypten-exact-2pc")
    if protocol == "crypten-2pc":  # the failures the note counts are the cost model's
        assert fit["expected_failures"] == json.loads(out.read_text())["expected_truncation_failures"] > 1


class _Status:
    source = None

    def Get_source(self):  # noqa: N802 - mpi4py's name
        return self.source


class _Comm:
    """Ranks' mailboxes in one process, enough of mpi4py's communicator for ``pi.mpi``'s notices."""

    def __init__(self, boxes: dict, rank: int):
        self.boxes, self.rank = boxes, rank

    def Get_rank(self):  # noqa: N802
        return self.rank

    def Get_size(self):  # noqa: N802
        return len(self.boxes)

    def isend(self, obj, dest, tag):
        self.boxes[dest].append((self.rank, tag, obj))
        return type("Sent", (), {"wait": lambda self: None})()

    def Iprobe(self, source, tag, status=None):  # noqa: N802
        found = [src for src, t, _ in self.boxes[self.rank] if t == tag and source in (src, -1)]
        if found and status is not None:
            status.source = found[0]
        return bool(found)

    def recv(self, source, tag):
        box = self.boxes[self.rank]
        i = next(i for i, (src, t, _) in enumerate(box) if t == tag and src == source)
        return box.pop(i)[2]


@pytest.mark.parametrize("error,status", [(UserError("--plan p.json was made for 8 tokens"), 2),
                                          (RuntimeError("a bug"), 1)])
def test_a_set_up_error_ends_every_rank_with_its_status(monkeypatch, capsys, error, status):
    """The owner's set-up error reaches every waiting rank as one line, and a user's error (a refused
    plan) ends them all with exit status 2, as it ends the owner; anything else with 1."""
    from types import SimpleNamespace

    from truncbridge.pi import mpi

    monkeypatch.setitem(sys.modules, "mpi4py", SimpleNamespace(MPI=SimpleNamespace(Status=_Status, ANY_SOURCE=-1)))
    monkeypatch.setattr(mpi, "POLL_S", 0.0)
    boxes = {r: [] for r in range(4)}
    assert mpi.fail_setup(_Comm(boxes, 0), "party 0 (model owner)", error) == status
    for rank in (1, 2, 3):
        with pytest.raises(mpi.PeerFailed) as failed:
            mpi.wait_for(_Comm(boxes, rank), 0, "plans")
        assert mpi.peer_failed(f"party {rank}", failed.value) == status
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all("failed during set-up" in line or line.startswith("error: ") for line in lines)
    assert all(f"party {r} stops: party 0 (model owner) failed during set-up" in lines[r] for r in (1, 2, 3))


def test_the_plan_summary_says_whether_crypten_runs_it(plan_files):
    from truncbridge.report import on_crypten

    assert on_crypten(load_plan(plan_files["crypten-exact-2pc"])).startswith("runs (exact truncation")
    refused = on_crypten(load_plan(plan_files["faithful-2pc"]))
    assert refused == ("no: values up to 2^63, the exact truncation needs |x| < 2^62: plan with --protocol "
                       "crypten-exact-2pc (or -3pc)")


def test_report_side_by_side_says_which_profiles_run_each_plan(plan_files, tmp_path, capsys):
    out = tmp_path / "rows.json"
    paths = [str(plan_files["faithful-2pc"]), str(plan_files["crypten-exact-2pc"])]
    assert cli.main(["report", *paths, "--json", str(out)]) == 0
    rows = {(Path(r["plan"]).stem, r["protocol"]): r for r in json.loads(out.read_text())}
    cannot = {key for key, r in rows.items() if not r["runnable"]}
    assert cannot == {("faithful-2pc", "crypten-exact-2pc"), ("faithful-2pc", "crypten-exact-3pc")}  # |x| up to 2^63
    assert rows["crypten-exact-2pc", "crypten-2pc"]["short_of_headroom"]  # 2 bits of headroom, 16 wanted
    assert not rows["crypten-exact-2pc", "faithful-2pc"]["fit_warning"].endswith("cannot run")
    assert all(r["made_for"] == Path(r["plan"]).stem for r in rows.values())
    table = capsys.readouterr().out.splitlines()
    assert sum(line.rstrip(" │").endswith("NO") for line in table) == 2  # the two rows, in the runs it? column
