"""A party's communicator calls: counted, audited, and delayed as a stated network would delay them.

``Link`` is mixed into ``Party`` (which sets its attributes and calls ``_wrap_communicator`` once
CrypTen is up). Every receiving call of CrypTen's communicator goes through it:

* **Statistics.** ``stats()`` is CrypTen's own counter (rounds = communicator calls, bytes as
  CrypTen counts them) for this party, and the seconds spent inside communicator calls.
* **A stated network.** Kernel delay emulation (netem) is not available on these machines, so
  with ``network`` (``core.protocols.load_network``) each communicator call inside ``on_network()``
  waits, in software, one round trip plus its bytes (sent and received, as CrypTen counts them)
  over the bandwidth, after it returns: every round costs what the cost model charges it. Every
  party waits alike, so the critical path gains one wait per round. Dealing is not delayed.
* **Audit.** With ``audit=True`` every tensor this party receives is logged against the protocol
  step that opened it (``audit.py``); ``audit.findings`` checks each is a share, an opening of a
  secret plus a fresh dealt mask the receiver does not know, or the client's output.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ..core.protocols import network_seconds

RECEIVING = ("all_reduce", "reduce", "gather", "all_gather", "scatter", "broadcast", "recv",
             "broadcast_obj", "recv_obj")


class Link:
    # set by Party: crypten, audit, log, network, _label, _calls, _delaying, comm_s

    def reset_stats(self) -> None:
        self.crypten.reset_communication_stats()
        self.comm_s, self._since = 0.0, time.perf_counter()

    def stats(self) -> dict:
        """Since ``reset_stats``: rounds, bytes, seconds inside communicator calls and seconds in all."""
        s = self.crypten.communicator.get().get_communication_stats()
        return {"rounds": int(s["rounds"]), "bytes": int(s["bytes"]), "comm_s": self.comm_s,
                "seconds": time.perf_counter() - self._since}

    @contextmanager
    def on_network(self, delayed: bool = True):
        """Communicator calls inside wait as the emulated network would make them (if any and
        ``delayed``)."""
        self._delaying = delayed and self.network is not None
        try:
            yield
        finally:
            self._delaying = False

    @contextmanager
    def revealing_output(self, elements: int | None = None):
        """Receipts inside are the revealed result (which only the client may receive); ``elements``: its size,
        where the caller knows it (a generation step's logits) — a receipt of another size is no output then,
        and the audit flags it (a KV cache opened by mistake)."""
        self._label, self._output_elements = "output", elements
        try:
            yield
        finally:
            self._label, self._output_elements = "protocol", None

    @contextmanager
    def audited(self, before_input: bool = False):
        """Log receipts against openings while inside: the online phase, or (``before_input``) the
        weights' phase, before any client input is shared — where the owner may open its weights under
        masks it drew itself."""
        was = self.log.active, self.log.before_input
        self.log.active, self.log.before_input = self.audit, before_input
        try:
            yield
        finally:
            self.log.active, self.log.before_input = was

    # -- communicator wrapper ----------------------------------------------------------------
    def _wrap_communicator(self) -> None:
        comm = self.crypten.communicator.get()
        for name in RECEIVING:
            method = getattr(comm, name, None)
            if method is not None:
                setattr(comm, name, self._recording(name, method))

    def _recording(self, name, method):
        comm = self.crypten.communicator.get()

        def call(*args, **kwargs):
            self._calls += 1
            start, sent = time.perf_counter(), getattr(comm, "comm_bytes", 0)
            result = method(*args, **kwargs)
            if self._delaying:
                time.sleep(network_seconds(self.network, 1, comm.comm_bytes - sent))
            self.comm_s += time.perf_counter() - start
            if self.audit:
                self._record(name, result)
            return result

        return call

    def _record(self, name: str, result) -> None:
        tensors = [t for t in (result if isinstance(result, (list, tuple)) else [result]) if isinstance(t, torch.Tensor)]
        if tensors or result is not None:
            size = sum(t.numel() for t in tensors)
            expected = getattr(self, "_output_elements", None)
            self.log.receive(name, tensors, output=self._label == "output" and expected in (None, size))
