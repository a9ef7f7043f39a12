"""Connecting the parties to the dealer (see ``dealer.py`` for who deals and why).

``configure(dealer)`` before ``crypten.init()``: a separate dealer takes CrypTen's TTP slot (the
communicator then makes one more process, rank = world size, outside the computing group).
``install_provider`` after ``crypten.init()`` on each computing party re-keys CrypTen's own
generators (``randomness.secure_crypten``), receives this party's 256-bit stream key from whoever
deals, and makes a ``DealtProvider`` CrypTen's default provider. ``serve`` is the dealer's dealing:
hand out keys, then answer party 0's batches of requests until CrypTen's shutdown says
"terminate"; ``run_dealer`` is the dealer process's whole life around it.
"""
from __future__ import annotations

import functools
import os
import pickle
import sys
import threading
import time
from datetime import timedelta

import torch

from ...core.errors import first_line
from . import randomness
from .dealer import DEALERS, WINDOW_BYTES, DealerCore, DealtProvider
from .roles import role, stop_process

WATCH_S = 0.2  # how often the dealer looks for an abort in the rendezvous store


def configure(crypten, dealer: str) -> None:
    if dealer not in DEALERS:
        raise ValueError(f"unknown dealer {dealer!r}: choose {' or '.join(DEALERS)}")
    crypten.cfg.mpc.provider = "TTP" if dealer == "separate" else "TFP"


def install_provider(crypten, dealer: str, audit: bool = False, window_bytes: int = WINDOW_BYTES) -> DealtProvider:
    """This computing party's provider, registered as CrypTen's default, after re-keying CrypTen's
    own generators. With ``owner-insecure`` party 0 keeps a ``DealerCore`` (``provider.core``)
    holding every party's stream key."""
    comm = crypten.communicator.get()
    rank, core = comm.get_rank(), None
    randomness.secure_crypten(crypten)
    if dealer == "separate":
        key = randomness.recv_key(comm.get_ttp_rank(), comm.ttp_group)  # sent by serve()

        asked = []  # the requests whose answer the dealer is making while this party expands the last one's

        def fetch(requests, following=None):
            dealer = comm.get_ttp_rank()
            try:
                sent = 0 if asked and asked.pop() is requests else _send({"requests": requests}, dealer, comm.ttp_group)
                fixes, received = _recv(dealer, comm.ttp_group)
                if following:  # asked now: the dealer deals them while this party expands these
                    sent += _send({"requests": following}, dealer, comm.ttp_group)
                    asked.append(following)
            except RuntimeError as exc:  # name the dealer, not this party, as the one lost
                raise DealerLost(f"{role(dealer, comm.get_world_size())} was lost: {first_line(exc)}") from exc
            return fixes, sent + received
    elif rank == 0:  # owner-insecure: the owner holds every stream key
        keys = {p: randomness.new_key() for p in range(comm.get_world_size())}
        for p in range(1, comm.get_world_size()):
            randomness.send_key(keys[p], p, comm.main_group).wait()
        core = DealerCore(keys, audit=audit)
        key, fetch = keys[0], lambda requests, following=None: (core.deal(requests), 0)  # nothing travels
    else:
        key, fetch = randomness.recv_key(0, comm.main_group), None
    provider = DealtProvider(rank, randomness.stream(key), fetch, window_bytes)
    provider.core = core
    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"][crypten.cfg.mpc.provider] = provider
    return provider


class DealerLost(RuntimeError):
    """Party 0's link to the dealer broke while it fetched material."""


def serve(crypten, audit: bool = False, started=None) -> DealerCore:
    """The dealer process, after ``crypten.init()``: complete CrypTen's TTP hand-shake (its client
    waits for a 64-bit seed it would give an MT19937 generator: it gets 0, and the provider that
    would draw from it is replaced), send every party its 256-bit stream key, then deal on request
    until party 0 says "terminate". ``started`` is called once every party has its key. Waiting is
    a blocking gloo receive (idle, not spinning): set a long process-group timeout for this
    process, since the parties may compute for minutes between requests; a party that dies resets
    the connection."""
    import torch.distributed as dist

    comm = crypten.communicator.get()
    parties = range(comm.get_world_size())
    for send in [dist.isend(torch.zeros((), dtype=torch.long), dst=p, group=comm.ttp_group) for p in parties]:
        send.wait()
    dist.barrier(group=comm.ttp_group)
    keys = {p: randomness.new_key() for p in parties}
    for send in [randomness.send_key(keys[p], p, comm.ttp_group) for p in parties]:
        send.wait()
    if started is not None:
        started()
    core = DealerCore(keys, audit=audit)
    while True:
        message, _ = _recv(0, comm.ttp_group)
        if message == "terminate":
            return core
        _send(core.deal(message["requests"]), 0, comm.ttp_group)


