"""An attacker's library: clone torch's CPU MT19937 generator from the draws a party observes.

What it relies on was checked by experiment on torch 2.13 (CPU) — ``tests/test_mt_clone.py`` keeps
each fact as a test — and agrees with PyTorch's source (ATen/core/MT19937RNGEngine.h,
DistributionsHelper.h, TransformationHelper.h, CPUGeneratorImpl.cpp):

* ``g.manual_seed(s)`` keeps ``s & 0xffffffff`` (``init_with_uint32``: ``state[0] = seed & 0xffffffff``),
  so a 64-bit seed is a 32-bit seed; negative seeds wrap the same way.
* The engine is the reference MT19937 (Knuth's ``1812433253`` seeding, ``0x9908b0df`` twist, the
  standard tempering), one 32-bit output at a time.
* ``torch.randint(low, high, size, generator=g)`` is ``(V % range) + low`` per element with
  ``range = high - low`` as uint64, in element order (``cpu_serial_kernel``: no vectorised or
  reordered path, for every size tried up to 10^5 and any shape). ``V`` is ``random64()`` — two
  outputs, **the first one the high half**: ``V = out[2i] << 32 | out[2i + 1]`` — when
  ``range >= 2^28``, and ``random()`` — one 32-bit output — below (torch 2.13 moved the threshold
  from 2^32 to 2^28; FBCODE builds keep 2^32).
* The protocol's ``randint(-2^63, 2^63 - 1)`` has ``range = 2^64 - 1``: ``V % range`` is ``V`` except
  that ``V = 2^64 - 1`` becomes 0, and adding ``-2^63`` flips the top bit. So every int64 draw *is*
  two raw outputs, and 312 consecutive draws are 624 consecutive outputs: MT19937's whole state.

Cloning: untemper 624 consecutive outputs to the words ``x[k .. k + 624)`` of MT19937's recurrence
``x[j] = x[j - 227] ^ twist(x[j - 624], x[j - 623])``; every later word follows, whatever ``k``
(no alignment to torch's 624-word blocks is needed). ``Clone.next_int64(n)`` predicts the next ``n``
draws exactly as ``torch.randint(-2**63, 2**63 - 1, (n,), generator=g)`` returns them.
"""
from __future__ import annotations

import numpy as np
import torch

N, M = 624, 397  # state words; the recurrence's middle tap
LAG = N - M  # 227: a chunk of at most this many new words depends only on known ones
MATRIX_A = np.uint32(0x9908B0DF)
UPPER, LOWER = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
WIDE_RANGE = 1 << 28  # torch 2.13 CPU: a range at least this wide takes random64(), two outputs
DRAWS_FOR_STATE = N // 2  # 312 int64 draws = 624 outputs
TOP = np.uint64(1 << 63)
ALL_ONES = np.uint64(2**64 - 1)


def _u32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint32)


def temper(y) -> np.ndarray:
    y = _u32(y).copy()
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


