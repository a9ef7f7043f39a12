"""The dealer: correlated randomness from a party that receives nothing but sizes.

Whoever knows a mask learns what it masks: a party that receives openings ``x - a`` must never
know ``a``. So Beaver triples, squares, exact-truncation masks and the material of CrypTen's
comparisons (binary triples, B2A bits, wraps) come from a **dealer** that is not a computing party:

* ``separate`` (default): its own process, the last rank (CrypTen's TTP slot:
  ``crypten.cfg.mpc.provider = "TTP"`` makes the communicator create it). It shares a stream key
  with each party (``randomness.py``: AES-256-CTR, 256-bit keys) and receives only requests from
  party 0 — kinds, sizes, shifts, polynomial degrees and which operands a truncation's opening
  carries (``material.validate`` refuses anything else) — and party 0 gets back its corrections
  (``material.py``). No opening, no share of data reaches it.
* ``owner-insecure``: party 0 — the model owner — holds every stream key and deals. It then knows
  every mask and so every opened value, the client's tokens included. A benchmark setting only
  (CrypTen's default TFP provider works this way).

The plan is static, so the material is dealt **before** the online phase: a first pass records
the request sequence (the dealer answers on demand while it runs); then ``DealtProvider.deal``
fetches everything for the next pass, and the timed pass draws from that queue. A request
that does not match the queue is an error; one beyond it is answered on demand and counted.

Memory stays bounded at any model size: party 0 fetches its corrections in messages of at most
``FETCH_BYTES`` (the dealer holds one message's worth), and each party expands its own draws from
its stream (``material.expand``) ahead of use up to ``window_bytes``; what lies beyond the window
is expanded when it is taken — local work with no communication, moved into the pass and counted
apart (``late``: requests and seconds), so a report can say what of the online wall it is. Party 0's
corrections beyond the window are all dealt before the pass too, but kept on its own disk
(``Spill``: a temporary file, deleted when closed) until taken — its own shares, read back in order.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import randomness
from .material import corrections, expand, layout, request_key, validate

DEALERS = ("separate", "owner-insecure")
FETCH_BYTES = 256 << 20  # party 0's corrections per message from the dealer
WINDOW_BYTES = 1 << 30  # a party's material expanded ahead of use (run_pi --material-window)


class DealerCore:
    """Holds every party's stream; answers requests with party 0's corrections. With
    ``audit``, it keeps every mask it dealt (by dealing index) for the receipt audit."""

    def __init__(self, keys: dict[int, bytes], audit: bool = False):
        self.streams = {p: randomness.stream(key) for p, key in keys.items()}
        self.parties = len(keys)
        self.dealt = 0
        self.masks: dict[int, tuple] | None = {} if audit else None

    def deal(self, requests: list[tuple]) -> list[dict[str, torch.Tensor]]:
        out = []
        for req in requests:
            validate(req, self.parties)
            fixes, masks = corrections(req, expand(req, self.streams), self.parties)
            if self.masks is not None:
                self.masks[self.dealt] = (req, masks)
            self.dealt += 1
            out.append(fixes)
        return out


@dataclass
class Dealt:
    """One request's material as this party holds it, with its dealing index: party 0's
    corrections (``fix``) from the dealer, and its shares once expanded from its stream."""
    index: int
    request: tuple
    fix: dict[str, torch.Tensor] | None = None
    shares: dict[str, torch.Tensor] | None = None


@functools.lru_cache(maxsize=4096)  # a pass asks the same few sizes thousands of times
def material_bytes(req: tuple, rank: int = 0) -> int:
    """The bytes of a request's material party ``rank`` holds (every component it holds at 8 bytes an
    element: not a mask another party draws alone)."""
    randoms, deriveds = layout(req)
    return 8 * sum(torch.Size(c.size).numel() for c in randoms + deriveds if c.drawn_by in (None, rank))


class DealtProvider:
    """CrypTen's provider interface, served from dealt material (see the module docstring)."""

    NAME = "dealt"

    def __init__(self, rank: int, stream, fetch, window_bytes: int = WINDOW_BYTES):
        self.rank, self.stream = rank, stream  # this party's stream, shared with the dealer
        self.fetch = fetch  # rank 0: (requests, the next batch to ask for) -> (its corrections, bytes that travelled)
        self.window_bytes = window_bytes
        self.ready: deque[Dealt] = deque()
        self.issued = 0  # dealing index of the next request
        self.expanded = 0  # of ``ready``, how many (from the front) are expanded
        self.held = 0  # their bytes
        self.online_requests = 0  # answered on demand (not dealt in advance)
        self.offline = {"seconds": 0.0, "bytes": 0, "requests": 0, "spilled_bytes": 0}
        self.late = {"seconds": 0.0, "requests": 0, "bytes": 0}  # expanded on take: beyond the window
        self.spill = Spill()
        self.recording: list | None = None
        self.on_take = None  # the receipt audit's hook: called with each Dealt handed out

    # -- dealing ----------------------------------------------------------------------------------
    def deal(self, requests: list[tuple]) -> None:
        """Fetch the material for ``requests`` now and expand it up to the window (every party calls
        this alike); party 0's corrections beyond the window go to its disk (``Spill``)."""
        t = time.perf_counter()
        batches = _batches(requests, FETCH_BYTES)
        for k, batch in enumerate(batches):
            following = batches[k + 1] if k + 1 < len(batches) else None  # the dealer makes it while this expands
            fixes, travelled = self.fetch(batch, following) if self.rank == 0 else ([None] * len(batch), 0)
            self.offline["bytes"] += travelled
            for req, fix in zip(batch, fixes):
                self.ready.append(Dealt(self.issued, req, fix))
                self.issued += 1
            self._fill()
            for item in list(self.ready)[max(self.expanded, len(self.ready) - len(batch)):]:  # beyond the window
                if isinstance(item.fix, dict):
                    item.fix = self.spill.put(item.fix)
        self.offline["seconds"] += time.perf_counter() - t
        self.offline["requests"] += len(requests)
        self.offline["spilled_bytes"] = self.spill.bytes

    def ready_for_pass(self) -> None:
        """Before a timed pass (after the weights' halves took theirs): expand up to the window again,
        offline, and count late expansion from here."""
        t = time.perf_counter()
        self._fill()
        self.offline["seconds"] += time.perf_counter() - t
        self.reset_late()

    def _fill(self) -> None:
        while self.expanded < len(self.ready):
            item = self.ready[self.expanded]
            size = material_bytes(item.request, self.rank)
            if self.held + size > self.window_bytes:
                return
            self._expand(item)
            self.held += size
            self.expanded += 1

    def _expand(self, item: Dealt) -> None:
        """This party's shares of ``item``: its draws from its stream, and party 0's corrections."""
        drawn = expand(item.request, {self.rank: self.stream})
        item.shares = {name: by_party[self.rank] for name, by_party in drawn.items() if self.rank in by_party}
        item.shares.update((self.spill.get(item.fix) if isinstance(item.fix, list) else item.fix) or {})
        item.fix = None

    @contextmanager
    def recording_requests(self):
        """Record the request sequence of the code run inside (a list, filled as it runs)."""
        self.recording = trace = []
        try:
            yield trace
        finally:
            self.recording = None

    def reset_offline(self) -> None:
        self.offline = {"seconds": 0.0, "bytes": 0, "requests": 0, "spilled_bytes": 0}
        if not self.ready:  # nothing dealt is waiting: a new spill file for what comes
            self.spill.close()
        self.reset_late()
        self.online_requests = 0

    def reset_late(self) -> None:
        self.late = {"seconds": 0.0, "requests": 0, "bytes": 0}

    def _take(self, req: tuple) -> dict[str, torch.Tensor]:
        if self.recording is not None:
            self.recording.append(req)
        if not self.ready:
            self.online_requests += 1
            self.deal([req])
        item = self.ready.popleft()
        if item.request != req:
            raise RuntimeError(f"dealt material out of step: dealt {item.request[:2]}, the protocol asked for {req[:2]}")
        if self.expanded:
            self.expanded -= 1
            self.held -= material_bytes(req, self.rank)
        else:  # beyond the window: expanded now, in the pass
            t = time.perf_counter()
            self._expand(item)
            self.late["seconds"] += time.perf_counter() - t
            self.late["requests"] += 1
            self.late["bytes"] += material_bytes(req, self.rank)
        if self.on_take is not None:
            self.on_take(item)
        return item.shares

    # -- CrypTen's provider functions -----------------------------------------------------------
    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        s = self._take(request_key("additive", size0, size1, op, args, kwargs))
        return _arith(s["a"]), _arith(s["b"]), _arith(s["c"])

    def weight_triple(self, size0, size1, op: str, side: int, owner: int) -> dict:
        """Shares of a Beaver triple for a product whose operand ``side`` the ``owner`` knows (a
        weight): that operand's mask is the owner's draw alone (None on the other parties)."""
        s = self._take(request_key("weight", size0, size1, op, side, owner))
        return {name: s.get(name) for name in ("a", "b", "c")}

    def square(self, size, device=None):
        s = self._take(request_key("square", size))
        return _arith(s["r"]), _arith(s["r2"])

    def generate_binary_triple(self, size0, size1, device=None):
        s = self._take(request_key("binary", size0, size1))
        return _binary(s["a"]), _binary(s["b"]), _binary(s["c"])

    def wrap_rng(self, size, device=None):
        s = self._take(request_key("wraps", size))
        return _arith(s["r"]), _arith(s["theta_r"])

    def B2A_rng(self, size, device=None):
        s = self._take(request_key("B2A", size))
        return _arith(s["rA"]), _binary(s["rB"])

    def truncation_material(self, size, k: int, others: tuple = (), degree: int = 1, other_degrees: tuple = (),
                            pairs: tuple = ()) -> dict:
        """Shares of the exact truncation's material (``truncation.truncation_material``)."""
        return self._take(request_key("trunc", size, k, others, degree, other_degrees, pairs))