def _send(obj, dst: int, group) -> int:
    """CrypTen's ``send_obj`` wire format (size, then pickled bytes), without its statistics:
    dealing is offline and is counted apart (``DealtProvider.offline``). Returns the bytes sent."""
    import torch.distributed as dist

    buf = pickle.dumps(obj)
    size = torch.tensor(len(buf), dtype=torch.int32)
    data = torch.frombuffer(bytearray(buf), dtype=torch.int8)
    for request in [dist.isend(size, dst=dst, group=group), dist.isend(data, dst=dst, group=group)]:
        request.wait()
    return size.element_size() + len(buf)


def _recv(src: int, group) -> tuple[object, int]:
    """The matching receive (CrypTen's restricted unpickler: tensors and plain data only), and
    the bytes received."""
    import torch.distributed as dist
    from crypten.common.serial import restricted_loads

    size = torch.tensor(1, dtype=torch.int32)
    dist.irecv(size, src=src, group=group).wait()
    data = torch.empty(size=(int(size),), dtype=torch.int8)
    dist.irecv(data, src=src, group=group).wait()
    return restricted_loads(data.numpy().tobytes()), size.element_size() + int(size)


DEALER_WAIT = timedelta(days=7)  # the dealer idles while the parties compute; deaths reset its link


def run_dealer(audit: bool = False, linger_s: float = 5.0, startup_s: float = 60.0):
    """The separate dealer's process (the rank after the computing parties): start CrypTen in
    its TTP slot, deal until party 0 shuts down, return its ``DealerCore`` (masks kept when
    ``audit``). It holds no data and receives only sizes. If the computing parties have not all
    joined and taken their keys within ``startup_s`` (one died before ``crypten.init()``), it says
    so and ends instead of waiting out its week-long receive timeout. A thread watches the rendezvous store:
    if a party posts an abort, or party 0's store disappears while dealing is not over, it says
    so and ends the process with ``EXIT_LOST`` instead of waiting — ``linger_s`` (the parties'
    ``silence_s``) after its line, as a computing party does (``Party._linger``)."""
    import torch.distributed.distributed_c10d as c10d

    from .compat import import_crypten

    crypten = import_crypten()
    c10d.default_pg_timeout = DEALER_WAIT
    configure(crypten, "separate")
    me, done = role(int(os.environ.get("RANK", 0))), threading.Event()
    stop = functools.partial(_stop_process, me, linger_s=linger_s)
    starting = threading.Timer(startup_s, stop, args=(f"the computing parties did not all start within {startup_s:g} s",))
    starting.daemon = True
    starting.start()
    crypten.init()
    print(f"truncbridge: {me} pid {os.getpid()} started", file=sys.stderr, flush=True)
    store = c10d._get_default_store()
    threading.Thread(target=_watch_store, args=(store, stop, done), name="truncbridge-dealer-watch", daemon=True).start()
    try:
        core = serve(crypten, audit=audit, started=starting.cancel)
    except RuntimeError as exc:  # the link to a party broke
        if not done.is_set():
            stop(f"{role(0)} was lost: {first_line(exc)}")
    done.set()
    crypten.uninit()
    return core


def _watch_store(store, stop, done: threading.Event) -> None:
    while not done.wait(WATCH_S):
        try:
            if store.add("truncbridge/abort", 0):
                stop("another party reported: " + store.get("truncbridge/abort_reason").decode())
        except Exception:  # noqa: BLE001 - the store lives in party 0's process
            if not done.wait(5 * WATCH_S):  # not the end of a normal run
                stop(f"{role(0)} was lost: its rendezvous store is unreachable")


_stopping = threading.Lock()


def _stop_process(me: str, reason: str, linger_s: float) -> None:
    """Say why, stay ``linger_s``, end the process. Open MPI 5's launcher counts each non-zero exit
    twice and SIGKILLs every rank left once the count reaches the ranks: after a death, the
    dealer's exit alone would end a two-party job before the survivor has named the lost party."""
    # the launcher's SIGTERM (plain mpirun) ends the wait at once: no handler here
    stop_process(_stopping, me, reason, lambda: time.sleep(linger_s))
