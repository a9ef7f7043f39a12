"""The owner's plan cache (truncbridge.plan_cache): a second build is served from disk, equal to the
first and cheaper; anything the plan depends on (sequence length, policy, a weight, truncbridge's
source) changes the key, so a changed input never gets a stale plan."""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from truncbridge import plan_cache
from truncbridge.pi.options import PiConfig, parse_args
from truncbridge.pi.owner import make_plans
from truncbridge.pipeline import plan_config
from truncbridge.plan_cache import PlanMaker, source_digest

SEQ = 16


@pytest.fixture(scope="module")
def loaded(random_converted):
    return random_converted.loaded


def _config(policy: str = "lazy"):
    return plan_config(policy, frac_bits=16, protocol="crypten-exact-3pc")


def _fingerprint(plan) -> dict:
    """What must survive the round trip through the cache: counts, sites, shifts, bits, config, model."""
    return {"counts": plan.counts(), "sites": list(plan.sites), "config": plan.config, "model": plan.model,
            "shifts": [(n.id, n.inputs[0], n.attrs["shift"]) for n in plan.program.nodes if n.op == "trunc"],
            "bits": [plan.bound_bits(n) for n in plan.program.nodes], "ops": [n.op for n in plan.program.nodes]}


def _cpu_build(maker: PlanMaker, configs) -> tuple[list, float]:
    t = time.process_time()
    plans, hints = [], ()
    for config in configs:
        plans.append(maker.plan(config, hints))
        hints = (plans[-1].sites,)
    return plans, time.process_time() - t


@pytest.mark.slow  # plans a model
def test_second_build_is_served_from_the_cache_equal_and_cheaper(loaded, tmp_path):
    configs = [_config("eager"), _config("lazy")]
    first, built_cpu = _cpu_build(PlanMaker(loaded, SEQ, 16, root=tmp_path), configs)
    again = PlanMaker(loaded, SEQ, 16, root=tmp_path)
    second, cached_cpu = _cpu_build(again, configs)
    assert len(again.hits) == 2 and again.converted is None  # no conversion at all
    for built, cached in zip(first, second):
        assert _fingerprint(cached) == _fingerprint(built)
        state = loaded.model.state_dict()  # the weights re-attached from the model
        assert sorted(cached.program.weights) == sorted(built.program.weights)
        assert all(torch.equal(cached.program.weights[w].double(), state[w].double()) for w in cached.weights)
    assert cached_cpu < built_cpu / 3, (cached_cpu, built_cpu)


def _changed_weight(loaded):
    other = copy.copy(loaded)
    other.model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        next(other.model.parameters()).view(-1)[0] += 2.0 ** -20
    return other


CHANGES = {
    "seq_len": lambda loaded, mp: (PlanMaker(loaded, SEQ // 2, 16), _config()),
    "policy": lambda loaded, mp: (PlanMaker(loaded, SEQ, 16), _config("optimal")),
    "frac_bits": lambda loaded, mp: (PlanMaker(loaded, SEQ, 16), plan_config("lazy", frac_bits=15, protocol="crypten-exact-3pc")),
    "time_limit": lambda loaded, mp: (PlanMaker(loaded, SEQ, 16),
                                      plan_config("lazy", frac_bits=16, protocol="crypten-exact-3pc", time_limit_s=1.0)),
    "relu": lambda loaded, mp: (PlanMaker(loaded, SEQ, 16, relu="smooth"), _config()),
    "calibration_text": lambda loaded, mp: (PlanMaker(loaded, SEQ, 16, calibration_text="some other text"), _config()),
    "weight": lambda loaded, mp: (PlanMaker(_changed_weight(loaded), SEQ, 16), _config()),
    "source": lambda loaded, mp: (mp.setattr(plan_cache, "source_digest", lambda: "0" * 64), PlanMaker(loaded, SEQ, 16),
                                  _config())[1:],
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_change_of_what_the_plan_depends_on_changes_the_key(loaded, monkeypatch, change):
    base = PlanMaker(loaded, SEQ, 16).key(_config())
    assert PlanMaker(loaded, SEQ, 16).key(_config()) == base  # the key is stable
    maker, config = CHANGES[change](loaded, monkeypatch)
    assert maker.key(config) != base


def test_hints_are_part_of_the_key(loaded):
    maker = PlanMaker(loaded, SEQ, 16)
    assert maker.key(_config("optimal"), ([1, 2],)) != maker.key(_config("optimal"), ([1, 3],))


def test_source_digest_follows_the_source_and_data_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "mod.py").write_text("x = 1\n")
    (tmp_path / "sub" / "profile.json").write_text("{}")
    before = source_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "mod.py").write_text("compiled")  # caches are not source
    assert source_digest.__wrapped__(tmp_path) == before
    (tmp_path / "sub" / "profile.json").write_text('{"headroom_bits": 1}')
    assert source_digest.__wrapped__(tmp_path) != before


@pytest.mark.slow  # plans a model
def test_run_pi_owner_reads_its_plans_from_the_cache_and_no_plan_cache_bypasses_it(loaded, tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("TRUNCBRIDGE_CACHE", str(tmp_path))
    config = PiConfig(model="random-llama", seq_len=SEQ, policies=("eager", "lazy", "vanilla"))
    lines = []
    plans, converted = make_plans(config, loaded, 2, lines.append)
    assert converted is not None and not any("from cache" in line for line in lines)
    assert len(list(tmp_path.glob("*.json"))) == 2
    lines.clear()
    again, converted = make_plans(config, loaded, 2, lines.append)
    assert converted is None
    assert [line for line in lines if line.startswith("plans: from cache (key ")] != []
    assert {k: _fingerprint(p) for k, p in again.items()} == {k: _fingerprint(p) for k, p in plans.items()}
    lines.clear()
    fresh = parse_args(["--model", "random-llama", "--seq-len", str(SEQ), "--policy", "eager", "--no-plan-cache"])
    assert fresh.plan_cache is False
    _, converted = make_plans(fresh, loaded, 2, lines.append)
    assert converted is not None and not any("from cache" in line for line in lines)
    assert len(list(tmp_path.glob("*.json"))) == 2  # nor written


@pytest.mark.slow  # plans a model
def test_cli_plan_reads_the_cache_and_writes_the_same_plan_file(tmp_path, monkeypatch, capsys):
    from truncbridge.cli import main

    monkeypatch.setenv("TRUNCBRIDGE_CACHE", str(tmp_path / "cache"))
    args = ["plan", "--model", "random-llama", "--seq-len", str(SEQ), "--policy", "lazy", "-o"]
    outputs = []
    for i, extra in enumerate(([], [], ["--no-plan-cache"])):
        assert main([*args, str(tmp_path / f"p{i}.json"), *extra]) == 0
        outputs.append(("from cache" in capsys.readouterr().err, (tmp_path / f"p{i}.json").read_text()))
    assert [hit for hit, _ in outputs] == [False, True, False]
    strip = lambda text: {k: v for k, v in json.loads(text).items() if k != "solver"}  # noqa: E731 - wall_s differs
    assert strip(outputs[1][1]) == strip(outputs[0][1]) == strip(outputs[2][1])
