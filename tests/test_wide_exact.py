"""core.wide (Z_2^l for 65 <= l <= 128, F_p for p < 2^127) equals an independent Python-int computation,
reduced to the signed representative after every op (numpy object arrays hold the Python ints)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from truncbridge.core.errors import UserError
from truncbridge.core.wide import PrimeField, WideRing

P127 = 170141183460469230551095682998472802077  # sympy.prevprime(2**127 - 2**70): not a Mersenne prime
FIELDS = [("ring", 65), ("ring", 96), ("ring", 127), ("ring", 128),
          ("prime", (1 << 61) - 1), ("prime", P127), ("prime", 65521)]
M32 = (1 << 32) - 1
SETTINGS = settings(deadline=None, max_examples=int(__import__("os").environ.get("WIDE_EXAMPLES", 200)))


def field(kind, n):
    return WideRing(n) if kind == "ring" else PrimeField(n)


def modulus(F) -> int:
    return F.prime or 1 << F.bits


def red(F, x) -> int:
    m = modulus(F)
    x %= m
    return x - m if x > F.top else x


def ref(F, ints) -> np.ndarray:
    """Python ints reduced into F (an object array)."""
    return np.vectorize(lambda x: red(F, int(x)), otypes=[object])(np.asarray(ints, dtype=object))


def build(F, ints):
    """A field value from Python ints through from_int64, shl and add only (wide and narrow mixed)."""
    arr = np.asarray(ints, dtype=object)

    def piece(f):
        return torch.tensor(np.vectorize(f, otypes=[np.int64])(arr), dtype=torch.int64)

    if all(-(1 << 63) <= x < 1 << 63 for x in arr.flat):
        return F.from_int64(piece(int))
    v = F.from_int64(piece(lambda x: int(x) >> 96))
    for s in (64, 32, 0):
        v = F.add(F.shl(v, 32), F.from_int64(piece(lambda x, s=s: (int(x) >> s) & M32)))
    return v


def check(F, v, expected):
    """Values equal, the recorded magnitude bound holds, narrow values really fit int64."""
    got = np.asarray(F.to_ints(v), dtype=object)
    want = ref(F, expected)
    assert got.shape == want.shape and (got == want).all(), (F, got, want)
    assert all(abs(x) <= v.bound for x in got.flat)
    assert v.hi is not None or all(-(1 << 63) <= x < 1 << 63 for x in got.flat)
    return want


@st.composite
def elements(draw, F):
    m = modulus(F)
    edges = [0, 1, -1, F.top, F.low, F.top - 1, F.low + 1, 1 << 62, -(1 << 63), (1 << 63) - 1, 1 << 64,
             -(1 << 64), m // 3]
    x = draw(st.integers(-(1 << 20), 1 << 20) | st.integers(-(1 << 63), (1 << 63) - 1)
             | st.integers(F.low, F.top) | st.sampled_from(edges))
    return red(F, x)


@st.composite
def cases(draw, rows=None, cols=None):
    F = field(*draw(st.sampled_from(FIELDS)))
    r = rows or draw(st.integers(1, 3))
    c = cols or draw(st.integers(1, 3))
    return F, [[draw(elements(F)) for _ in range(c)] for _ in range(r)]


@SETTINGS
@given(cases(3, 3), st.data())
def test_elementwise_ops(case, data):
    F, x = case
    y = [[data.draw(elements(F)) for _ in range(3)] for _ in range(3)]
    a, b, X, Y = build(F, x), build(F, y), ref(F, x), ref(F, y)
    k = data.draw(st.integers(0, 200))
    check(F, F.add(a, b), X + Y)
    check(F, F.mul(a, b), X * Y)
    check(F, F.mul(a, F.from_int64(torch.tensor([1, -1, 3]))), X * np.array([1, -1, 3], dtype=object))  # broadcast
    check(F, F.neg(a), -X)
    check(F, F.shl(a, k), X * 2**k)
    check(F, F.trunc_floor(a, k), X // 2**k)
    half = 2 ** (k - 1) if k else 0
    check(F, F.trunc_nearest(a, k), ref(F, X + half) // 2**k if k else X)
    check(F, F.nonneg(a), (X >= 0).astype(int))
    check(F, F.add(build(F, x), b, in_place=True), X + Y)


@SETTINGS
@given(cases(), st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True), st.booleans())
def test_sum(case, dims, keepdim):
    F, x = case
    want = ref(F, x).sum(axis=tuple(dims), keepdims=keepdim)
    check(F, F.sum(build(F, x), dims, keepdim), want)


@SETTINGS
@given(st.sampled_from(FIELDS), st.integers(1, 3), st.integers(1, 6), st.integers(1, 3), st.integers(1, 127),
       st.booleans(), st.data())
def test_matmul(kind, n, k, m, top_bits, batch, data):
    F = field(*kind)
    ints = st.integers(-(1 << (top_bits - 1)), (1 << (top_bits - 1)) - 1).map(lambda x: red(F, x))
    a_shape = (2, n, k) if batch else (n, k)
    x = np.array(data.draw(st.lists(ints, min_size=int(np.prod(a_shape)), max_size=int(np.prod(a_shape)))),
                 dtype=object).reshape(a_shape)
    y = [[data.draw(elements(F) | ints) for _ in range(m)] for _ in range(k)]
    want = np.matmul(ref(F, x), ref(F, y))
    check(F, F.matmul(build(F, x.tolist()), build(F, y)), want)
    if abs(x).max() < 1 << 52:  # a float64 operand of exact integers, with its bits given
        bits = int(abs(x).max()).bit_length()
        check(F, F.matmul(torch.tensor(x.astype(float)), build(F, y), a_bits=bits), want)


def test_trunc_and_shift_edges():
    """Values by the int64 and 2^64 edges, shifts around 63, 64 and 127."""
    edges = [1 << 62, (1 << 63) - 1, -(1 << 63), -(1 << 62) - 1, (1 << 64) + 1, -(1 << 64) + 1, 3 << 100, -(3 << 100), 7, -7]
    for kind in FIELDS:
        F = field(*kind)
        X = ref(F, edges)
        for narrow in (F.from_int64(torch.tensor(edges[:4] + edges[-2:])), None):
            a, A = (narrow, ref(F, edges[:4] + edges[-2:])) if narrow is not None else (build(F, edges), X)
            for k in (1, 2, 62, 63, 64, 65, 100, 126, 127, 128, 129):
                check(F, F.trunc_floor(a, k), A // 2**k)
                check(F, F.trunc_nearest(a, k), ref(F, A + 2 ** (k - 1)) // 2**k)
                check(F, F.shl(a, k), A * 2**k)


def test_matmul_many_limbs():
    """Sums of 60-bit products need several GEMM limbs, and wrap in Z_2^l."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-(1 << 60), 1 << 60, (4, 50), generator=g)
    y = torch.randint(-(1 << 60), 1 << 60, (50, 3), generator=g)
    want = np.matmul(np.array(x.tolist(), dtype=object), np.array(y.tolist(), dtype=object))
    for kind in FIELDS:
        F = field(*kind)
        check(F, F.matmul(F.from_int64(x), F.from_int64(y)), want)


