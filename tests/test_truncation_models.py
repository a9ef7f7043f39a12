"""The emulator's truncation error models: what CrypTen's and truncbridge's MPC truncations open.

Each model is run through ``RingExecutor`` on a one-truncation plan, so the tests see exactly what
a plan's ``trunc`` node gives. Statistical checks use fixed seeds and tolerances of many standard
deviations: they cannot flake, and they still fail for a wrong model.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from truncbridge.backends import TRUNCATION_MODELS, RingExecutor, truncation_model_for
from truncbridge.backends.truncation_models import uniform_ring64
from truncbridge.core.errors import UserError
from truncbridge.core.ir import Node, Program
from truncbridge.core.protocols import Protocol, load_protocol, protocol_names
from truncbridge.core.types import Plan, PlanConfig

from crypten_party import INPUTS, plan_for

K = 16  # the shift of every single-truncation test
RANDOMIZED = ("crypten-local", "crypten-wraps", "exact-msb")
LIMIT = 1 << 62  # exact-msb is exact for |x| < 2^62


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Elementwise ops on 1e5 elements gain nothing from 2 threads, and on a busy machine the
    threads' barriers made this file 10-100x slower; the suite's setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trunc_plan(shift: int = K, rounding: str = "nearest", field_bits: int = 64) -> Plan:
    """input x -> trunc(x, shift) -> output, on ring integers (scale 0)."""
    prog = Program()
    prog.nodes.append(Node(0, "input", (), (1,), {"name": "x"}, scale=0))
    prog.nodes.append(Node(1, "trunc", (0,), (1,), {"shift": shift, "rounding": rounding}, scale=0))
    prog.nodes.append(Node(2, "output", (1,), (1,), scale=0))
    prog.inputs["x"], prog.outputs = 0, [2]
    return Plan(prog, PlanConfig(field_bits, 0, "test"), {n.id: field_bits for n in prog.nodes})


def truncate(x: torch.Tensor, model: str, seed: int = 0, shift: int = K, rounding: str = "nearest") -> torch.Tensor:
    return RingExecutor(trunc_plan(shift, rounding), truncation=model, seed=seed).run({"x": x})[0][0]


def randint(lo: int, hi: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)


def reference_truncation(x: torch.Tensor, shift: int = K, rounding: str = "floor") -> torch.Tensor:
    """Python integers: floor(x / 2^shift), or floor((x + 2^(shift-1)) / 2^shift) with the sum
    wrapped to Z_2^64 (the offset is a ring addition) — the independent reference of the ring's."""
    def one(v: int) -> int:
        if rounding == "nearest" and shift > 0:
            v = (v + (1 << (shift - 1)) + 2**63) % 2**64 - 2**63
        return v >> shift

    return torch.tensor([one(v) for v in x.tolist()], dtype=torch.int64)


# -- "nearest" is today's executor --------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 63), st.sampled_from(["nearest", "floor"]), st.integers(0, 2**31 - 1))
def test_nearest_model_is_the_deterministic_truncation(shift, rounding, seed):
    x = torch.cat([randint(-(2**63), 2**63 - 1, 200, seed), torch.tensor(EDGES), torch.tensor([2**63 - 1, -(2**63)])])
    want = reference_truncation(x, shift, rounding)
    default = RingExecutor(trunc_plan(shift, rounding)).run({"x": x})[0][0]
    assert torch.equal(default, want)
    assert torch.equal(truncate(x, "nearest", seed, shift, rounding), want)