class Spill:
    """Party 0's corrections beyond the window, on its own disk until taken: one temporary file
    (unlinked at once: gone with the process), appended in dealing order and read back by handle."""

    def __init__(self):
        self.file, self.bytes = None, 0

    def put(self, fix: dict[str, torch.Tensor]) -> list[tuple]:
        """Write ``fix`` out; its handle: (name, shape, offset) per tensor."""
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="truncbridge-corrections-")
        self.file.seek(0, os.SEEK_END)
        handle = []
        for name, t in fix.items():
            flat = t.to(torch.int64).contiguous().reshape(-1).numpy()
            handle.append((name, tuple(t.shape), self.file.tell()))
            self.file.write(flat.data)
            self.bytes += flat.nbytes
        return handle

    def get(self, handle: list[tuple]) -> dict[str, torch.Tensor]:
        out = {}
        for name, shape, offset in handle:
            out[name] = torch.empty(shape, dtype=torch.int64)
            self.file.seek(offset)
            self.file.readinto(out[name].reshape(-1).numpy().data)
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.bytes = None, 0


def _arith(share: torch.Tensor):
    from crypten.mpc.primitives import ArithmeticSharedTensor

    return ArithmeticSharedTensor.from_shares(share, precision=0)


def _binary(share: torch.Tensor):
    from crypten.mpc.primitives import BinarySharedTensor

    return BinarySharedTensor.from_shares(share)


def _batches(requests: list[tuple], most_bytes: int) -> list[list[tuple]]:
    """``requests`` in consecutive batches of at most ``most_bytes`` of material (one request alone
    may be more)."""
    out, size = [[]], 0
    for req in requests:
        n = material_bytes(req)
        if out[-1] and size + n > most_bytes:
            out.append([])
            size = 0
        out[-1].append(req)
        size += n
    return out if out[0] else []
