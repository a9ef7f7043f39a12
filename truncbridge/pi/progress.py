"""run_pi's clock and progress lines: how long a process has run since it was launched (start-up is
measured from there, ``launch_age_s``), rank 0's lines stamped with that age (``Say``: where the
start-up went, in the JSON), and progress during a long pass (``with_progress``: "layer k of n").

A pass prints nothing unless it has run ``PROGRESS_AFTER_S``; then one line at most every
``PROGRESS_EVERY_S``. Counting waves costs one clock read per wave of the batched walk (hundreds per pass).
"""
from __future__ import annotations

import os
import re
import sys
import time

PROGRESS_AFTER_S = 5.0  # a pass shorter than this prints no progress
PROGRESS_EVERY_S = 5.0
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|:|$)")  # model.layers.3.mlp:mm, transformer.h.3...


def launch_age_s() -> float:
    """Seconds since this process was started (the kernel's start time in /proc/self/stat, against the
    boot-time clock it counts from), interpreter start-up and imports included; -1.0 where unknown."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return -1.0


class Say:
    """Rank 0's ``[run_pi]`` lines on stderr; each kept with the process's age (``lines``: the start-up's
    phases as they happened)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.lines: list[tuple[float, str]] = []

    def __call__(self, msg: str) -> None:
        self.lines.append((round(launch_age_s(), 3), msg))
        print(f"[run_pi] {msg}", file=self.stream or sys.stderr, flush=True)


def layer_of(origin: str) -> int | None:
    """The transformer layer a node was lowered from (its ``origin``'s module path), if any."""
    match = LAYER.search(origin or "")
    return int(match.group(1)) if match else None


class _Progress:
    """The state of one runner's progress lines (``with_progress``)."""

    def __init__(self, runner, what: str, say, after_s: float, every_s: float):
        self.runner, self.what, self.say, self.after_s, self.every_s = runner, what, say, after_s, every_s
        self.layers: list[int | None] | None = None  # per wave: the deepest layer it computes
        self.start = self.last = 0.0
        self.wave = 0
        self.preparing = False  # the weights' halves (``prepare``): their exchange is no wave of the pass

    def begin(self) -> None:
        self.start = self.last = time.perf_counter()
        self.wave = 0

    def _wave_layers(self) -> list[int | None]:
        out = []
        for wave in self.runner._waves or ():
            found = [layer_of(n.origin) for n in (*wave.opened, *wave.steps, *wave.local)]
            out.append(max((x for x in found if x is not None), default=None))
        return out

    def tick(self) -> None:
        if self.preparing:
            return
        self.wave += 1
        now = time.perf_counter()
        if now - self.start < self.after_s or now - self.last < self.every_s:
            return
        self.last = now
        if self.layers is None:
            self.layers = self._wave_layers()
        total = len(self.layers) or None
        layer = self.layers[self.wave - 1] if total and self.wave <= total else None
        known = [x for x in self.layers if x is not None]
        where = f"layer {layer + 1} of {max(known) + 1}, " if layer is not None and known else ""
        of = f" of {total}" if total else ""
        self.say(f"  {self.what}: {where}wave {self.wave}{of}, {now - self.start:.1f} s")


def with_progress(runner, what: str, say, after_s: float = PROGRESS_AFTER_S, every_s: float = PROGRESS_EVERY_S):
    """``runner`` (a batched ``PlanRunner``: its ``exchange`` runs once per wave) saying where a long
    pass is; other runners as they are."""
    if not all(hasattr(runner, m) for m in ("exchange", "prepare")) or not getattr(runner, "batch", False):
        return runner
    state = _Progress(runner, what, say, after_s, every_s)
    run, exchange, prepare = runner.run, runner.exchange, runner.prepare

    def counted_run(*args, **kwargs):
        state.begin()
        return run(*args, **kwargs)

    def counted_prepare(*args, **kwargs):
        state.preparing = True
        try:
            return prepare(*args, **kwargs)
        finally:
            state.preparing = False

    def counted_exchange(steps):
        state.tick()
        return exchange(steps)

    runner.run, runner.exchange, runner.prepare = counted_run, counted_exchange, counted_prepare  # shadow the methods
    return runner
