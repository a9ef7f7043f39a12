"""The receipt audit: every value a party receives online is accounted for by a dealt mask.

A test and debug mode — it pools every party's secret shares and the dealer's masks in one
place to check them, so it must never run on real data that is to stay private.

While a pass runs, each computing party keeps an ``OpeningLog``: every protocol step that opens
something (CrypTen's Beaver product, square, binary AND, B2A, wraps, and truncbridge's batched
openings — Beaver products, squares and exact truncations with the products they carry, several
in one message: ``openings.py``) is recorded with this party's shares of the secret it hides, the
dealing indices of the masks the provider handed out inside it, and a digest of every tensor the
party received. A batch is checked part by part: it must equal the parts' openings, concatenated.
Receipts outside such a step are recorded too: only the client's output may be one. The dealer
(``DealerCore(audit=True)``) keeps each mask by dealing index. ``findings`` then checks, for every
party and every receipt: it equals the secret (sum of all parties' shares) combined with a dealt
mask — ``x - a`` for products, ``x + 2^62 + r`` (and ``z - b`` for the products it carries) for
the exact truncation, ``x xor a`` for binary steps, ``x_i + r_i`` for a wraps gather — exactly;
each mask was used by one step only; no receiver knows the mask in the clear (the owner does,
when it deals: ``owner-insecure``); and no receipt is left unexplained. Any broken opening (mask
removed, reused, known) is a finding.

MPI, the launcher's side channel, is checked by ``audit_mpi.py``.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..backends.crypten.material import combine, layout
from ..backends.crypten.openings import REVEAL_ELEMENTS
from ..backends.crypten.truncation import EXACT_LIMIT_BITS as OFFSET_BITS  # the exact truncation opens x + 2^62 + r
from .results import INSECURE


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:32]


@dataclass
class Opening:
    kind: str  # beaver | square | trunc | and | b2a | wraps | batch
    secrets: list[torch.Tensor]  # this party's shares of the hidden values
    masks: list[int] = field(default_factory=list)  # dealing indices used inside
    received: list[tuple[str, list[str]]] = field(default_factory=list)  # (method, digests)
    parts: list = field(default_factory=list)  # a batch's steps (Openings), in message order
    before_input: bool = False  # opened in the weights' phase, before any client input was shared


class OpeningLog:
    """One computing party's record of what it received (see the module docstring)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.openings: list[Opening] = []
        self.stray: list[tuple[str, int]] = []  # (method, elements) received outside any opening
        self.outputs = 0
        self._stack: list[Opening] = []
        self.active = False
        self.before_input = False  # set by ``Link.audited``

    @contextmanager
    def opening(self, kind: str, *secrets, logged: bool = True):
        entry = Opening(kind, [s.share.clone() for s in secrets], before_input=self.before_input)
        self._stack.append(entry)
        try:
            yield entry
        finally:
            self._stack.pop()
            if self.active and logged:
                self.openings.append(entry)

    @contextmanager
    def batch(self, parts: list[Opening]):
        """One message opening every part (``openings.reveal_together``)."""
        with self.opening("batch") as entry:
            entry.parts, entry.masks = parts, [m for p in parts for m in p.masks]
            yield entry

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

    from ..backends.crypten import openings, truncation

    def wrap(module, name, kind, secret_args, more=lambda kwargs: (), part=False):
        original = vars(module)[name]

        def step(*args, **kwargs):
            with log.opening(kind, *[args[i] for i in secret_args], *more(kwargs), logged=not part) as entry:
                out = original(*args, **kwargs)
            if part:  # a Pending: its masks are checked when its batch is opened
                entry.kind, out.audit = out.kind, entry
            return out

        setattr(module, name, step)

    reveal_together = vars(openings)["reveal_together"]

    def batched(steps):
        if not steps:
            return reveal_together(steps)
        with log.batch([s.audit for s in steps]):
            return reveal_together(steps)

    wrap(beaver, "__beaver_protocol", "beaver", (1, 2))
    wrap(beaver, "square", "square", (0,))
    wrap(beaver, "wraps", "wraps", (0,))
    wrap(beaver, "AND", "and", (0, 1))
    wrap(beaver, "B2A_single_bit", "b2a", (0,))
    wrap(openings, "beaver", "beaver", (0, 1), part=True)
    wrap(openings, "square", "square", (0,), part=True)
    for name in ("half_opened", "half_finished"):  # the kind ("half-a" | "half-b") is the Pending's own
        wrap(openings, name, "half", (1,), part=True)
    finish_half = openings.half_finished

    def half_finished(side, x, pre, *args):  # its triple was taken by the first half: the same mask
        step = finish_half(side, x, pre, *args)
        step.audit.masks = list(pre.audit.masks) if pre.audit is not None else []
        return step

    openings.half_finished = half_finished
    wrap(truncation, "prepare_truncation", "trunc", (0,), lambda kwargs: kwargs.get("others", ()), part=True)
    openings.reveal_together = batched


