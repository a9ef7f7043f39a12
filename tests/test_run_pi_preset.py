"""run_pi's model flags as emulate takes them (--model random:<type> --preset NAME), checked on every rank
before anything is built; the owner's memory check on the preset's shapes; local compute and start-up in
the results; progress lines during a long pass. Unit tests: no process is started (tests/test_run_pi.py
runs the parties)."""
from __future__ import annotations

import re
import time

import pytest

from truncbridge.core.errors import UserError
from truncbridge.pi.options import parse_args

# GPT-2 small, counted by hand from its shapes (V 50257, positions 1024, d 768, 12 layers, head tied):
# embeddings V d + 1024 d, per layer 12 d^2 + 13 d (qkv, proj, 4d MLP, two norms, biases), the final norm 2 d
V, POS, D, LAYERS = 50257, 1024, 768, 12
GPT2_SMALL = V * D + POS * D + LAYERS * (12 * D * D + 13 * D) + 2 * D


def test_a_preset_is_taken_as_emulate_takes_it():
    config = parse_args(["--model", "random:gpt2", "--preset", "gpt2-small", "--policy", "lazy"])
    assert (config.model, config.preset, config.policies) == ("random:gpt2", "gpt2-small", ("lazy",))
    assert parse_args(["--model", "random-llama"]).preset is None  # the alias, no preset


@pytest.mark.parametrize("args,message", [
    (["--preset", "gpt2-small"], "--preset applies to random:<model_type> models only: --model random:gpt2 --preset gpt2-small"),
    (["--model", "random:llama", "--preset", "gpt2-small"], "preset gpt2-small is a gpt2 model, not llama"),
    (["--model", "random:gpt2", "--preset", "gpt-small"], "argument --preset: invalid choice: 'gpt-small'"),
    (["--model", "random:no-such-type"], "no-such-type"),
])
def test_a_bad_model_or_preset_is_one_line_on_every_rank(args, message):
    """Checked in ``parse_args``, the same on every rank: rank 0 prints one line and every rank exits 2
    (``session.main``; under mpirun: tests/test_run_pi.py's bad-argument run), before any model is built."""
    with pytest.raises(UserError, match=re.escape(message)):
        parse_args(args)


def test_the_owners_memory_check_reads_the_presets_shapes(monkeypatch):
    """The estimate counts GPT-2 small's parameters (against the hand count above), and refuses in one line
    where the host has less than the processes on it need — before anything is built."""
    from truncbridge import memory
    from truncbridge.pi.owner import check_memory

    config = parse_args(["--model", "random:gpt2", "--preset", "gpt2-small", "--policy", "lazy"])
    monkeypatch.setattr(memory, "available_bytes", lambda: (1e12, "MemAvailable"))
    estimate = check_memory(config, 2, [0, 1, 2])["estimate"]
    assert estimate["owner"]["terms"]["float model"] == 4 * GPT2_SMALL
    assert "architecture" not in estimate["client"]["terms"]  # no vanilla: the client builds it on meta
    vanilla = check_memory(parse_args(["--model", "random:gpt2", "--preset", "gpt2-small", "--policy", "lazy,vanilla"]),
                           2, [0, 1, 2])["estimate"]
    assert vanilla["client"]["terms"]["architecture"] == 4 * GPT2_SMALL  # vanilla captures the architecture: weights
    small = check_memory(parse_args(["--model", "random:gpt2", "--policy", "lazy"]), 2, [0, 1, 2])["estimate"]
    assert small["owner"]["terms"]["float model"] < 4 * GPT2_SMALL / 100  # the small random:gpt2, not the preset
    monkeypatch.setattr(memory, "available_bytes", lambda: (8e9, "MemAvailable"))
    with pytest.raises(UserError, match=r"run_pi of random:gpt2 --preset gpt2-small \(1 policy, --seq-len 32\) on this "
                                        r"host \(owner \d+\.\d, client \d+\.\d, dealer \d+\.\d GB\) needs about \d+\.\d GB"):
        check_memory(config, 2, [0, 1, 2])