# -- CrypTen, 2 parties (local share division) and 3 parties (wraps protocol) -----------------
def test_crypten_local_is_floor_or_floor_plus_one_and_unbiased_for_small_values():
    x = torch.cat([randint(-(2**40), 2**40, 50_000, 1), torch.tensor([0, 1, -1, 2**40, -(2**40)])])
    got = truncate(x, "crypten-local", seed=2)
    # CRYPTEN_NOTES: floor or floor + 1. (Shares of x's sign, both below |x|, give -1 (x > 0) or
    # +2 (x < 0) with probability ~|x| / 2^65 <= 2^-25 here.)
    assert set((got - reference_truncation(x, K)).tolist()) == {0, 1}
    assert abs((got.double() - x.double() / 2**K).mean().item()) < 0.02  # unbiased; 1 sigma ~ 0.002


def test_crypten_wraps_is_within_minus_2_plus_3_and_unbiased_for_small_values():
    x = torch.cat([randint(-(2**40), 2**40, 50_000, 3), torch.tensor([0, 1, -1, 2**40, -(2**40)])])
    got = truncate(x, "crypten-wraps", seed=4)
    assert set((got - reference_truncation(x, K)).tolist()) == {-2, -1, 0, 1, 2, 3}  # three shares rounded toward 0
    assert abs((got.double() - x.double() / 2**K).mean().item()) < 0.03  # unbiased; 1 sigma ~ 0.005


@pytest.mark.parametrize("model", ["crypten-local", "crypten-wraps"])
def test_crypten_fails_with_probability_abs_x_over_2_64(model):
    n = 100_000
    x = randint(2**59, 2**61, n, 5) * torch.where(randint(0, 2, n, 6) == 1, 1, -1)
    err = truncate(x, model, seed=7) - reference_truncation(x, K)
    failed = err.abs() > 2 ** (63 - K)
    expected = (x.double().abs() / 2.0**64).mean().item()  # ~0.078
    assert abs(failed.double().mean().item() / expected - 1) < 0.1  # 1 sigma is 1.1 %
    # a failure is off by -sign(x) * 2^(64-k), up to the usual few LSB
    off = err[failed] + torch.sign(x[failed]) * 2 ** (64 - K)
    assert off.abs().max().item() <= 3
    assert err[~failed].min().item() >= -2 and err[~failed].max().item() <= 3


def test_crypten_does_not_fail_below_2_40_even_at_many_samples():
    x = randint(-(2**40), 2**40, 100_000, 8)
    for model in ("crypten-local", "crypten-wraps"):
        assert (truncate(x, model, seed=9) - reference_truncation(x, K, "nearest")).abs().max().item() <= 3


# -- truncbridge's exact truncation (msb-corrected) ---------------------------------------------
EDGES = [-LIMIT, -LIMIT + 1, -LIMIT + (1 << K) - 1, LIMIT - 1, LIMIT - (1 << K), LIMIT - (1 << K) - 1, 0, -1, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-LIMIT, LIMIT - 1), min_size=1, max_size=20), st.integers(1, 62),
       st.integers(0, 2**31 - 1))
def test_exact_msb_is_floor_or_floor_plus_one_below_2_62(values, shift, seed):
    x = torch.tensor(values + EDGES, dtype=torch.int64).repeat(500)
    err = truncate(x, "exact-msb", seed, shift) - reference_truncation(x, shift)
    assert set(err.tolist()) <= {0, 1}


def test_exact_msb_never_fails_next_to_2_62():
    x = torch.tensor(EDGES, dtype=torch.int64).repeat(50_000)
    err = truncate(x, "exact-msb", seed=11) - reference_truncation(x, K)
    assert set(err.tolist()) == {0, 1}


def test_exact_msb_is_unbiased_stochastic_rounding():
    frac = torch.tensor([0, 1, 2**14, 2**15, 3 * 2**14, 2**16 - 1])  # low bits of x: frac * 2^-16
    high = torch.tensor([0, -7, 2**29, -(2**45), 2**45, 2**46 - 1]) << K  # from 0 to ~2^62
    x = (high + frac).repeat(20_000)
    err = (truncate(x, "exact-msb", seed=12) - reference_truncation(x, K)).view(20_000, -1).double()
    want = frac.double() / 2**16
    assert (err.mean(0) - want).abs().max().item() < 0.02  # 1 sigma <= 0.0036
    assert err[:, 0].sum().item() == 0  # x a multiple of 2^k: exact


