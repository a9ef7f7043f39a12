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
            if comm.get().get_rank() == 0:
                a = generate_random_ring_element(size0, device=device)
                b = generate_random_ring_element(size1, device=device)
                c = getattr(torch, op)(a, b, *args, **kwargs)
                return tuple(AST(t, precision=0, src=0) for t in (a, b, c))
            size2 = _result_size(op, size0, size1, *args, **kwargs)
            return tuple(AST(None, size=s, precision=0, src=0, device=device) for s in (size0, size1, size2))

        def square(self, size, device=None):
            if comm.get().get_rank() == 0:
                r = generate_random_ring_element(size, device=device)
                stacked = AST(torch.stack([r, r * r]), precision=0, src=0)
            else:
                stacked = AST(None, size=(2, *size), precision=0, src=0, device=device)
            return stacked[0], stacked[1]

    return RankZeroDealer()


def install_dealer() -> None:
    """Make ``RankZeroDealer`` the provider CrypTen's default configuration (TFP) uses."""
    import crypten.mpc

    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]["TFP"] = make_dealer()