def test_local_compute_is_wall_less_communication_and_start_up_is_rank_0s():
    from truncbridge.pi.results import RunMeasurement, format_table, policy_row, startup

    def party(wall, comm, started=None):
        return RunMeasurement(wall_s=wall, rounds=10, bytes=100, comm_s=comm, offline_s=0.1, offline_bytes=10,
                              weights_rounds=1, weights_bytes=5, dealt_requests=3, online_dealer_requests=0,
                              truncations_executed=4, started_s=started)

    runs = [[party(4.0, 1.5, 30.0), party(4.1, 3.0)], [party(6.0, 1.0, 50.0), party(6.0, 5.5)]]
    row = policy_row("lazy", 2, runs)
    assert row["local_s"] == pytest.approx((2.5 + 5.0) / 2)  # the median over runs of the most of any party
    assert [p["wall_s"] - p["comm_s"] for p in row["per_party"]] == pytest.approx([2.5, 1.1])  # the first run's
    said = type("Said", (), {"lines": [(3.2, "converting m"), (4.0, "  MILP 10/60 s"), (9.5, "running lazy")]})()
    result = {"model": "random:gpt2", "preset": "gpt2-small", "parties": 2, "dealer": "separate", "seq_len": 32,
              "truncation": "exact", "bounds": "static", "threads_per_party": 1, "repeat": 2, "rows": [row],
              "ratios": {}, **startup([row], said)}
    assert result["startup_s"] == 30.0 and result["startup_phases"] == [[3.2, "converting m"], [9.5, "running lazy"]]
    table = format_table(result)
    assert table.startswith("random:gpt2 --preset gpt2-small, 2 computing parties")
    header, line = table.splitlines()[1:3]
    assert line.split()[header.split().index("local_s")] == "3.75"
    assert "start-up: 30.0 s from launch to the first online pass" in table


def test_launch_age_counts_from_the_process_start():
    """Start-up is measured from the kernel's start time of the process: it includes this interpreter's
    imports, so it exceeds the time since this test began."""
    from truncbridge.pi.progress import launch_age_s

    t, age = time.perf_counter(), launch_age_s()
    time.sleep(0.05)
    assert launch_age_s() - age == pytest.approx(time.perf_counter() - t, abs=0.03)
    assert age > 0.5  # pytest and torch were imported before


class Clock:
    """progress.py's clock, moved by the stand-in below: one second per wave."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


class Waves:
    """A stand-in for a batched PlanRunner: ``run`` walks its waves, calling ``exchange`` once each."""

    batch = True

    def __init__(self, waves):
        self._waves, self.at = waves, 0

    def exchange(self, steps):
        Clock.now += 1.0

    def prepare(self):
        self.exchange([])  # the weights' halves: one message before the pass, no wave of it

    def run(self, inputs=None):
        self.prepare()
        for at in range(1, len(self._waves) + 1):
            self.at = at  # the wave being exchanged, counted from 1
            self.exchange([])
        return "out"


def test_progress_lines_only_in_a_long_pass(monkeypatch):
    from truncbridge.core.ir import Node
    from truncbridge.core.waves import Wave
    from truncbridge.pi import progress
    from truncbridge.pi.progress import layer_of, with_progress

    assert [layer_of(o) for o in ("model.layers.3.mlp:mm", "transformer.h.11.attn:bmm", "lm_head:mm", "")] == [3, 11, None,
                                                                                                            None]
    monkeypatch.setattr(progress, "time", Clock)
    waves = [Wave(opened=[Node(i, "mul", (), (1,), origin=f"model.layers.{i // 4}.mlp:mul")]) for i in range(12)]
    lines, runner = [], Waves(waves)
    with_progress(runner, "lazy", lambda line: lines.append(f"{line} at {runner.at}"), after_s=5.5, every_s=3)
    assert runner.run() == "out"
    # the pass begins at 0 s and wave k starts at k s (prepare's message took the first second): lines from 5.5 s,
    # then every 3 s, each naming the wave being exchanged and its layer (4 waves a layer)
    assert lines == ["  lazy: layer 2 of 3, wave 6 of 12, 6.0 s at 6", "  lazy: layer 3 of 3, wave 9 of 12, 9.0 s at 9",
                     "  lazy: layer 3 of 3, wave 12 of 12, 12.0 s at 12"], lines
    quiet = []
    with_progress(Waves(waves), "lazy", quiet.append, after_s=20.0).run()
    assert quiet == []  # a short pass says nothing
