"""The two share-level steps the runner, the truncation protocol and the dealer all take."""
from __future__ import annotations

import torch

from ...core.ring import broadcast_shape


def share_from(ast_cls, value: torch.Tensor | None, size, src: int, rank: int, device=None):
    """Secret-share ``value`` held by ``src`` (int64 ring elements, precision 0); the other
    parties pass only the size: CrypTen's pseudo-random zero shares need no communication."""
    if rank == src:
        return ast_cls(value, precision=0, src=src, device=device)
    return ast_cls(None, size=torch.Size(size), precision=0, src=src, device=device)


def add_public(ast_cls, x, value: torch.Tensor | int, rank: int, at: int = 0):
    """x + a public value (broadcast): one party (``at``) adds it to its share."""
    value = torch.as_tensor(value, dtype=torch.int64)
    share = x.share.expand(broadcast_shape(x.share.shape, value.shape)).clone()
    if rank == at:
        share = share + value
    return ast_cls.from_shares(share, precision=0)
