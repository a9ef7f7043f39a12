"""The cost model's local-compute term: protocols/compute.json (measured by launch/calibrate_compute.py) parses
and is positive where the models have work, ``report`` prints local compute and the predicted wall, run_pi's
``predictions`` add ``local_s`` and ``wall_model_s`` (the parties sharing this host's cores, the network's
time) and grow with the model's counts."""
from __future__ import annotations

import json

import pytest

from truncbridge.analysis.compute import KINDS, local_seconds, online_counts
from truncbridge.analysis.cost import plan_costs
from truncbridge.core.errors import UserError
from truncbridge.core.protocols import COMPUTE_FILE, load_compute, load_network, load_protocol
from truncbridge.core.waves import input_independent

WORKED = ("matmul", "mul", "truncate", "carried", "local", "source", "wave")  # kinds every transformer pass has


def test_calibration_file_parses_and_says_where_it_was_measured():
    c = load_compute()
    assert set(c["kinds"]) == set(KINDS)
    for kind in WORKED:  # seen by the calibration, and not free
        k = c["kinds"][kind]
        assert k["seen"] and k["per_node_s"] + k["per_element_s"] > 0, kind
    assert c["kinds"]["matmul"]["per_element_s"] > 0 and c["kinds"]["truncate"]["per_element_s"] > 0
    assert c["dispatch_s"] > 0 and c["parties_factor"]["value"] > 0
    assert c["command"].startswith("python launch/calibrate_compute.py") and c["machine"]["cpu"] and c["measured"]
    for fitted in c["fitted_on"]:  # the fit reproduces the passes it was fitted on (one process, no parties_factor)
        assert abs(fitted["predicted_s"] / fitted["wall_s"] - 1) < 0.25, fitted


@pytest.mark.parametrize("broken", ["negative", "missing kind", "not json", "zero factor"])
def test_a_broken_calibration_is_refused_in_one_line(tmp_path, broken):
    doc = json.loads(COMPUTE_FILE.read_text())
    if broken == "negative":
        doc["kinds"]["matmul"]["per_element_s"] = -1e-9
    elif broken == "missing kind":
        del doc["kinds"]["wave"]
    elif broken == "zero factor":
        doc["parties_factor"]["value"] = 0
    path = tmp_path / "compute.json"
    path.write_text("{" if broken == "not json" else json.dumps(doc))
    with pytest.raises(UserError, match="compute.json"):
        load_compute(str(path))


def _online_scalar_products(plan, of_weights: bool) -> int:
    """Scalar products of the matmuls the online pass runs (those with a weight, an input-independent
    operand, or those without), counted here from the nodes' shapes."""
    static = input_independent(plan.program)
    return sum(n.numel * plan.program[n.inputs[0]].shape[-1] for n in plan.program.nodes
               if n.op == "matmul" and n.id not in static and any(i in static for i in n.inputs) == of_weights)


@pytest.mark.slow  # plans of two models
def test_predictions_grow_with_the_model(default_converted, random_converted):
    from truncbridge.pi.owner import predictions
    from truncbridge.pipeline import build_plan, plan_config

    config = plan_config("lazy", field_bits=64, protocol="crypten-exact-2pc")
    small, large = build_plan(random_converted, config), build_plan(default_converted, config)
    calibration = load_compute()
    for plan in (small, large):
        counts = online_counts(plan)
        assert counts["matmul"][1] == _online_scalar_products(plan, of_weights=False)
        assert counts["weight_matmul"][1] == _online_scalar_products(plan, of_weights=True) > 0
        # one message per round on the critical path: the wave schedule and the cost model agree
        assert counts["wave"][0] == plan_costs(plan, load_protocol("crypten-exact-2pc"), load_network("lan")).rounds
        local = local_seconds(counts, calibration)
        assert local["local_s"] == pytest.approx(sum(local["by_kind"].values()))
        assert not local["uncalibrated"]
    p_small, p_large = (predictions(p, 2, "exact", network=load_network("mid")) for p in (small, large))
    assert 0 < p_small["local_s"] < p_large["local_s"]
    assert p_large["wall_model_s"] == pytest.approx(p_large["local_s"] + p_large["network_s"])
    assert "wall_s" not in p_large and {"rounds", "bytes", "network_s"} <= set(p_large)  # results.py's keys kept
    alone, shared = predictions(large, 2, "exact"), predictions(large, 3, "exact", sharing=1.5)
    assert "network_s" not in alone and alone["wall_model_s"] == alone["local_s"]  # loopback: the compute alone
    assert shared["wall_model_s"] == pytest.approx(1.5 * shared["local_s"]) and shared["cpu_sharing"] == 1.5


def test_cpu_sharing_counts_the_computing_parties_on_this_host(monkeypatch):
    from truncbridge.pi.owner import cpu_sharing

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})  # two cores
    assert cpu_sharing([0, 1, 2, 3], parties=3, threads=1) == 1.5  # 3 parties and a dealer (idle online)
    assert cpu_sharing([0, 1, 2], parties=2, threads=1) == 1.0  # a core each
    assert cpu_sharing([0], parties=2, threads=1) == 1.0  # the other party on another host
    assert cpu_sharing([0, 1], parties=2, threads=2) == 2.0  # each party's threads take every core


@pytest.mark.slow  # a plan of a random model
def test_report_prints_local_compute_and_the_predicted_wall(random_converted, tmp_path, capsys):
    from truncbridge.analysis.cost import local_compute
    from truncbridge.cli import main
    from truncbridge.core.planfile import save_plan
    from truncbridge.pipeline import build_plan, plan_config

    plan = build_plan(random_converted, plan_config("eager", field_bits=64, protocol="crypten-exact-2pc"))
    path = str(tmp_path / "eager.json")
    save_plan(plan, path)
    assert main(["report", path, "--network", "mid"]) == 0
    printed = capsys.readouterr().out
    protocol = load_protocol("crypten-exact-2pc")
    local = local_compute(plan, protocol, load_compute())["local_s"]
    network = plan_costs(plan, protocol, load_network("mid")).latency_s
    assert "local compute per party" in printed and f"{local:.3f} s" in printed
    assert "predicted wall on mid = local compute + network" in printed and f"{local + network:.3f} s" in printed
