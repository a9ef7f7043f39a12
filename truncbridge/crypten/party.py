"""One MPC party: start CrypTen, watch the other parties, measure and audit communication.

Parties find each other through CrypTen's usual environment (``RANK``, ``WORLD_SIZE``,
``RENDEZVOUS``); ``launch/run_pi.py`` fills it from mpirun. Three things CrypTen does not do:

* **Lost peers.** CrypTen passes no timeout, so torch's 30-minute default would apply to every
  send and receive. ``Party`` sets the process-group timeout (``timeout_s``) before
  ``crypten.init()``, and a watchdog thread beats a counter in the rendezvous store every
  ``HEARTBEAT_S``. A peer whose counter stops for ``silence_s`` is lost: the watchdog prints a
  one-line message naming it and ends this process with ``EXIT_LOST`` — without waiting for the
  blocked receive. A peer that is alive but stalled is caught by the receive timeout; the main
  thread then names the party that made the least progress (communicator calls), and posts an
  abort that ends every party. A dead store host (rank 0) is named too. Plain ``mpirun`` ends
  the job itself ~0.2 s after a rank dies (SIGTERM, then SIGKILL): SIGTERM reaches the watchdog
  through a wakeup pipe even while the main thread is blocked in a receive, and it names the
  dead peer at once — by its process state when on this host, else by its silent heartbeat.
* **Communication statistics.** ``stats()`` is CrypTen's own counter (rounds = communicator calls,
  bytes as CrypTen counts them) for this party.
* **Dealer.** By default the Beaver triples come from ``dealer.RankZeroDealer`` (CrypTen's TFP
  with the dealing done by rank 0 only; CrypTen's makes every party compute and discard them).
* **Audit.** Every tensor this party *receives* is recorded as the fraction of its elements that
  are small (|v| < 2^40). Shares, Beaver openings and truncation openings are uniform in Z_2^64
  (small with probability 2^-23); a revealed intermediate fixed-point value is almost all small.
  Only receipts inside ``revealing_output()`` may be small — checked, not assumed — apart from
  one-time-padded bits (all 0/1, about half ones), which CrypTen's comparisons open in B2A.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from .compat import import_crypten

ROLES = {0: "model owner", 1: "client", 2: "helper"}
HEARTBEAT_S = 0.2
EXIT_LOST = 3
QUICK_SILENCE_S = 2.0  # silence that names a peer once a receive has already failed
SMALL_BITS = 40  # |v| < 2^40: how a leaked fixed-point value looks; uniform shares almost never do
RECEIVING = ("all_reduce", "reduce", "gather", "all_gather", "scatter", "broadcast", "recv")


def _masked_bits(r: dict) -> bool:
    """A one-time-padded bit opening (CrypTen's B2A of a comparison): all 0/1, about half ones."""
    return r["bits"] == r["numel"] and (r["numel"] < 64 or abs(r["ones"] / r["numel"] - 0.5) < 0.2)


def audit_findings(receipts: list[dict]) -> list[str]:
    """Receipts outside the output that look like revealed values: more than 1 % small elements,
    unless they are masked bits."""
    return [f"{r['method']} of {r['numel']} elements, {r['small']} below 2^{SMALL_BITS}"
            for r in receipts if r["label"] != "output" and r["small"] > r["numel"] // 100 and not _masked_bits(r)]


def role(rank: int) -> str:
    return f"party {rank} ({ROLES.get(rank, 'helper')})"


@dataclass
class Receipt:
    label: str  # "protocol" or "output"
    method: str
    numel: int
    small: int  # elements with |v| < 2^SMALL_BITS
    bits: int  # elements that are 0 or 1
    ones: int


@dataclass
class Party:
    timeout_s: float = 60.0
    silence_s: float = 5.0
    audit: bool = False
    dealer: str = "rank0"  # "rank0": dealer.RankZeroDealer; "crypten": CrypTen's own TFP
    receipts: list[Receipt] = field(default_factory=list)

    def __post_init__(self):
        self.crypten = import_crypten()
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._label = "protocol"
        self._calls = 0
        self._stop = threading.Event()
        self._exiting = threading.Lock()
        self._seen: dict[int, tuple[int, float]] = {}  # peer -> (last counter, local time it changed)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Party":
        import torch.distributed.distributed_c10d as c10d

        c10d.default_pg_timeout = timedelta(seconds=self.timeout_s)  # CrypTen passes none
        self.crypten.cfg.communicator.verbose = True  # CrypTen counts rounds / bytes only then
        self.crypten.init()
        if self.dealer == "rank0":
            from .dealer import install_dealer

            install_dealer()
        self._store = c10d._get_default_store()
        self._store.set(f"truncbridge/where/{self.rank}", f"{socket.gethostname()} {os.getpid()}")
        where = {p: self._store.get(f"truncbridge/where/{p}").decode().split() for p in range(self.world_size)}
        self._pids_here = {p: int(pid) for p, (host, pid) in where.items()  # peers on this host: their
                           if p != self.rank and host == socket.gethostname()}  # death is seen in /proc
        self._wrap_communicator()
        self._signals, wakeup = os.pipe()
        os.set_blocking(wakeup, False)
        signal.set_wakeup_fd(wakeup)  # the C-level handler writes here even if Python code is blocked
        signal.signal(signal.SIGTERM, lambda *_: None)
        now = time.monotonic()
        self._seen = {p: (-1, now) for p in range(self.world_size) if p != self.rank}
        self._tick = now
        self._thread = threading.Thread(target=self._watch, name="truncbridge-watchdog", daemon=True)
        self._thread.start()
        return self

    def finish(self) -> None:
        """Orderly end: stop watching, wait for everyone, then shut CrypTen down."""
        self._stop.set()
        self._thread.join()
        self.crypten.communicator.get().barrier()  # nobody tears down the store while others beat
        self.crypten.uninit()

    def fail(self, exc: BaseException) -> None:
        """The main thread hit an error: name the party responsible, tell the others, exit."""
        self._check_dead_here()
        lost = self._wait_for_lost(self.silence_s)
        if lost:
            self._die(lost[0])
        laggard = self._least_progress()
        if laggard is not None:
            self._exit(f"{role(laggard)} stalled: no progress while this party waited {self.timeout_s:g} s")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self._exit(f"{role(self.rank)} failed: {type(exc).__name__}: {first}")

    # -- statistics -------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.crypten.reset_communication_stats()

    def stats(self) -> dict:
        s = self.crypten.communicator.get().get_communication_stats()
        return {"rounds": int(s["rounds"]), "bytes": int(s["bytes"])}

    @contextmanager
    def revealing_output(self):
        """Receipts inside are the revealed result (allowed to be small values)."""
        self._label = "output"
        try:
            yield
        finally:
            self._label = "protocol"

    # -- communicator wrapper ----------------------------------------------------------------
    def _wrap_communicator(self) -> None:
        comm = self.crypten.communicator.get()
        for name in RECEIVING:
            method = getattr(comm, name, None)
            if method is not None:
                setattr(comm, name, self._recording(name, method))

    def _recording(self, name, method):
        def call(*args, **kwargs):
            self._calls += 1
            result = method(*args, **kwargs)
            if self.audit:
                self._record(name, result)
            return result

        return call

    def _record(self, name: str, result) -> None:
        tensors = result if isinstance(result, (list, tuple)) else [result]
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.numel():
                small = int((t.abs() < (1 << SMALL_BITS)).sum())
                ones = int((t == 1).sum())
                self.receipts.append(Receipt(self._label, name, t.numel(), small, int((t == 0).sum()) + ones, ones))

    # -- watchdog ---------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            if select.select([self._signals], [], [], HEARTBEAT_S)[0]:
                self._terminated()
            self._check_dead_here()  # before plain mpirun's teardown (~0.2 s after a death) ends us
            if self._suspended():  # this process was suspended, not its peers
                self._seen = {p: (count, time.monotonic()) for p, (count, _) in self._seen.items()}
            try:
                self._store.add(f"truncbridge/beat/{self.rank}", 1)
                self._store.set(f"truncbridge/calls/{self.rank}", str(self._calls))
                now = time.monotonic()
                for p, (count, since) in self._seen.items():
                    value = self._store.add(f"truncbridge/beat/{p}", 0)
                    if value != count:
                        self._seen[p] = (value, now)
                abort = self._store.add("truncbridge/abort", 0)
                self._tick = now
            except Exception:  # noqa: BLE001 - any store failure means its host is gone
                if self._stop.is_set():
                    return
                self._die(0, "its rendezvous store is unreachable")
            if abort:
                self._exit("another party reported: " + self._store.get("truncbridge/abort_reason").decode(), post=False)
            lost = self._lost_peers(self.silence_s)
            if lost:
                self._die(lost[0])

    def _terminated(self) -> None:
        """The launcher is ending this party, normally because a peer died: say which one, now."""
        if self._suspended():
            self._exit("terminated by the launcher while this party was suspended or stalled", post=False)
        dead = self._dead_here()
        if dead:
            self._exit(f"terminated by the launcher after {role(dead[0])} was lost (its process is gone)", post=False)
        try:
            if self._store.add("truncbridge/abort", 0):
                reason = self._store.get("truncbridge/abort_reason").decode()
                self._exit(f"terminated by the launcher after: {reason}", post=False)
        except Exception:  # noqa: BLE001 - the store's host may be the one that died
            pass
        silent = self._lost_peers(0.0)
        if not silent:
            self._exit("terminated by the launcher", post=False)
        since = self._seen[silent[0]][1]
        self._exit(f"terminated by the launcher after {role(silent[0])} was lost "
                   f"(silent for {time.monotonic() - since:.1f} s)", post=False)

    def _suspended(self) -> bool:
        """The watchdog has not looked for a while: this process was stopped, not its peers."""
        return time.monotonic() - self._tick > 5 * HEARTBEAT_S

    def _dead_here(self) -> list[int]:
        return [p for p in self._pids_here if self._is_dead_here(p)]

    def _check_dead_here(self) -> None:
        dead = self._dead_here()
        if dead:
            self._die(dead[0], "its process is gone")

    def _is_dead_here(self, peer: int) -> bool:
        """True if the peer runs on this host and its process has exited (or is a zombie)."""
        try:
            with open(f"/proc/{self._pids_here[peer]}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    def _lost_peers(self, silence: float) -> list[int]:
        now = self._tick  # as of the watchdog's last look: a suspended process blames nobody
        silent = [(since, p) for p, (count, since) in self._seen.items() if now - since >= silence]
        return [p for _, p in sorted(silent)]  # the one silent longest first

    def _wait_for_lost(self, seconds: float) -> list[int]:
        """Peers silent for QUICK_SILENCE_S (the main thread already saw a failure), waiting up to
        ``seconds`` for one to show."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lost = self._lost_peers(min(self.silence_s, QUICK_SILENCE_S))
            if lost:
                return lost
            time.sleep(HEARTBEAT_S)
        return []

    def _least_progress(self) -> int | None:
        try:
            calls = {p: int(self._store.get(f"truncbridge/calls/{p}")) for p in range(self.world_size)}
        except Exception:  # noqa: BLE001
            return None
        laggard = min(calls, key=calls.get)
        return laggard if calls[laggard] < max(calls.values()) else None

    def _die(self, peer: int, why: str | None = None) -> None:
        since = self._seen.get(peer, (0, time.monotonic()))[1]
        why = why or f"no heartbeat for {time.monotonic() - since:.1f} s"
        self._exit(f"{role(peer)} was lost: {why}")

    def _exit(self, reason: str, post: bool = True) -> None:
        """Say why, tell the other parties (``post``), and end this process at once: a blocked
        receive would otherwise hold it until its timeout."""
        if not self._exiting.acquire(blocking=False):  # the other thread is already ending us
            time.sleep(3600)
        print(f"truncbridge: {role(self.rank)} stops: {reason}", file=sys.stderr, flush=True)
        if post:
            try:
                self._store.set("truncbridge/abort_reason", reason)
                self._store.add("truncbridge/abort", 1)
                if self.rank == 0:  # rank 0 hosts the store: let the others read the reason first
                    time.sleep(5 * HEARTBEAT_S)
            except Exception:  # noqa: BLE001 - best effort: the others have their own watchdogs
                pass
        os._exit(EXIT_LOST)
