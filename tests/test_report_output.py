"""What a reader of truncbridge's output sees: progress lines when stderr is not a terminal, every
report row named by its model (and preset), and calibration on a text of the user's choosing."""
from __future__ import annotations

import copy
import json
import time

import pytest

from truncbridge import progress
from truncbridge.cli import main
from truncbridge.core.planfile import save_plan


def test_progress_lines_when_not_on_a_terminal(monkeypatch, capsys):
    """Under capsys stderr is not a terminal: a plain line every PROGRESS_EVERY_S, none after the block."""
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.05)
    with progress.status_line("placing (optimal)") as update:
        update("best 1234 truncated elements")
        time.sleep(0.4)
    with progress.progress_bar(4, "emulating") as advance:
        advance()
        advance()
        time.sleep(0.4)
    lines = capsys.readouterr().err.strip().splitlines()
    time.sleep(0.2)
    assert not capsys.readouterr().err  # the lines stop with the work
    placing = [line for line in lines if line.startswith("placing (optimal): ")]
    emulating = [line for line in lines if line.startswith("emulating: ")]
    assert len(placing) >= 2 and len(emulating) >= 2 and len(placing) + len(emulating) == len(lines)
    assert all(line.endswith(" s, best 1234 truncated elements") for line in placing)
    assert all(line.endswith(" s, 2/4") for line in emulating)


@pytest.fixture(scope="module")
def converted():
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import convert

    return convert(load_model("random:llama"), 8, 16)


@pytest.mark.slow  # plans of a random model
def test_report_rows_name_their_models(converted, tmp_path, capsys):
    """Three plans of two models (one of them at a preset's shapes, as --fake-weights plans are): the
    title says several models are shown and every row names its own."""
    from truncbridge.pipeline import build_plan, plan_config

    eager = build_plan(converted, plan_config("eager"))
    other = copy.copy(eager)
    other.model = {**eager.model, "name": "random:gemma", "preset": "gemma-2b"}
    paths = [str(tmp_path / f"{name}.json") for name in ("a", "b", "c")]
    for path, plan in zip(paths, (eager, build_plan(converted, plan_config("lazy")), other)):
        save_plan(plan, path)
    out = tmp_path / "rows.json"
    assert main(["report", *paths, "--protocol", "crypten-exact-2pc", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plans of 2 models (each row names its own)" in printed
    assert printed.count("random:llama, seq 8") == 2 and printed.count("random:gemma (gemma-2b), seq 8") == 1
    assert [(r["model"], r["preset"]) for r in json.loads(out.read_text())] == \
        [("random:llama", None), ("random:llama", None), ("random:gemma", "gemma-2b")]
    assert main(["report", paths[2]]) == 0  # one plan: its title names the preset too
    assert "truncbridge report — random:gemma (gemma-2b), eager" in capsys.readouterr().out


@pytest.mark.slow  # plans of a random model
def test_calibration_text_is_the_one_given(converted, tmp_path):
    """--calibration-text: the calibration windows are the given text's; the bundled training text
    given explicitly calibrates exactly as the default does; another text calibrates otherwise."""
    from truncbridge.frontend.data import split_pydoc_text
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import calibration_windows, convert, tokenize_windows

    loaded = load_model("random:llama")
    text = " ".join(f"{word} {n}" for n, word in enumerate(["zebra", "quantum", "harbor", "violet"] * 200))
    every = tokenize_windows(loaded.tokenizer, text, 8)
    assert (calibration_windows(loaded.tokenizer, 8, 4, text=text) == every[:: len(every) // 4][:4]).all()
    bundled = convert(loaded, 8, 16, calibration_text=split_pydoc_text()[0])
    assert bundled.maxabs == converted.maxabs
    other = convert(loaded, 8, 16, calibration_text=text)
    assert other.maxabs != converted.maxabs
    path = tmp_path / "calib.txt"
    path.write_text(text)
    plan = tmp_path / "p.json"
    assert main(["plan", "--model", "random:llama", "--seq-len", "8", "--bounds", "calibrated",
                 "--calibration-text", str(path), "-o", str(plan)]) == 0


@pytest.mark.slow  # plans of a random model
def test_report_names_the_costliest_recipe_uses_with_their_ranges(converted, tmp_path, capsys):
    """Each recipe use is one row of ``PlanCosts.recipes``: random:llama's two layers give two softmax
    uses and five rsqrt uses (two norms a layer and the final one), every node a recipe emitted is
    counted in one use (their bytes and truncated elements add up to the per-recipe totals, counted
    apart), a use's own rounds never exceed the rounds of its nodes; report prints the ten that cost
    most on the network, slowest first, each with the range it was fitted on."""
    from truncbridge.analysis.cost import plan_costs
    from truncbridge.core.protocols import load_network, load_protocol
    from truncbridge.pipeline import build_plan, plan_config

    plan = build_plan(converted, plan_config("lazy"))
    mid = load_network("mid")
    costs = plan_costs(plan, load_protocol(plan.protocol), mid)  # as report costs it
    uses = {}
    for use in costs.recipes:
        uses[use.recipe] = uses.get(use.recipe, 0) + 1
    layers = converted.loaded.model.config.num_hidden_layers
    assert uses["softmax"] == layers and uses["rsqrt"] == 2 * layers + 1, uses
    for name, totals in costs.by_recipe.items():
        if name == "(linear)":
            continue
        mine = [u for u in costs.recipes if u.recipe == name]
        assert sum(u.bytes for u in mine) == pytest.approx(totals["bytes"])
        assert sum(u.truncated_elements for u in mine) == totals.get("truncated_elements", 0)
    assert all(0 < u.rounds <= costs.rounds for u in costs.recipes if u.bytes)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    assert main(["report", str(path), "--network", "mid"]) == 0
    printed = capsys.readouterr().out.split("the 10 costliest recipes on mid")[1].splitlines()
    rows = [line.split("│")[1:-1] for line in printed if line.startswith("│")]
    top = costs.most_expensive_recipes(mid)
    assert len(rows) == 10 and [r[0].strip() for r in rows] == [u.recipe for u in top]
    assert [float(r[-1]) for r in rows] == sorted((float(r[-1]) for r in rows), reverse=True)
    first = top[0].params
    assert rows[0][2].strip() == f"[{first['lo']:.4g}, {first['hi']:.4g}]"