# -- the check (on the pooled logs) ------------------------------------------------------------
HALVES = {"half-a": "a", "half-b": "b"}


def _expected(kind: str, secrets: list[torch.Tensor], masks: list[dict]) -> list[torch.Tensor]:
    """What every party must receive in a correct step of this kind (all but wraps)."""
    if kind == "beaver":
        return [secrets[0] - masks[0]["a"], secrets[1] - masks[0]["b"]]
    if kind == "and":
        return [secrets[0] ^ masks[0]["a"], secrets[1] ^ masks[0]["b"]]
    if kind == "square":
        return [secrets[0] - masks[0]["r"]]
    if kind in HALVES:  # one operand of a Beaver product (the other's half is opened apart)
        return [secrets[0] - masks[0][HALVES[kind]]]
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
    used: dict[int, list] = {}  # dealing index -> [(opening, part kind)]
    for j in range(counts.pop()):
        steps = [log["openings"][j] for log in logs]
        kind, masks = steps[0].kind, steps[0].masks
        where = f"opening {j} ({kind})"
        if any(s.kind != kind or s.masks != masks or _kinds(s) != _kinds(steps[0]) for s in steps):
            out.append(f"{where}: parties disagree on the step or its masks")
            continue
        if not masks or any(not p.masks for p in steps[0].parts):
            out.append(f"{where}: opened with no dealt mask")
            continue
        for m, part in zip(masks, [p.kind for p in steps[0].parts] or [kind] * len(masks)):
            prior = used.setdefault(m, [])
            if prior and not _halves(prior, part):
                out.append(f"{where}: mask {m} was already used by opening {prior[0][0]}")
            prior.append((j, part))
        out += _check_values(where, kind, steps, dealer_masks, mask_holders)
    for log in logs:
        out += [f"party {log['rank']}: {method} of {n} elements outside any masked opening"
                for method, n in log["stray"]]
        if log["outputs"] and log["rank"] != 1:
            out.append(f"party {log['rank']}: received the output, which only the client may")
    return out


def _halves(prior: list, kind: str) -> bool:
    """A triple's two halves may be opened apart (a weight's before the online phase): each once."""
    return kind in HALVES and len(prior) == 1 and prior[0][1] in HALVES and prior[0][1] != kind


def _kinds(step: Opening) -> list[str]:
    return [p.kind for p in step.parts]


def _want(kind: str, steps: list[Opening], dealer_masks: dict) -> list[torch.Tensor]:
    """What every party must receive in this step (all but wraps): a batch's parts, concatenated."""
    if kind == "batch":  # one message, opened in parts of REVEAL_ELEMENTS
        parts = [_want(p.kind, [s.parts[i] for s in steps], dealer_masks) for i, p in enumerate(steps[0].parts)]
        return list(torch.cat([t.reshape(-1) for part in parts for t in part]).split(REVEAL_ELEMENTS))
    masks = [dealer_masks[m][1] for m in steps[0].masks]
    return _expected(kind, _pool(kind, [s.secrets for s in steps]), masks)


