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
  A party that stops on its own then stays ``silence_s`` (``_linger``): Open MPI 5's launcher
  counts each non-zero exit twice and SIGKILLs every rank left once the count reaches the ranks.
* **Measured, audited, delayed communication** (``link.py``): statistics, the receipt audit and
  an emulated network (``network``) on every communicator call.
* **Dealer.** Masks come from a dealer that is no computing party (``dealer.py``): the last
  rank, started with the others (``run_dealer``), or — ``dealer="owner-insecure"``, a benchmark
  setting that lets the owner read the client's data — party 0.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta

from ..backends.crypten.compat import import_crypten
from ..backends.crypten.dealer import WINDOW_BYTES
from ..backends.crypten.dealing import DealerLost, configure, install_provider
from ..backends.crypten.roles import role, stop_process
from ..core.errors import first_line
from .audit import OpeningLog, instrument
from .link import Link

HEARTBEAT_S = 0.2
QUICK_SILENCE_S = 2.0  # silence that names a peer once a receive has already failed
SIGTERM_SILENCE_S = 3 * HEARTBEAT_S  # silence that names a peer when the launcher ends this one


@dataclass
class Party(Link):
    timeout_s: float = 60.0
    silence_s: float = 5.0
    audit: bool = False
    dealer: str = "separate"  # or "owner-insecure" (dealer.py)
    network: dict | None = None  # emulated network (see the module docstring); None: as is
    material_window: int = WINDOW_BYTES  # dealt material expanded ahead of use (``dealer.DealtProvider``)

    def __post_init__(self):
        self.crypten = import_crypten()
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._label = "protocol"
        self._calls = 0
        self._delaying = False
        self.comm_s = 0.0
        self._stop = threading.Event()
        self._exiting = threading.Lock()
        self._seen: dict[int, tuple[int, float]] = {}  # peer -> (last counter, local time it changed)
        self._settled = 0  # ``settle`` calls so far: each waits on its own key

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Party:
        import torch.distributed.distributed_c10d as c10d

        c10d.default_pg_timeout = timedelta(seconds=self.timeout_s)  # CrypTen passes none
        self.crypten.cfg.communicator.verbose = True  # CrypTen counts rounds / bytes only then
        configure(self.crypten, self.dealer)
        self.crypten.init()
        self.provider = install_provider(self.crypten, self.dealer, audit=self.audit, window_bytes=self.material_window)
        self.log = OpeningLog(self.rank)
        if self.audit:
            instrument(self.log)
            self.provider.on_take = self.log.took
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

    def settle(self, what: str) -> None:
        """Wait, idle, until every computing party has got here. Dealing is uneven (party 0 fetches its
        corrections and expands them, the others only their own draws) and may outlast ``timeout_s``,
        the receive timeout that names a stalled peer; a lost peer still ends this wait (the watchdog)."""
        self._settled += 1
        key = f"truncbridge/settled/{what}/{self._settled}"
        self._store.add(key, 1)
        while self._store.add(key, 0) < self.world_size:
            time.sleep(HEARTBEAT_S)

    def fail(self, exc: BaseException) -> None:
        """The main thread hit an error: name the party responsible, tell the others, exit. An
        error of this party's own (not a failed receive) is reported as its own, at once; a lost
        dealer by its name."""
        if isinstance(exc, DealerLost):
            self._exit(str(exc))
        if not _is_link_error(exc):
            self._exit(f"{role(self.rank)} failed: {type(exc).__name__}: {first_line(exc)}")
        self._check_dead_here()
        lost = self._wait_for_lost(self.silence_s)
        if lost:
            self._die(lost[0])
        laggard = self._least_progress()
        if laggard is not None:
            self._exit(f"{role(laggard)} stalled: no progress while this party waited {self.timeout_s:g} s")
        self._exit(f"{role(self.rank)} failed: {type(exc).__name__}: {first_line(exc)}")

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
                for p, (count, _since) in self._seen.items():
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
        """The launcher is ending this party, normally because a peer died: say which one, now (no
        abort to post and no lingering: the launcher ends the others too)."""
        self._exit("terminated by the launcher" + self._blame(), post=False, linger=False)

    def _blame(self) -> str:
        if self._suspended():
            return " while this party was suspended or stalled"
        if dead := self._dead_here():
            return f" after {role(dead[0])} was lost (its process is gone)"
        try:
            if self._store.add("truncbridge/abort", 0):
                return " after: " + self._store.get("truncbridge/abort_reason").decode()
        except Exception:  # noqa: BLE001 - the store's host may be the one that died
            pass
        silent = self._lost_peers(SIGTERM_SILENCE_S)  # a peer that beat just now is not to blame
        if not silent:
            return ""
        return f" after {role(silent[0])} was lost (silent for {time.monotonic() - self._seen[silent[0]][1]:.1f} s)"

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

    def _exit(self, reason: str, post: bool = True, linger: bool = True) -> None:
        """Say why, tell the other parties (``post``), give them time to say why too (``linger``),
        and end this process: a blocked receive would otherwise hold it until its timeout."""
        def then():
            if post:
                with suppress(Exception):  # best effort: the others have their own watchdogs
                    self._store.set("truncbridge/abort_reason", reason)
                    self._store.add("truncbridge/abort", 1)
            if linger:
                self._linger()

        stop_process(self._exiting, role(self.rank), reason, then)

    def _linger(self) -> None:
        """Stay ``silence_s``, the time any party has to notice (at least 1 s: the others read the
        reason from rank 0's store), unless the launcher's SIGTERM (a byte in the pipe) comes first:
        an exit now could make the launcher SIGKILL a slower survivor before it has spoken."""
        select.select([self._signals], [], [], max(self.silence_s, 5 * HEARTBEAT_S))  # retried on EINTR


def _is_link_error(exc: BaseException) -> bool:
    """A failed or timed-out receive (gloo raises RuntimeErrors naming itself) rather than a bug
    or bad input in this party."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "Connection", "Timed out", "timed out", "closed", "Broken pipe",
                                  "MPI_ERR_PROC_FAILED", "MPI_ERR_REVOKED")))  # mpi4py, under ULFM
