"""Dealt material in bounded memory (backends/crypten/dealer.py): party 0's corrections fetched in
messages of at most FETCH_BYTES, each party's draws expanded ahead up to its window and the rest when
taken. Whatever the window, every party holds the same shares, and they add up to correct material."""
from __future__ import annotations

import pytest
import torch

from truncbridge.backends.crypten import dealer, randomness
from truncbridge.backends.crypten.dealer import DealerCore, DealtProvider, material_bytes

PARTIES = 2
REQUESTS = [("additive", (4, 8), (8, 3), "matmul", (), ()), ("square", (5, 7)), ("additive", (6,), (6,), "mul", (), ()),
            ("trunc", (3, 5), 12, (), 2, (), ()), ("additive", (16, 16), (16, 16), "matmul", (), ()),
            ("weight", (4, 8), (8, 3), "matmul", 1, 0), ("weight", (8, 8), (8, 5), "matmul", 0, 0),
            ("weight", (6,), (6,), "mul", 1, 0)] * 3


def _providers(window: int, fetched: list | None = None) -> list[DealtProvider]:
    """Every party's provider; party 0 fetches from a dealer with every key (as --dealer separate)."""
    keys = {p: bytes([p + 1]) * randomness.KEY_BYTES for p in range(PARTIES)}
    core = DealerCore(keys)

    def fetch(requests, following=None):
        if fetched is not None:
            fetched.append(sum(material_bytes(r) for r in requests))
        return core.deal(requests), 0

    return [DealtProvider(p, randomness.stream(keys[p]), fetch if p == 0 else None, window) for p in range(PARTIES)]


def _take_all(providers: list[DealtProvider]) -> list[list[dict]]:
    for p in providers:
        p.deal(REQUESTS)
        p.ready_for_pass()
    return [[p._take(req) for req in REQUESTS] for p in providers]


def _value(shares: list[dict], name: str) -> torch.Tensor:
    return sum(s[name] for s in shares)


@pytest.mark.parametrize("window", [0, 4000, 1 << 30])
def test_any_window_gives_the_same_shares_and_counts_what_it_held_back(window):
    full = _take_all(_providers(1 << 30))
    providers = _providers(window)
    taken = _take_all(providers)
    for mine, reference in zip(taken, full):
        for a, b in zip(mine, reference):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    late = providers[1].late
    total = sum(material_bytes(r, 1) for r in REQUESTS)  # party 1's (it holds no weight's mask)
    assert late["bytes"] == (total if window == 0 else 0 if window >= total else late["bytes"])
    if 0 < window < total:
        assert 0 < late["bytes"] < total and late["requests"] < len(REQUESTS)
    assert providers[1].held == 0 and providers[1].expanded == 0
    corrections = sum(t.numel() * 8 for r in REQUESTS for t in DealerCore({0: b"\1" * 32, 1: b"\2" * 32}).deal([r])[0].values())
    spilled = providers[0].offline["spilled_bytes"]
    assert spilled == (corrections if window == 0 else 0 if window >= total else spilled)
    if 0 < window < total:
        assert 0 < spilled < corrections  # beyond the window, party 0's corrections waited on its disk


def test_the_shares_add_up_to_beaver_triples_and_squares():
    taken = _take_all(_providers(4000))
    for j, req in enumerate(REQUESTS):
        shares = [party[j] for party in taken]
        if req[0] in ("additive", "weight"):
            op = torch.matmul if req[3] == "matmul" else torch.mul
            a, b = (sum(s[k] for s in shares if s.get(k) is not None) for k in "ab")
            assert torch.equal(_value(shares, "c"), op(a, b))
        if req[0] == "weight":  # the weight's mask: the owner's (party 0's) draw alone
            weights = "ab"[req[4]]
            assert shares[0][weights] is not None and weights not in shares[1] and "ab"[1 - req[4]] in shares[1]
        if req[0] == "square":
            assert torch.equal(_value(shares, "r2"), _value(shares, "r") * _value(shares, "r"))


def test_party_0_fetches_in_bounded_messages(monkeypatch):
    monkeypatch.setattr(dealer, "FETCH_BYTES", 3000)
    fetched = []
    _take_all(_providers(1 << 30, fetched))
    largest = max(material_bytes(r) for r in REQUESTS)
    assert len(fetched) > 1 and all(n <= max(3000, largest) for n in fetched)
    assert sum(fetched) == sum(material_bytes(r) for r in REQUESTS)