def _check_values(where, kind, steps, dealer_masks, mask_holders) -> list[str]:
    out = []
    for rank, step in enumerate(steps):
        received = [d for _, digests in step.received for d in digests]
        if not received:
            continue
        if rank in mask_holders:
            out.append(f"{where}: party {rank} receives an opening whose mask it knows (it dealt it)")
        out += [f"{where}: party {rank} receives an opening whose mask it drew ({why})"
                for why in _drawn_by_receiver(steps, rank, dealer_masks)]
        if kind == "wraps":  # party 0 gathers every x_i + r_i; it must not know r_i
            masks = dealer_masks[step.masks[0]][1]
            want = [s.secrets[0] + masks[f"r@{p}"] for p, s in enumerate(steps)]
        else:
            want = _want(kind, steps, dealer_masks)
        if received != [digest(t) for t in want]:
            out.append(f"{where}: what party {rank} received is not the secret plus a fresh dealt mask")
    return out


def _drawn_by_receiver(steps: list[Opening], rank: int, dealer_masks: dict) -> list[str]:
    """Why it is wrong that ``rank`` knows a mask of this step (``steps``: every party's record of it): it
    drew it alone (``material``'s ``drawn_by``). Allowed only to the weight's owner — every other party's
    share of the secret is zero — for its weights' halves, opened before any input is shared."""
    out = []
    for i, part in enumerate(steps[rank].parts or [steps[rank]]):
        opened = [HALVES[part.kind]] if part.kind in HALVES else ["a", "b"] if part.kind == "beaver" else []
        others = [(s.parts or [s])[i].secrets for r, s in enumerate(steps) if r != rank]
        holds_it = all(not t.any() for secrets in others for t in secrets)  # the whole secret is its share
        for m in (m for m in part.masks if dealer_masks[m][0][0] == "weight"):  # the one kind with masks drawn alone
            drawn = {c.name: c.drawn_by for c in layout(dealer_masks[m][0])[0]}
            if any(drawn.get(name) == rank for name in opened) and not (holds_it and part.before_input):
                out.append(f"a {part.kind} {'before any input' if part.before_input else 'online'}")
    return out


def _pool(kind: str, per_party: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The hidden secrets from every party's shares (XOR for binary steps)."""
    return [combine([shares[i] for shares in per_party], xor=kind in ("and", "b2a")) for i in range(len(per_party[0]))]


MAX_FINDINGS = 50  # kept in the JSON; the count says how many there were


def audit_summary(pooled: list[dict], parties: int, dealer: str, reveal: bool = False) -> dict:
    """The mask-accounting audit over every pass (``audit.findings``) and over MPI, the side channel
    (``audit_mpi.mpi_findings``; ``reveal``: --benchmark-reveal)."""
    from .audit_mpi import mpi_findings

    logs = [p["log"] for p in pooled[:parties]]
    masks = pooled[parties]["masks"] if dealer == "separate" else pooled[0]["masks"]
    found = findings(logs, masks, {0} if dealer == INSECURE else set())
    used = {m for step in logs[0]["openings"] for m in step.masks}
    steps = sum(len(step.parts) or 1 for step in logs[0]["openings"])  # a batch opens several in one message
    found += mpi_findings([p["mpi"] for p in pooled if p is not None], reveal=reveal)
    return {"findings": found[:MAX_FINDINGS], "finding_count": len(found), "openings": len(logs[0]["openings"]),
            "opened_steps": steps,
            "masks_used": len(used), "masks_dealt": len(masks),
            "output_receivers": [log["rank"] for log in logs if log["outputs"]],
            "mpi_receipts": sum(len(p["mpi"]) for p in pooled if p is not None)}