def test_exact_msb_is_wrong_outside_its_range_like_the_protocol():
    x = torch.full((10_000,), LIMIT + 2**61)
    err = truncate(x, "exact-msb", seed=13) - reference_truncation(x, K)
    assert (err.abs() > 1).any()


class OneParty:  # an ArithmeticSharedTensor of one party: its share is the value
    def __init__(self, share, precision=0, src=0, device=None):  # ArithmeticSharedTensor's arguments
        self.share = share

    from_shares = classmethod(lambda cls, share, precision=0: cls(share))
    reveal = lambda self: self.share  # noqa: E731
    reveal_batch = staticmethod(lambda xs: [x.share for x in xs])


def one_party_material(monkeypatch, r: torch.Tensor, bs: list[torch.Tensor] = ()):
    """The dealer's own derivation (``material.derive``) of the exact truncation's material from
    chosen masks, handed to one party (whose shares are the values)."""
    from truncbridge.backends.crypten import material, truncation

    def deal(size, k, others=(), degree=1, other_degrees=(), pairs=()):
        req = material.request_key("trunc", size, k, others, degree, other_degrees, pairs)
        plain = {"r": r, **{f"b{j}": b for j, b in enumerate(bs)}}
        return {**plain, **material.derive(req, plain, {})}

    monkeypatch.setattr(truncation, "truncation_material", deal)


def test_exact_msb_matches_the_protocol_code_bit_for_bit(monkeypatch):
    """Drift guard: truncbridge.backends.crypten.truncation.exact_truncate on one party, fed the same r
    (what the dealer deals: r, r >> k unsigned, msb(r))."""
    from truncbridge.backends.crypten import truncation

    x = torch.cat([randint(-(2**63), 2**63 - 1, 5000, 14), randint(-LIMIT, LIMIT, 5000, 15), torch.tensor(EDGES)])
    for shift in (1, 8, K, 40, 62):
        one_party_material(monkeypatch, uniform_ring64(x.shape, torch.Generator().manual_seed(shift), x.device))
        theirs = truncation.exact_truncate(OneParty(x), shift, OneParty, 0).share
        assert torch.equal(truncate(x, "exact-msb", seed=shift, shift=shift), theirs)


