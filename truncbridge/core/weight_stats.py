"""What the bit-width analysis reads from an owner-known matrix, as numbers.

The static analysis needs, of a weight W, only: max |W|, the largest row and column l1 and l2
norms, and a bound on the spectral norm. ``stats_of`` computes them from a tensor; a full-size plan
without the full model (``frontend.fake_weights``) computes them while each weight exists, a layer
at a time, and keeps only these numbers. The analysis asks through the functions below, which take
a tensor or a ``WeightStats`` alike.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class WeightStats:
    shape: tuple[int, ...]
    max_abs: float
    row_l1: float  # max over rows (the last dim summed) of sum |W_ij|
    col_l1: float  # max over columns (dim -2 summed)
    row_l2: float
    col_l2: float
    spectral: float  # an upper bound: min(Frobenius, sqrt(||W||_1 ||W||_inf)), both >= ||W||_2

    def dim(self) -> int:
        return len(self.shape)

    def transposed(self) -> WeightStats:
        return replace(self, shape=(*self.shape[:-2], self.shape[-1], self.shape[-2]), row_l1=self.col_l1,
                       col_l1=self.row_l1, row_l2=self.col_l2, col_l2=self.row_l2)


ROWS_PER_CHUNK = 1024  # a large matrix is read in row blocks through two reused scratch buffers
SUM_SLACK = 1 + 2**-12
_scratch = threading.local()  # per thread: fresh 100 MB temporaries cost more in page faults than the sums


def _buffers(numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    have = getattr(_scratch, "pair", None)
    if have is None or have[0].numel() < numel:
        _scratch.pair = have = (torch.empty(numel), torch.empty(numel))
    return have


def stats_of(w: torch.Tensor) -> WeightStats:
    """The statistics of a matrix (the last two dims; leading dims are maximised over)."""
    w = w.detach()
    if w.dim() > 2:
        parts = [stats_of(m) for m in w.reshape(-1, *w.shape[-2:])]
        return WeightStats(tuple(w.shape), *(max(getattr(p, f) for p in parts) for f in _FIELDS))
    max_abs_, row_l1_, row_l2_, fro2 = 0.0, 0.0, 0.0, 0.0
    col_l1_ = torch.zeros(w.shape[-1], dtype=torch.float64)
    col_l2sq = torch.zeros(w.shape[-1], dtype=torch.float64)
    absolute, square = _buffers(min(ROWS_PER_CHUNK, w.shape[0]) * w.shape[-1])
    for block in w.split(ROWS_PER_CHUNK):  # float32 sums within a block (widened below), float64 across
        a = torch.abs(block.float(), out=absolute[:block.numel()].view(block.shape))
        squares = torch.mul(a, a, out=square[:block.numel()].view(block.shape))
        max_abs_ = max(max_abs_, a.max().item())
        row_l1_ = max(row_l1_, a.sum(-1).max().item())
        rows2 = squares.sum(-1)
        row_l2_ = max(row_l2_, rows2.max().sqrt().item())
        fro2 += rows2.double().sum().item()
        col_l1_ += a.sum(0).double()
        col_l2sq += squares.sum(0).double()
    s = SUM_SLACK  # float32 (pairwise) summation of up to 2^16 terms errs far below this
    row_l1_, col_l1, row_l2_, col_l2 = (v * s for v in (row_l1_, col_l1_.max().item(), row_l2_,
                                                        col_l2sq.max().sqrt().item()))
    return WeightStats(tuple(w.shape), max_abs_, row_l1_, col_l1, row_l2_, col_l2,
                       min(math.sqrt(fro2) * s, math.sqrt(row_l1_ * col_l1)))


_FIELDS = ("max_abs", "row_l1", "col_l1", "row_l2", "col_l2", "spectral")


def max_abs(v) -> float:
    if isinstance(v, WeightStats):
        return v.max_abs
    return v.abs().max().item() if v.numel() else 0.0


def col_l1(v) -> float:
    """max_j sum_k |v_kj| (a vector: its l1 norm)."""
    if isinstance(v, WeightStats):
        return v.col_l1
    return v.double().abs().sum(-2 if v.dim() >= 2 else 0).max().item()


def row_l1(v) -> float:
    return v.row_l1 if isinstance(v, WeightStats) else v.double().abs().sum(-1).max().item()


def row_col_l2(v) -> tuple[float, float]:
    if isinstance(v, WeightStats):
        return v.row_l2, v.col_l2
    v = v.double()
    return v.norm(dim=-1).max().item(), v.norm(dim=-2).max().item()


def spectral(v) -> float:
    """||v||_2 of a matrix (the largest over leading dims), or a bound on it from statistics."""
    if isinstance(v, WeightStats):
        return v.spectral
    v = v.double()
    gram = v @ v.mT if v.shape[-2] <= v.shape[-1] else v.mT @ v  # the smaller side: 5x faster than an SVD
    top = torch.linalg.eigvalsh(gram)[..., -1].max().item()
    return math.sqrt(max(top, 0.0) * (1 + SPECTRAL_SLACK))


SPECTRAL_SLACK = 2.0**-30  # covers float64 rounding of the Gram matrix and its eigenvalue (both ~n 2^-53 relative)


KEEPING_MOVES = {"aten.clone.default", "aten.alias.default", "aten.view.default", "aten._unsafe_view.default",
                 "aten.reshape.default", "aten.unsqueeze.default"}


def _swaps_last_two(fn: str, args: list, ndim: int) -> bool:
    if fn == "aten.t.default":
        return ndim == 2
    if fn == "aten.transpose.int":
        return sorted(d % ndim for d in args[1:3]) == [ndim - 2, ndim - 1]
    if fn == "aten.permute.default":
        perm = [d % ndim for d in args[1]]
        return perm == [*range(ndim - 2), ndim - 1, ndim - 2]
    return False


def moved(stats: WeightStats, fn: str, args: list, out_shape: tuple[int, ...]) -> WeightStats | None:
    """The statistics after a move of a weight that swaps its last two dims (a transpose) or keeps
    them (a clone, or a view that leaves the last two dims as they were); None for any other."""
    src, out = stats.shape, tuple(out_shape)
    if len(src) >= 2 and _swaps_last_two(fn, args, len(src)):
        return stats.transposed()
    if fn in KEEPING_MOVES and len(out) >= 2 and out[-2:] == src[-2:] and math.prod(out) == math.prod(src):
        return replace(stats, shape=out)
    return None
