"""The receipt audit: every value a party receives online is accounted for by a dealt mask.

A test and debug mode — it pools every party's secret shares and the dealer's masks in one
place to check them, so it must never run on real data that is to stay private.

While a pass runs, each computing party keeps an ``OpeningLog``: every protocol step that opens
something (CrypTen's Beaver product, square, binary AND, B2A, wraps, and truncbridge's exact
truncation with the products it carries) is recorded with this party's shares of the secret it
hides, the dealing indices of the masks the provider handed out inside it, and a digest of every
tensor the party received.
Receipts outside such a step are recorded too: only the client's output may be one. The dealer
(``DealerCore(audit=True)``) keeps each mask by dealing index. ``findings`` then checks, for every
party and every receipt: it equals the secret (sum of all parties' shares) combined with a dealt
mask — ``x - a`` for products, ``x + 2^62 + r`` (and ``z - b`` for the products it carries) for
the exact truncation, ``x xor a`` for binary steps, ``x_i + r_i`` for a wraps gather — exactly;
each mask was used by one step only; no receiver knows the mask in the clear (the owner does,
when it deals: ``owner-insecure``); and no receipt is left unexplained. Any broken opening (mask
removed, reused, known) is a finding.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .material import combine
from .truncation import EXACT_LIMIT_BITS as OFFSET_BITS  # the exact truncation opens x + 2^62 + r


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:32]


@dataclass
class Opening:
    kind: str  # beaver | square | trunc | and | b2a | wraps
    secrets: list[torch.Tensor]  # this party's shares of the hidden values
    masks: list[int] = field(default_factory=list)  # dealing indices used inside
    received: list[tuple[str, list[str]]] = field(default_factory=list)  # (method, digests)


class OpeningLog:
    """One computing party's record of what it received (see the module docstring)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.openings: list[Opening] = []
        self.stray: list[tuple[str, int]] = []  # (method, elements) received outside any opening
        self.outputs = 0
        self._stack: list[Opening] = []
        self.active = False

    @contextmanager
    def opening(self, kind: str, *secrets):
        entry = Opening(kind, [s.share.clone() for s in secrets])
        self._stack.append(entry)
        try:
            yield entry
        finally:
            self._stack.pop()
            if self.active:
                self.openings.append(entry)

    def took(self, item) -> None:
        """The provider handed out material ``item`` (a ``dealer.Dealt``)."""
        if self._stack:
            self._stack[-1].masks.append(item.index)

    def receive(self, method: str, tensors: list[torch.Tensor], output: bool) -> None:
        if not self.active:
            return
        if output:
            self.outputs += 1
        elif self._stack:
            self._stack[-1].received.append((method, [digest(t) for t in tensors]))
        else:
            self.stray.append((method, sum(t.numel() for t in tensors)))

    def export(self) -> dict:
        return {"rank": self.rank, "openings": self.openings, "stray": self.stray, "outputs": self.outputs}


def instrument(log: OpeningLog) -> None:
    """Route CrypTen's opening steps and truncbridge's exact truncation through ``log``."""
    from crypten.mpc.primitives import beaver

    from . import truncation

    def wrap(module, name, kind, secret_args, more=lambda kwargs: ()):
        original = vars(module)[name]

        def step(*args, **kwargs):
            with log.opening(kind, *[args[i] for i in secret_args], *more(kwargs)):
                return original(*args, **kwargs)

        setattr(module, name, step)

    wrap(beaver, "__beaver_protocol", "beaver", (1, 2))
    wrap(beaver, "square", "square", (0,))
    wrap(beaver, "wraps", "wraps", (0,))
    wrap(beaver, "AND", "and", (0, 1))
    wrap(beaver, "B2A_single_bit", "b2a", (0,))
    wrap(truncation, "open_truncation", "trunc", (0,), lambda kwargs: kwargs.get("others", ()))


# -- the check (on the pooled logs) ------------------------------------------------------------
def _expected(kind: str, secrets: list[torch.Tensor], masks: list[dict]) -> list[torch.Tensor]:
    """What every party must receive in a correct step of this kind (all but wraps)."""
    if kind == "beaver":
        return [secrets[0] - masks[0]["a"], secrets[1] - masks[0]["b"]]
    if kind == "and":
        return [secrets[0] ^ masks[0]["a"], secrets[1] ^ masks[0]["b"]]
    if kind == "square":
        return [secrets[0] - masks[0]["r"]]
    if kind == "trunc":  # x + 2^62 + r, then z_j - b_j for the products its opening carries
        return [secrets[0] + (1 << OFFSET_BITS) + masks[0]["r"]] + [z - masks[0][f"b{j}"] for j, z in enumerate(secrets[1:])]
    if kind == "b2a":
        return [secrets[0] ^ masks[0]["rB"]]
    raise ValueError(kind)


def findings(logs: list[dict], dealer_masks: dict[int, tuple], mask_holders: set) -> list[str]:
    """Everything a party received that is not a share, a fresh-masked opening or the client's
    output. ``mask_holders``: the computing parties that know every mask in the clear."""
    out: list[str] = []
    counts = {len(log["openings"]) for log in logs}
    if len(counts) != 1:
        return [f"parties logged different numbers of openings: {sorted(counts)}"]
    used: dict[int, int] = {}
    for j in range(counts.pop()):
        steps = [log["openings"][j] for log in logs]
        kind, masks = steps[0].kind, steps[0].masks
        where = f"opening {j} ({kind})"
        if any(s.kind != kind or s.masks != masks for s in steps):
            out.append(f"{where}: parties disagree on the step or its masks")
            continue
        if not masks:
            out.append(f"{where}: opened with no dealt mask")
            continue
        for m in masks:
            if m in used:
                out.append(f"{where}: mask {m} was already used by opening {used[m]}")
            used.setdefault(m, j)
        out += _check_values(where, kind, steps, [dealer_masks[m][1] for m in masks], mask_holders)
    for log in logs:
        out += [f"party {log['rank']}: {method} of {n} elements outside any masked opening"
                for method, n in log["stray"]]
        if log["outputs"] and log["rank"] != 1:
            out.append(f"party {log['rank']}: received the output, which only the client may")
    return out


def _check_values(where, kind, steps, masks, mask_holders) -> list[str]:
    secrets = _pool(kind, [s.secrets for s in steps])
    out = []
    for rank, step in enumerate(steps):
        received = [d for _, digests in step.received for d in digests]
        if not received:
            continue
        if rank in mask_holders:
            out.append(f"{where}: party {rank} receives an opening whose mask it knows (it dealt it)")
        if kind == "wraps":  # party 0 gathers every x_i + r_i; it must not know r_i
            want = [s.secrets[0] + masks[0][f"r@{p}"] for p, s in enumerate(steps)]
        else:
            want = _expected(kind, secrets, masks)
        if received != [digest(t) for t in want]:
            out.append(f"{where}: what party {rank} received is not the secret plus a fresh dealt mask")
    return out


def _pool(kind: str, per_party: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The hidden secrets from every party's shares (XOR for binary steps)."""
    return [combine([shares[i] for shares in per_party], xor=kind in ("and", "b2a")) for i in range(len(per_party[0]))]
