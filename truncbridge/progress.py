"""Progress on stderr: a rich bar or live line on a terminal; when stderr is not a terminal — a pipe, a
log — a plain progress line every ``PROGRESS_EVERY_S`` seconds instead, so a long search is never silent."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PROGRESS_EVERY_S = 5.0  # not on a terminal: one progress line this often


@contextmanager
def progress_bar(total: int, label: str):
    """Yield an ``advance()`` callable; the bar goes to stderr and vanishes when done."""
    err = Console(stderr=True)
    if not err.is_terminal:
        done = [0]
        with _progress_lines(label, lambda: f"{done[0]}/{total}"):
            yield lambda: done.__setitem__(0, done[0] + 1)
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


@contextmanager
def status_line(label: str):
    """Yield an ``update(text)`` callable: one live line on stderr (``label: text``), gone when done."""
    err = Console(stderr=True)
    if not err.is_terminal:
        latest = [""]
        with _progress_lines(label, lambda: latest[0]):
            yield lambda text: latest.__setitem__(0, text)
        return
    with err.status(label) as status:
        yield lambda text: status.update(f"{label}: {text}")


@contextmanager
def _progress_lines(label: str, so_far):
    """While the block runs, ``label: N s, <so_far()>`` on stderr every ``PROGRESS_EVERY_S`` seconds:
    a piped or logged run is not silent through a long search."""
    stop, start = threading.Event(), time.perf_counter()

    def tick():
        while not stop.wait(PROGRESS_EVERY_S):
            text = so_far()
            print(f"{label}: {time.perf_counter() - start:.0f} s{', ' + text if text else ''}", file=sys.stderr, flush=True)

    ticker = threading.Thread(target=tick, name="progress lines", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
