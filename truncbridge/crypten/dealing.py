"""Connecting the parties to the dealer (see ``dealer.py`` for who deals and why).

``configure(dealer)`` before ``crypten.init()``: a separate dealer takes CrypTen's TTP slot (the
communicator then makes one more process, rank = world size, outside the computing group, and
CrypTen's TTP client receives a generator seed from it). ``install_provider`` after
``crypten.init()`` on each computing party makes a ``DealtProvider`` CrypTen's default provider.
``serve`` is the dealer process's whole life: hand out seeds, then answer party 0's batches of
requests until CrypTen's shutdown says "terminate".
"""
from __future__ import annotations

import pickle

import torch

from .dealer import DEALERS, DealerCore, DealtProvider, _seeded, fresh_seed


def configure(crypten, dealer: str) -> None:
    if dealer not in DEALERS:
        raise ValueError(f"unknown dealer {dealer!r}: choose {' or '.join(DEALERS)}")
    crypten.cfg.mpc.provider = "TTP" if dealer == "separate" else "TFP"


def install_provider(crypten, dealer: str, audit: bool = False) -> DealtProvider:
    """This computing party's provider, registered as CrypTen's default. With ``owner-insecure``
    party 0 keeps a ``DealerCore`` (``provider.core``) holding every party's generator."""
    import torch.distributed as dist

    comm = crypten.communicator.get()
    rank, core = comm.get_rank(), None
    if dealer == "separate":
        from crypten.mpc.provider.ttp_provider import TTPClient

        gen = TTPClient.get().get_generator()  # seeded by the dealer during crypten.init()

        def fetch(requests):
            _send({"requests": requests}, comm.get_ttp_rank(), comm.ttp_group)
            return _recv(comm.get_ttp_rank(), comm.ttp_group)
    elif rank == 0:  # owner-insecure: the owner holds every generator
        seeds = {p: fresh_seed() for p in range(comm.get_world_size())}
        for p in range(1, comm.get_world_size()):
            dist.send(torch.tensor(seeds[p]), dst=p, group=comm.main_group)
        core = DealerCore(seeds, audit=audit)
        gen, fetch = _seeded(seeds[0]), core.deal
    else:
        seed = torch.empty((), dtype=torch.long)
        dist.recv(seed, src=0, group=comm.main_group)
        gen, fetch = _seeded(int(seed)), None
    provider = DealtProvider(rank, gen, fetch, remote=dealer == "separate")
    provider.core = core
    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"][crypten.cfg.mpc.provider] = provider
    return provider


def serve(crypten, audit: bool = False) -> DealerCore:
    """The dealer process, after ``crypten.init()``: seed every party's generator (CrypTen's TTP
    set-up), then deal on request until party 0 says "terminate". Waiting is a blocking gloo
    receive (idle, not spinning): set a long process-group timeout for this process, since the
    parties may compute for minutes between requests; a party that dies resets the connection."""
    import torch.distributed as dist

    comm = crypten.communicator.get()
    seeds = {p: fresh_seed() for p in range(comm.get_world_size())}
    sends = [dist.isend(torch.tensor(seeds[p]), dst=p, group=comm.ttp_group) for p in seeds]
    for s in sends:
        s.wait()
    dist.barrier(group=comm.ttp_group)
    core = DealerCore(seeds, audit=audit)
    while True:
        message = _recv(0, comm.ttp_group)
        if message == "terminate":
            return core
        _send(core.deal(message["requests"]), 0, comm.ttp_group)


def _send(obj, dst: int, group) -> None:
    """CrypTen's ``send_obj`` wire format (size, then pickled bytes), without its statistics:
    dealing is offline and is counted apart (``DealtProvider.offline``)."""
    import torch.distributed as dist

    buf = pickle.dumps(obj)
    size = torch.tensor(len(buf), dtype=torch.int32)
    data = torch.frombuffer(bytearray(buf), dtype=torch.int8)
    for request in [dist.isend(size, dst=dst, group=group), dist.isend(data, dst=dst, group=group)]:
        request.wait()


def _recv(src: int, group):
    """The matching receive (CrypTen's restricted unpickler: tensors and plain data only)."""
    import torch.distributed as dist
    from crypten.common.serial import restricted_loads

    size = torch.tensor(1, dtype=torch.int32)
    dist.irecv(size, src=src, group=group).wait()
    data = torch.empty(size=(int(size),), dtype=torch.int8)
    dist.irecv(data, src=src, group=group).wait()
    return restricted_loads(data.numpy().tobytes())
