"""CrypTen's trusted-first-party dealer, with the dealing done once.

CrypTen's ``TrustedFirstParty`` provider makes *every* party draw a Beaver triple and multiply it
(an int64 matmul for every private matmul), then shares it with ``src=0`` — pseudo-random zero
shares plus rank 0's values — so every party but rank 0 throws its work away. ``RankZeroDealer``
lets rank 0 alone draw and multiply; the others only give the size. The shares, their
distribution and the communication (none) are unchanged; the others' CPU time is saved, which
matters when the parties share cores. Binary triples and the wraps / B2A helpers stay CrypTen's.
Offline cost is not counted either way (as in CrypTen's own TFP numbers).
"""
from __future__ import annotations

import torch

from .shares import share_from


def _result_size(op: str, size0, size1, *args, **kwargs) -> torch.Size:
    """The shape ``op`` gives for these operand shapes, computed on meta tensors (no data)."""
    a = torch.empty(size0, dtype=torch.long, device="meta")
    b = torch.empty(size1, dtype=torch.long, device="meta")
    return getattr(torch, op)(a, b, *args, **kwargs).shape


def make_dealer():
    """A ``RankZeroDealer`` instance (CrypTen must be importable: see ``compat``)."""
    import crypten.communicator as comm
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives import ArithmeticSharedTensor as AST
    from crypten.mpc.provider import TrustedFirstParty

    class RankZeroDealer(TrustedFirstParty):
        NAME = "TFP"

        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            rank, triple = comm.get().get_rank(), (None, None, None)
            if rank == 0:
                a = generate_random_ring_element(size0, device=device)
                b = generate_random_ring_element(size1, device=device)
                triple = (a, b, getattr(torch, op)(a, b, *args, **kwargs))
            sizes = (size0, size1, _result_size(op, size0, size1, *args, **kwargs))
            return tuple(share_from(AST, t, s, 0, rank, device) for t, s in zip(triple, sizes))

        def square(self, size, device=None):
            rank, stacked = comm.get().get_rank(), None
            if rank == 0:
                r = generate_random_ring_element(size, device=device)
                stacked = torch.stack([r, r * r])
            shared = share_from(AST, stacked, (2, *size), 0, rank, device)
            return shared[0], shared[1]

    return RankZeroDealer()


def install_dealer() -> None:
    """Make ``RankZeroDealer`` the provider CrypTen's default configuration (TFP) uses."""
    import crypten.mpc

    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]["TFP"] = make_dealer()