def _undo_right(y: np.ndarray, shift: int) -> np.ndarray:
    """Inverse of ``y ^= y >> shift``."""
    x = y.copy()
    for _ in range(32 // shift):
        x = y ^ (x >> np.uint32(shift))
    return x


def _undo_left(y: np.ndarray, shift: int, mask: int) -> np.ndarray:
    """Inverse of ``y ^= (y << shift) & mask``."""
    x = y.copy()
    for _ in range(32 // shift):
        x = y ^ ((x << np.uint32(shift)) & np.uint32(mask))
    return x


def untemper(y) -> np.ndarray:
    """The state word behind each tempered 32-bit output (vectorised)."""
    x = _undo_right(_u32(y), 18)
    x = _undo_left(x, 15, 0xEFC60000)
    x = _undo_left(x, 7, 0x9D2C5680)
    return _undo_right(x, 11)


def _twist(lo_word: np.ndarray, next_word: np.ndarray) -> np.ndarray:
    y = (lo_word & UPPER) | (next_word & LOWER)
    return (y >> np.uint32(1)) ^ np.where((y & np.uint32(1)).astype(bool), MATRIX_A, np.uint32(0))


def words_of_int64(draws) -> np.ndarray:
    """The 32-bit outputs behind int64 draws of ``randint(-2^63, 2^63 - 1)``, in stream order
    (high half first). Exact except for a draw of -2^63, which also comes from V = 2^64 - 1
    (probability 2^-64 per draw); that case is read as V = 0."""
    v = np.ascontiguousarray(_numpy(draws).reshape(-1)).view(np.uint64) ^ TOP
    out = np.empty(2 * v.size, dtype=np.uint32)
    out[0::2] = (v >> np.uint64(32)).astype(np.uint32)
    out[1::2] = (v & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return out


def int64_of_words(words) -> np.ndarray:
    """torch's int64 draws of ``randint(-2^63, 2^63 - 1)`` from consecutive outputs (pairs)."""
    w = _u32(words).astype(np.uint64)
    v = (w[0::2] << np.uint64(32)) | w[1::2]
    v[v == ALL_ONES] = 0  # V % (2^64 - 1)
    return (v ^ TOP).view(np.int64)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class Clone:
    """A copy of an MT19937 generator's future: built from 624 consecutive untempered words, it
    emits what the generator emits next (tempered 32-bit outputs, or torch's draws of them)."""

    def __init__(self, state_words):
        x = _u32(state_words)
        if x.shape != (N,):
            raise ValueError(f"need {N} consecutive state words, got {x.shape}")
        self._x = x.copy()  # the last 624 words of the recurrence, oldest first
        self.words_emitted = 0

    @classmethod
    def from_outputs(cls, outputs) -> Clone:
        """From 624 consecutive tempered 32-bit outputs (the first of them at any stream position)."""
        return cls(untemper(outputs))

    def next_raw(self, n: int) -> np.ndarray:
        """The next ``n`` tempered 32-bit outputs."""
        if n <= 0:
            return np.empty(0, dtype=np.uint32)
        buf = np.empty(N + n, dtype=np.uint32)
        buf[:N] = self._x
        at = N
        while at < N + n:  # x[j] = x[j - 227] ^ twist(x[j - 624], x[j - 623]), up to 227 words at once
            end = min(at + LAG, N + n)
            buf[at:end] = buf[at - LAG:end - LAG] ^ _twist(buf[at - N:end - N], buf[at - N + 1:end - N + 1])
            at = end
        self._x = buf[-N:].copy()
        self.words_emitted += n
        return temper(buf[N:])

    def skip(self, n: int) -> Clone:
        """Skip ``n`` int64 draws of the full 64-bit range (2n outputs)."""
        self.next_raw(2 * n)
        return self

    def skip_words(self, n: int) -> Clone:
        self.next_raw(n)
        return self

    def next_int64(self, n: int) -> torch.Tensor:
        """The next ``n`` draws of ``torch.randint(-2**63, 2**63 - 1, (n,), generator=g)``."""
        return torch.from_numpy(int64_of_words(self.next_raw(2 * n)).copy())

    def next_randint(self, low: int, high: int, size) -> torch.Tensor:
        """The next ``torch.randint(low, high, size, generator=g)`` (int64), for any range."""
        size = (size,) if isinstance(size, int) else tuple(size)
        n = int(np.prod(size, dtype=np.int64))
        span = (high - low) % 2**64
        if span >= WIDE_RANGE:
            w = self.next_raw(2 * n).astype(np.uint64)
            v = ((w[0::2] << np.uint64(32)) | w[1::2]) % np.uint64(span)
        else:
            v = self.next_raw(n).astype(np.uint64) % np.uint64(span)
        out = (v + np.uint64(low % 2**64)).view(np.int64)
        return torch.from_numpy(out.copy()).reshape(size)


def clone(draws, start: int = 0) -> Clone:
    """A clone of the generator that produced ``draws`` (int64 draws of the full 64-bit range, any
    shape, read in element order): it uses the 312 draws from ``start`` and is positioned right
    after them — its ``next_int64`` predicts ``draws[start + 312:]`` and whatever follows."""
    flat = _numpy(draws).reshape(-1)
    window = flat[start:start + DRAWS_FOR_STATE]
    if window.size != DRAWS_FOR_STATE:
        raise ValueError(f"need {DRAWS_FOR_STATE} consecutive draws from {start}, have {window.size}")
    return Clone.from_outputs(words_of_int64(window))


# -- seeds: 32 bits -----------------------------------------------------------------------------

INIT_MULT = 1812433253
INIT_MULT_INV = pow(INIT_MULT, -1, 2**32)


def _init_step_back(word: int, j: int) -> int:
    """state[j - 1] from state[j] of the seeding recurrence state[j] = 1812433253 * (s ^ s >> 30) + j."""
    t = ((word - j) * INIT_MULT_INV) % 2**32  # = s ^ (s >> 30)
    return t ^ (t >> 30)


def _untwist(y: int) -> int:
    """z from y = twist's (z >> 1) ^ (MATRIX_A if z & 1): MATRIX_A's top bit tells whether it went in."""
    return (((y ^ int(MATRIX_A)) << 1) | 1) & 0xFFFFFFFF if y & 0x80000000 else (y << 1) & 0xFFFFFFFF


def seed_of_first_outputs(outputs) -> int:
    """The 32-bit seed of a stream, from its **first** 624 outputs after ``manual_seed``: they are
    the tempered first twist of the seeding array x[0..624), i.e. x[624 + i]. For j >= 227,
    x[624 + j] ^ x[397 + j] = twist(x[j], x[j + 1]) has both terms observed, and gives x[j]'s top
    bit and x[j + 1]'s low 31 bits; the seeding recurrence then runs back from x[j + 1] to x[0]."""
    x = untemper(outputs)
    if x.shape != (N,):
        raise ValueError(f"need the first {N} outputs, got {x.shape}")
    j = 300
    low = _untwist(int(x[j] ^ x[j - LAG])) & 0x7FFFFFFF  # x[j + 1]'s low 31 bits
    top = _untwist(int(x[j + 1] ^ x[j + 1 - LAG])) & 0x80000000  # x[j + 1]'s top bit
    word = top | low
    for k in range(j + 1, 0, -1):
        word = _init_step_back(word, k)
    return word


def first_int64_of_seeds(seeds) -> np.ndarray:
    """The first ``randint(-2^63, 2^63 - 1)`` draw after ``manual_seed(s)`` for every seed ``s``
    (vectorised over seeds): outputs 0 and 1 need only seeding words 0, 1, 2, 397 and 398 — the
    unit cost of a seed-guessing (meet-in-the-middle) attack: 399 steps of the seeding recurrence."""
    s = _u32(seeds).copy()
    kept = {0: s}
    with np.errstate(over="ignore"):
        for j in range(1, M + 2):
            s = np.uint32(INIT_MULT) * (s ^ (s >> np.uint32(30))) + np.uint32(j)
            if j in (1, 2, M, M + 1):
                kept[j] = s
    o0 = temper(kept[M] ^ _twist(kept[0], kept[1]))
    o1 = temper(kept[M + 1] ^ _twist(kept[1], kept[2]))
    return int64_of_words(np.stack([o0, o1], axis=1).reshape(-1))


# -- cloning from draws a few of which are off -------------------------------------------------------

def recover_draws(observed, tail: int = 0, fixes=(1,), verify: int = 2048, max_off: float = 0.02) -> torch.Tensor | None:
    """The raw draws behind ``observed`` — consecutive int64 draws of one MT19937 stream, except
    that at a few unknown positions ``raw = observed + fix`` (``fix`` in ``fixes``) — followed by the
    ``tail`` draws the stream makes next; ``None`` if the observations are not such a stream.

    The attack's primitive: an opening ε = onehot − a_0 − a_1 gives party 0, who knows a_0,
    ``−(ε + a_0) = a_1 − onehot``: party 1's raw draws except −1 where a token sits. A clone is
    taken from the first 312 observations, as they are or with one of them fixed (so at most one
    token may sit among the first 312 entries: true when the vocabulary is larger than 312), and
    accepted when, over the next ``verify`` observations, every prediction it gets wrong is off by
    one of ``fixes`` and at most ``max_off`` of them are. A mis-fixed window is not accepted on
    agreement alone: one wrong state word spoils only a few later words (x[j] depends on
    x[j − 624], x[j − 623] and x[j − 227]), so most predictions still agree, but the spoilt ones
    are off by a random amount within the next 624 words."""
    flat = _numpy(observed).reshape(-1).astype(np.int64)
    if flat.size < DRAWS_FOR_STATE + 16:
        return None
    check = flat[DRAWS_FOR_STATE:DRAWS_FOR_STATE + verify]
    allowed = np.array([f % 2**64 for f in fixes], dtype=np.uint64)
    window = flat[:DRAWS_FOR_STATE]
    for j, fix in [(None, 0)] + [(j, f) for j in range(DRAWS_FOR_STATE) for f in fixes]:
        tried = window.copy()
        if j is not None:
            tried[j] = (tried[j].view(np.uint64) + np.uint64(fix % 2**64)).view(np.int64)
        off = clone(tried).next_int64(check.size).numpy().view(np.uint64) - check.view(np.uint64)
        wrong = off[off != 0]
        if wrong.size <= max_off * check.size and np.isin(wrong, allowed).all():
            rest = clone(tried).next_int64(flat.size - DRAWS_FOR_STATE + tail)
            return torch.cat([torch.from_numpy(tried), rest])
    return None


# -- the sum of two streams: meet in the middle over 32-bit seeds ------------------------------------

def seeds_of_a_sum(total, candidates, confirm: int = 4) -> list[tuple[int, int]]:
    """The seed pairs (s_1, s_2) among ``candidates`` (uint32 seeds, for both streams) whose streams'
    first draws add up to ``total`` (int64, mod 2^64): ``total[i] = draw_i(s_1) + draw_i(s_2)`` —
    the owner's view −(ε + a_0) = a_1 + a_2 in 3PC where the one-hot is 0, when a_1 and a_2 are
    the first draws of their streams. Meet in the middle: sort draw_0 of every candidate, look up
    total_0 − draw_0(s_2) for every s_2 (one table serves both: len(candidates) seed expansions
    and one sort), and
    confirm each hit on ``total[1:confirm]``. With all 2^32 seeds this is 2^32 expansions
    (``first_int64_of_seeds``) and a 2^32-entry table: hours of CPU, so tests run it on a
    candidate set that contains the true seeds."""
    seeds = _u32(candidates)
    total = _numpy(total).reshape(-1).astype(np.int64).view(np.uint64)
    first = first_int64_of_seeds(seeds).view(np.uint64)
    order = np.argsort(first, kind="stable")
    ranked = first[order]
    with np.errstate(over="ignore"):
        wanted = total[0] - first  # draw_0(s_1) for each s_2
    at = np.minimum(np.searchsorted(ranked, wanted), ranked.size - 1)
    found = []
    for j in np.nonzero(ranked[at] == wanted)[0]:
        k = at[j]
        while k < ranked.size and ranked[k] == wanted[j]:
            s1, s2 = int(seeds[order[k]]), int(seeds[j])
            both = (torch.randint(-(2**63), 2**63 - 1, (confirm,), generator=torch.Generator().manual_seed(s1))
                    + torch.randint(-(2**63), 2**63 - 1, (confirm,), generator=torch.Generator().manual_seed(s2)))
            if (both.numpy().view(np.uint64) == total[:confirm]).all():
                found.append((s1, s2))
            k += 1
    return found