OPS = ("add", "mul", "neg", "shl", "trunc_floor", "trunc_nearest", "matmul", "sum", "transpose", "nonneg")


@settings(deadline=None, max_examples=int(__import__("os").environ.get("WIDE_EXAMPLES", 200)) + 20)
@given(cases(3, 3), st.data())
def test_random_chains(case, data):
    """Chains of ops on 3x3 values, narrow and wide mixed, checked after every step."""
    F, x = case
    vals = [(build(F, x), ref(F, x))]
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(OPS))
        (a, A), (b, B) = data.draw(st.sampled_from(vals)), data.draw(st.sampled_from(vals))
        k = data.draw(st.integers(0, 130))
        if op in ("add", "mul", "matmul"):
            out, want = getattr(F, op)(a, b), {"add": A + B, "mul": A * B, "matmul": np.matmul(A, B)}[op]
        elif op in ("shl", "trunc_floor"):
            out, want = getattr(F, op)(a, k), (A * 2**k if op == "shl" else A // 2**k)
        elif op == "trunc_nearest":
            out, want = F.trunc_nearest(a, k), (ref(F, A + 2 ** (k - 1)) // 2**k if k else A)
        elif op == "sum":  # back to 3x3 by a broadcasting move
            out = F.move(lambda ts: ts[0].expand(3, 3), [F.sum(a, [1], True)])
            want = np.broadcast_to(ref(F, A.sum(axis=1, keepdims=True)), (3, 3))
        elif op == "transpose":
            out, want = F.move(lambda ts: ts[0].t(), [a]), A.T
        else:
            out, want = (F.neg(a), -A) if op == "neg" else (F.nonneg(a), (A >= 0).astype(int))
        vals.append((out, check(F, out, want)))


@SETTINGS
@given(cases(2, 3), st.data())
def test_moves_and_reading(case, data):
    F, x = case
    a, X = build(F, x), ref(F, x)
    small = F.from_int64(torch.tensor([[5, -7, 9]]))
    check(F, F.move(lambda ts: torch.cat(ts, 0), [a, small]), np.concatenate([X, [[5, -7, 9]]]))
    check(F, F.move(lambda ts: ts[0][:, 1:], [a]), X[:, 1:])
    check(F, F.move(lambda ts: ts[0].permute(1, 0).contiguous()[torch.tensor([2, 0])], [a]), X.T[[2, 0]])
    assert F.extremes(a) == (min(X.flat), max(X.flat))
    bits = data.draw(st.integers(0, 130))
    half = 1 << (bits - 1) if bits else 0
    assert F.outside_bits(a, bits) == sum(1 for v in X.flat if v >= half or v < -half)
    scale = data.draw(st.integers(-20, 140))
    got = F.decode(a, scale)
    assert got.dtype == torch.float64
    for g, v in zip(got.flatten().tolist(), X.flat):
        assert abs(g - v * 2.0**-scale) <= abs(v * 2.0**-scale) * 2**-50
    assert F.to_float(a).flatten().tolist() == pytest.approx([float(v) for v in X.flat], rel=2**-50)


def exact_round(real: float, scale: int) -> int:
    return round(Fraction(real) * Fraction(2) ** scale)  # round half to even, as torch.round


@SETTINGS
@given(st.sampled_from(FIELDS), st.lists(st.floats(-1e40, 1e40, allow_nan=False) | st.floats(-3, 3), min_size=1,
                                         max_size=5), st.integers(0, 160))
def test_encode(kind, reals, scale):
    F = field(*kind)
    t = torch.tensor(reals, dtype=torch.float64)
    want = [exact_round(r, scale) for r in reals]
    check(F, F.encode_public(t, scale), want)
    if all(F.low <= w <= F.top for w in want):
        check(F, F.encode(t, scale), want)
    else:
        with pytest.raises(UserError, match="does not fit"):
            F.encode(t, scale)


def test_encode_edges():
    for kind in FIELDS:
        F = field(*kind)
        for bad in (float("inf"), float("nan")):
            with pytest.raises(UserError, match="not finite"):
                F.encode_public(torch.tensor([1.0, bad]), 3)
            with pytest.raises(UserError, match="does not fit"):
                F.encode(torch.tensor([bad]), 3)
        reals = [-(2.0**126), 2.0**126 - 2.0**73, -1.5, 2.5, -2.5, 1e300, -3.0 * 2**100]
        check(F, F.encode_public(torch.tensor(reals, dtype=torch.float64), 0), [exact_round(r, 0) for r in reals])
        tiny = torch.tensor([1e-300, -0.75], dtype=torch.float64)
        check(F, F.encode_public(tiny, 1000), [exact_round(r, 1000) for r in tiny.tolist()])
        check(F, F.from_int64(torch.tensor([-(1 << 63), (1 << 63) - 1, 0])), [-(1 << 63), (1 << 63) - 1, 0])


def test_constructor_errors_and_attributes():
    assert sympy.isprime(P127) and P127 == sympy.prevprime(2**127 - 2**70)
    for bad in (64, 129, 2):
        with pytest.raises(UserError, match="between 65 and 128"):
            WideRing(bad)
    for bad in (15, (1 << 61) + 1):
        with pytest.raises(UserError, match="not prime"):
            PrimeField(bad)
    for bad in (sympy.nextprime(2**127), 2, 1, -5):
        with pytest.raises(UserError, match=r"\[3, 2\^127\)"):
            PrimeField(bad)
    assert (WideRing(96).bits, WideRing(96).prime) == (96, None)
    assert PrimeField(65521).bits == 15 and PrimeField(P127).bits == 126 and PrimeField(3).bits == 1
    assert PrimeField(65521).prime == 65521 and "65521" in repr(PrimeField(65521)) and "96" in repr(WideRing(96))
    with pytest.raises(UserError, match="no exact wide"):
        WideRing(128).linear(lambda ts: ts[0] * 2, [WideRing(128).from_int64(torch.tensor([1]))])


def test_mersenne_127_and_tiny_prime():
    for p in ((1 << 127) - 1, 3, 5):
        F = PrimeField(p)
        x = [[F.top, F.low, 1], [-1, 0, F.top // 3]]
        a, X = build(F, x), ref(F, x)
        check(F, F.mul(a, a), X * X)
        check(F, F.matmul(a, F.move(lambda ts: ts[0].t(), [a])), np.matmul(X, X.T))
        check(F, F.shl(a, 300), X * 2**300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(2)
    for kind in FIELDS:
        F = field(*kind)
        x = torch.randint(-(1 << 62), 1 << 62, (16, 40), generator=g)
        y = torch.randint(-(1 << 62), 1 << 62, (40, 8), generator=g)
        for dev in ("cpu", "cuda"):
            a, b = F.from_int64(x).to(dev), F.from_int64(y).to(dev)
            big = F.shl(a, 60)
            out = [F.matmul(a, b), F.mul(big, big), F.trunc_nearest(F.mul(big, a), 70), F.sum(big, [1], False)]
            got = [F.to_ints(v.cpu()) for v in out]
            if dev == "cpu":
                cpu = got
        assert got == cpu


@SETTINGS
@given(st.integers(1, 8), st.integers(100, 120), st.data())
def test_prime_matmul_certificate(k, a_bits, data):
    """F_p products whose worst case passes 2^127 stay on the 128-bit path when a float64
    certificate shows every sum below 2^126, and go to Python ints when it cannot: exact both ways.
    Cancelling rows (the sum is 0 though every term is ~2^127) certify; large sums do not."""
    F = PrimeField(P127)
    b_bits = 127 - a_bits + data.draw(st.integers(0, 6))
    x = [[data.draw(st.integers(-(1 << a_bits), 1 << a_bits)) for _ in range(k)] for _ in range(2)]
    y = [[data.draw(st.integers(-(1 << b_bits), 1 << b_bits))] for _ in range(k)]
    x.append([1 << a_bits] * k)  # with y's sign pattern below, this row's sum cancels to 0 when k is even
    y = [[(-1) ** i * (1 << b_bits)] if i < k - k % 2 else row for i, row in enumerate(y)]
    check(F, F.matmul(build(F, x), build(F, y)), np.matmul(ref(F, x), ref(F, y)))