@pytest.mark.parametrize("shift", [1, 16, 31, 40])
def test_products_carried_by_a_truncation_are_exact(monkeypatch, shift):
    """Values an exact truncation's opening carries (truncation.py) equal the ring products of its
    result y, mod 2^64, with the dealer's own derivation of the material and wrapping and
    non-wrapping openings alike: y·z (z broadcast), (a·y + p)·z, y², (a1·y + p1)(a2·y + p2), y³,
    y²·z, and terms with two opened operands: y·z·v, (y·z)·(y·v), y·z². Negative controls:
    without its m·h^0·b term (dropped from the material) y·z differs, and without b0·b1 y·z·v does;
    a third operand in one term is refused."""
    from truncbridge.backends.crypten import truncation

    gen = torch.Generator().manual_seed(shift)
    x = torch.cat([torch.tensor(EDGES), randint(-LIMIT, LIMIT, 4000, shift)])[:4000].view(-1, 8)  # edges first
    z = randint(-(2**63), 2**63 - 1, 8, shift + 1)  # broadcast along the rows
    v = randint(-(2**63), 2**63 - 1, 500, shift + 2).view(-1, 1)  # broadcast along the columns
    r, b, bv = (uniform_ring64(s, gen, x.device) for s in (x.shape, z.shape, v.shape))
    one_party_material(monkeypatch, r, [b, bv])
    opened = truncation.open_truncation(OneParty(x), shift, OneParty, 0, others=(OneParty(z), OneParty(v)), degree=3,
                                        other_degrees=(2, 2), pairs=((0, 1, 2), (0, 0, 1)))
    y, Y, Z, V = opened.result(), opened.y(), opened.operand(0), opened.operand(1)
    assert torch.equal(y, truncation.exact_truncate(OneParty(x), shift, OneParty, 0).share)
    assert bool((opened.w != 0).any()) and bool((opened.w == 0).any())  # both wrap cases occur
    a1, p1 = randint(-(2**20), 2**20, 8, 3), randint(-(2**40), 2**40, 8, 4)
    a2, p2 = -3, 12345
    cases = [(Y * Z, y * z), (Y.scaled(a1).plus_public(p1) * Z, (a1 * y + p1) * z), (Y * Y, y * y),
             (Y.scaled(a1).plus_public(p1) * Y.scaled(a2).plus_public(p2), (a1 * y + p1) * (a2 * y + p2)),
             (Y * Y * Y, y * y * y), (Y * Z * Y, y * z * y), (Y * Z * V, y * z * v), ((Y * Z) * (Y * V), y * z * y * v),
             (Y.plus_public(p2) * Z * Z, (y + p2) * z * z)]
    for carried, want in cases:
        assert torch.equal(opened.share(carried), want)
    with pytest.raises(ValueError, match="three opened operands"):
        Y * Z * V * Z
    def without(name):  # the same opening, one material component zeroed (nothing made from it yet)
        return dataclasses.replace(opened, m={**opened.m, name: torch.zeros_like(opened.m[name])}, _made={})

    assert not torch.equal(without("mh0b0").share(Y * Z), y * z)
    assert not torch.equal(without("b0b1").share(Y * Z * V), y * z * v)


# -- seeds, fields, the protocol mapping -------------------------------------------------------
@pytest.mark.parametrize("model", RANDOMIZED)
def test_a_seed_fixes_the_samples(model):
    plan = plan_for("eager")

    def runs(seed):
        ex = RingExecutor(plan, truncation=model, seed=seed)
        return [ex.run(INPUTS)[0][0] for _ in range(2)]

    first, again, other = runs(1), runs(1), runs(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # fresh randomness on every run


def test_randomized_models_need_z_2_64():
    plan = plan_for("eager", field_bits=48)
    for model in RANDOMIZED:
        with pytest.raises(UserError, match="Z_2\\^64"):
            RingExecutor(plan, truncation=model)
    RingExecutor(plan, truncation="nearest")
    with pytest.raises(UserError, match="unknown truncation model"):
        RingExecutor(plan_for("eager"), truncation="random")


def test_every_protocol_profile_has_a_model():
    want = {"faithful-2pc": "nearest", "crypten-2pc": "crypten-local", "crypten-3pc": "crypten-wraps",
            "crypten-exact-2pc": "exact-msb", "crypten-exact-3pc": "exact-msb",
            "secureml-2pc": "crypten-local", "aby3-3pc": "crypten-local"}
    assert {name: truncation_model_for(load_protocol(name)) for name in protocol_names()} == want
    assert set(want.values()) == set(TRUNCATION_MODELS)
    with pytest.raises(UserError, match="no truncation model"):
        truncation_model_for(Protocol("odd", {"truncation": {"kind": "garbled"}}))


@pytest.mark.parametrize("model", RANDOMIZED)
def test_plan_outputs_stay_close_to_nearest(model):
    plan = plan_for("eager")
    ex = RingExecutor(plan)
    want = ex.decode_outputs(ex.run(INPUTS)[0])[0]
    for seed in range(3):
        sampled = RingExecutor(plan, truncation=model, seed=seed)
        got = sampled.decode_outputs(sampled.run(INPUTS)[0])[0]
        assert (got - want).abs().max().item() <= 2.0**-8  # a few LSB, amplified ~2^6 by the program
        assert not torch.equal(got, want)
