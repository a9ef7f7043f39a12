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
fetches everything for the next pass at once, and the timed pass draws from that queue. A request
that does not match the queue is an error; one beyond it is answered on demand and counted.
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import randomness
from .material import corrections, expand, request_key, validate

DEALERS = ("separate", "owner-insecure")


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
            validate(req)
            fixes, masks = corrections(req, expand(req, self.streams), self.parties)
            if self.masks is not None:
                self.masks[self.dealt] = (req, masks)
            self.dealt += 1
            out.append(fixes)
        return out


@dataclass
class Dealt:
    """One request's material as this party holds it (its shares), with its dealing index."""
    index: int
    request: tuple
    shares: dict[str, torch.Tensor]


class DealtProvider:
    """CrypTen's provider interface, served from dealt material (see the module docstring)."""

    NAME = "dealt"

    def __init__(self, rank: int, stream, fetch):
        self.rank, self.stream = rank, stream  # this party's stream, shared with the dealer
        self.fetch = fetch  # rank 0: requests -> (its corrections, bytes that travelled for them)
        self.ready: deque[Dealt] = deque()
        self.issued = 0  # dealing index of the next request
        self.online_requests = 0  # answered on demand (not dealt in advance)
        self.offline = {"seconds": 0.0, "bytes": 0, "requests": 0}
        self.recording: list | None = None
        self.on_take = None  # the receipt audit's hook: called with each Dealt handed out

    # -- dealing ----------------------------------------------------------------------------------
    def deal(self, requests: list[tuple]) -> None:
        """Fetch and expand the material for ``requests`` now (every party calls this alike)."""
        t = time.perf_counter()
        fixes, travelled = self.fetch(requests) if self.rank == 0 else ([None] * len(requests), 0)
        for req, fix in zip(requests, fixes):
            drawn = expand(req, {self.rank: self.stream})
            shares = {name: by_party[self.rank] for name, by_party in drawn.items() if self.rank in by_party}
            shares.update(fix or {})
            self.ready.append(Dealt(self.issued, req, shares))
            self.issued += 1
        self.offline["bytes"] += travelled
        self.offline["seconds"] += time.perf_counter() - t
        self.offline["requests"] += len(requests)

    @contextmanager
    def recording_requests(self):
        """Record the request sequence of the code run inside (a list, filled as it runs)."""
        self.recording = trace = []
        try:
            yield trace
        finally:
            self.recording = None

    def reset_offline(self) -> None:
        self.offline = {"seconds": 0.0, "bytes": 0, "requests": 0}
        self.online_requests = 0

    def _take(self, req: tuple) -> dict[str, torch.Tensor]:
        if self.recording is not None:
            self.recording.append(req)
        if not self.ready:
            self.online_requests += 1
            self.deal([req])
        item = self.ready.popleft()
        if item.request != req:
            raise RuntimeError(f"dealt material out of step: dealt {item.request[:2]}, the protocol asked for {req[:2]}")
        if self.on_take is not None:
            self.on_take(item)
        return item.shares

    # -- CrypTen's provider functions -----------------------------------------------------------
    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        s = self._take(request_key("additive", size0, size1, op, args, kwargs))
        return _arith(s["a"]), _arith(s["b"]), _arith(s["c"])

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


def _arith(share: torch.Tensor):
    from crypten.mpc.primitives import ArithmeticSharedTensor

    return ArithmeticSharedTensor.from_shares(share, precision=0)


def _binary(share: torch.Tensor):
    from crypten.mpc.primitives import BinarySharedTensor

    return BinarySharedTensor.from_shares(share)
