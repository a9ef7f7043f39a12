"""report --plot: the picture's data is the plan's (one marker per truncation node, one point per
computed value, each at its bound's bits; per-kind costs that add up to plan_costs' totals), and the
command writes a PNG of the size asked for."""
from __future__ import annotations

import struct

import pytest

from truncbridge.analysis.cost import plan_costs
from truncbridge.cli import main
from truncbridge.core.planfile import save_plan
from truncbridge.core.protocols import load_network, load_protocol
from truncbridge.core.waves import input_independent
from truncbridge.plot import kind_costs, plan_series, plot_plans

pytestmark = pytest.mark.slow  # plans of a random model


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """eager and lazy plans of random:llama at 8 tokens, written to files too."""
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import build_plan, convert, plan_config

    converted = convert(load_model("random:llama"), 8, 16)
    folder = tmp_path_factory.mktemp("plans")
    out = []
    for policy in ("eager", "lazy"):
        plan = build_plan(converted, plan_config(policy))
        save_plan(plan, folder / f"{policy}.json")
        out.append((str(folder / f"{policy}.json"), plan))
    return out


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_series_is_the_plan(plans):
    lengths = set()
    for _, plan in plans:
        s = plan_series(plan)
        nodes = plan.program.nodes
        truncs = [n for n in nodes if n.op == "trunc"]
        assert len(s.trunc_x) == len(s.trunc_bits) == plan.counts()["truncations"] == len(truncs) > 0
        assert s.trunc_bits == [plan.bound_bits(plan.program[n.inputs[0]]) for n in truncs]
        static = input_independent(plan.program)
        computed = [n for n in nodes if n.op not in ("trunc", "shl", "input", "output") and n.id not in static]
        assert s.bits == [plan.bound_bits(n) for n in computed]
        assert max(s.bits) <= plan.budget_bits == s.budget_bits  # every value fits the field
        assert all(0 <= x < len(s.x) for x in s.trunc_x)
        lengths.add(len(s.x))
    assert len(lengths) == 1  # one x axis for every plan of one model: placement only inserts
    eager, lazy = (plan_series(p) for _, p in plans)
    assert max(lazy.bits) > max(eager.bits)  # lazy lets values grow before it truncates


def test_kind_costs_add_up_to_the_plan_costs(plans):
    for _, plan in plans:
        total = plan_costs(plan, load_protocol(plan.protocol), load_network("lan"))
        kinds = kind_costs(plan)
        assert {"softmax", "norm", "MLP activation", "linear (matmuls, products)"} <= set(kinds)
        assert sum(k["truncations"] for k in kinds.values()) == plan.counts()["truncations"]
        assert sum(k["critical_rounds"] for k in kinds.values()) == pytest.approx(total.rounds)
        assert sum(k["bytes"] for k in kinds.values()) == pytest.approx(total.bytes)


def test_report_plot_writes_the_png(plans, tmp_path, capsys):
    out = tmp_path / "plan.png"
    assert main(["report", "--plot", str(out), *(path for path, _ in plans)]) == 0
    assert png_size(out) == (1200, 800)  # 12 x 8 inches at 100 dpi
    assert "eager" in capsys.readouterr().out
    small = tmp_path / "small.png"
    plot_plans(plans[:1], str(small), size=(6, 4), dpi=50)
    assert png_size(small) == (300, 200)
