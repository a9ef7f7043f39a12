"""The emulator's integers equal an independent Python-int computation in Z_2^l (2 <= l <= 128)
and in prime fields F_p (signed representatives), through the whole executor."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from truncbridge.backends import RingExecutor
from truncbridge.core.errors import UserError
from truncbridge.core.fields import prime_capacity_bits
from truncbridge.core.gemm import gemm_count
from truncbridge.core.ir import Node, Program
from truncbridge.core.ring import Ring, matmul_mod64
from truncbridge.core.types import Plan, PlanConfig

N = 3  # every tensor in the random programs is N x N


def signed(v: int, bits: int) -> int:
    v %= 1 << bits
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def signed_mod(v: int, p: int) -> int:
    """The representative of v mod p in [-(p-1)/2, (p-1)/2]."""
    v %= p
    return v - p if v > (p - 1) // 2 else v


P61, P127 = 2**61 - 1, 170141183460469230551095682998472802077  # prime, and sympy.prevprime(2^127 - 2^70)


class Reference:
    """Plain Python integers, reduced mod 2^bits (or mod prime) after every operation; no torch."""

    def __init__(self, bits, prime=None):
        self.bits = bits
        self.reduce = (lambda v: signed_mod(v, prime)) if prime else (lambda v: signed(v, bits))

    def map2(self, a, b, fn):
        return [[self.reduce(fn(x, y)) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]

    def run(self, op, args, attrs, consts):
        a = args[0]
        if op == "add":
            return self.map2(a, args[1], lambda x, y: x + y)
        if op == "mul":
            return self.map2(a, args[1], lambda x, y: x * y)
        if op == "neg":
            return self.map2(a, a, lambda x, _: -x)
        if op == "mul_public":
            return self.map2(a, consts[attrs["const"]], lambda x, c: x * c)
        if op == "add_public":
            return self.map2(a, consts[attrs["const"]], lambda x, c: x + c)
        if op == "trunc":  # Python >> is floor division
            half = (1 << attrs["shift"]) >> 1 if attrs["rounding"] == "nearest" else 0
            return self.map2(a, a, lambda x, _: self.reduce(x + half) >> attrs["shift"])
        if op == "shl":
            return self.map2(a, a, lambda x, _: x << attrs["shift"])
        if op == "matmul":
            b = args[1]
            return [[self.reduce(sum(a[i][k] * b[k][j] for k in range(N))) for j in range(N)] for i in range(N)]
        if op == "sum":  # over dim 1, keepdim: broadcast back is not needed, keep N x 1
            return [[self.reduce(sum(row))] for row in a]
        raise AssertionError(op)


OPS = ("add", "mul", "neg", "mul_public", "add_public", "trunc", "shl", "matmul", "sum")


FIELDS = [(bits, None) for bits in (2, 8, 16, 31, 32, 33, 48, 63, 64, 65, 96, 127, 128)] + [
    (0, P61), (0, P127), (0, 65521)]


ANY_FIELD = st.sampled_from(FIELDS) | st.builds(lambda b: (b, None), st.integers(2, 128))


@st.composite
def programs(draw):
    """(bits, prime, inputs, steps): a random program of up to 12 ops on N x N integers."""
    bits, prime = draw(ANY_FIELD)
    if prime:
        bits = prime_capacity_bits(prime)
        lo, hi = -((prime - 1) // 2), (prime - 1) // 2
    else:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    ring_ints = st.integers(max(lo, -(2**63)), min(hi, 2**63 - 1))  # inputs arrive as int64
    matrix = st.lists(st.lists(ring_ints, min_size=N, max_size=N), min_size=N, max_size=N)
    n_inputs = draw(st.integers(1, 3))
    values = [draw(matrix) for _ in range(n_inputs)]
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(OPS))
        square = [i for i, v in enumerate(values) if len(v[0]) == N]
        i = draw(st.sampled_from(square))
        j = draw(st.sampled_from(square))
        attrs = {}
        if op in ("trunc", "shl"):
            attrs["shift"] = draw(st.integers(0, bits + 1))
        if op == "trunc":
            attrs["rounding"] = draw(st.sampled_from(["nearest", "floor"]))
        if op in ("mul_public", "add_public"):  # public constants come from float64: |c| < 2^53
            c = (1 << (min(bits, 53) - 1))
            attrs["value"] = draw(st.lists(st.lists(st.integers(-c, c - 1), min_size=N, max_size=N), min_size=N, max_size=N))
        steps.append((op, (i, j) if op in ("add", "mul", "matmul") else (i,), attrs))
        values.append([[0]] if op == "sum" else [[0] * N] * N)
    return bits, prime, values[:n_inputs], steps


def build(bits, inputs, steps, prime=None):
    prog = Program()
    for k, _ in enumerate(inputs):
        prog.nodes.append(Node(k, "input", (), (N, N), {"name": f"x{k}"}, scale=0))
        prog.inputs[f"x{k}"] = k
    for op, ins, attrs in steps:
        nid = len(prog.nodes)
        attrs = dict(attrs)
        shape = (N, 1) if op == "sum" else (N, N)
        if "value" in attrs:
            prog.consts[f"c{nid}"] = torch.tensor(attrs.pop("value"), dtype=torch.float64)
            attrs.update(const=f"c{nid}", const_scale=0)
        if op == "sum":
            attrs.update(dims=[1], keepdim=True)
        prog.nodes.append(Node(nid, op, ins, shape, attrs, scale=0))
    prog.outputs = list(range(len(inputs), len(prog.nodes)))
    return Plan(prog, PlanConfig(bits, 0, "test", prime=prime), {n.id: bits for n in prog.nodes})


@settings(max_examples=300, deadline=None)
@given(programs())
def test_random_programs_match_python_integers(case):
    bits, prime, inputs, steps = case
    plan = build(bits, inputs, steps, prime)
    ints = {f"x{k}": torch.tensor(v, dtype=torch.int64) for k, v in enumerate(inputs)}
    executor = RingExecutor(plan)
    outs, _ = executor.run(ints)

    ref = Reference(bits, prime)
    env = [[[ref.reduce(x) for x in row] for row in v] for v in inputs]
    consts = {k: [[int(x) for x in row] for row in v.tolist()] for k, v in plan.program.consts.items()}
    for node in plan.program.nodes[len(inputs):]:
        env.append(ref.run(node.op, [env[i] for i in node.inputs], node.attrs, consts))
    for out_id, got in zip(plan.program.outputs, outs):
        assert executor.backend.field.to_ints(got) == env[out_id], plan.program.nodes[out_id].op
    # only the last value an output: values die early, so ops run in place and products carry their
    # truncation's offset (``ring_backend``) — the same integers
    plan.program.outputs = plan.program.outputs[-1:]
    last = RingExecutor(plan)
    (got,), _ = last.run(ints)
    assert last.backend.field.to_ints(got) == env[plan.program.outputs[0]]


def fused_offsets_case(field, inputs, k, drop_offset: bool = False):
    """(x * y) truncated to nearest by k, then + x, negated, public product truncated by 1: the
    executor's integers and Python's. ``drop_offset``: the mutant whose products leave out their
    truncation's offset while the truncation still only shifts."""
    bits, prime = field
    bits = prime_capacity_bits(prime) if prime else bits
    steps = [("mul", (0, 1), {}), ("trunc", (2,), {"shift": k, "rounding": "nearest"}), ("add", (3, 0), {}),
             ("neg", (4,), {}), ("mul_public", (5,), {"value": [[3, -5, 7]] * N}),
             ("trunc", (6,), {"shift": 1, "rounding": "nearest"})]
    plan = build(bits, inputs, steps, prime)
    plan.program.outputs = [len(plan.program.nodes) - 1]
    executor = RingExecutor(plan)
    assert set(executor.backend.offsets) == {2, 6} and {3, 4, 5, 7} <= executor.backend.in_place
    if drop_offset:
        ring = executor.backend.field
        ring.mul_add = lambda a, b, offset: ring.mul(a, b)
    (got,), _ = executor.run({f"x{i}": torch.tensor(v) for i, v in enumerate(inputs)})
    ref = Reference(bits, prime)
    env = [[[ref.reduce(x) for x in row] for row in v] for v in inputs]
    for node in plan.program.nodes[2:]:
        env.append(ref.run(node.op, [env[i] for i in node.inputs], node.attrs, {"c6": [[3, -5, 7]] * N}))
    return executor.backend.field.to_ints(got), env[-1]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FIELDS), st.data())
def test_fused_offsets_and_in_place_ops_keep_the_integers(field, data):
    """The products carry their truncation's offset and the later ops overwrite their inputs —
    exactly as Python integers say."""
    bits = prime_capacity_bits(field[1]) if field[1] else field[0]
    ints = st.integers(-(2 ** min(bits - 2, 62)), 2 ** min(bits - 2, 62))
    matrix = st.lists(st.lists(ints, min_size=N, max_size=N), min_size=N, max_size=N)
    got, want = fused_offsets_case(field, [data.draw(matrix), data.draw(matrix)], data.draw(st.integers(1, bits - 1)))
    assert got == want


@pytest.mark.parametrize("field", [(64, None), (96, None), (0, P61)])
def test_fused_offsets_check_sees_a_dropped_offset(field):
    """Negative control: products that leave out their truncation's offset (floor instead of
    nearest, off by one where bit k-1 of the product is set) fail the comparison above."""
    inputs = [[[3, 5, -7]] * N, [[1, 1, 1]] * N]  # products 3, 5, -7: bit 1 set; truncated by k = 2
    got, want = fused_offsets_case(field, inputs, 2)
    assert got == want
    got, want = fused_offsets_case(field, inputs, 2, drop_offset=True)
    assert got != want


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 5), st.integers(1, 64), st.integers(1, 64),
       st.integers(0, 2**31 - 1))
def test_limb_matmul_is_exact_mod_2_64(rows, inner, cols, a_bits, b_bits, seed):
    """Float64 GEMMs on as many limbs as the magnitudes need (one for small operands, eight
    for full 64-bit ones) agree with Python integers, as does the int64 path."""
    g = torch.Generator().manual_seed(seed)
    a = _random_ints(rows, inner, a_bits, g)
    b = _random_ints(inner, cols, b_bits, g)
    want = [[signed(sum(int(a[i, k]) * int(b[k, j]) for k in range(inner)), 64) for j in range(cols)] for i in range(rows)]
    assert matmul_mod64(a, b, method="split").tolist() == want
    assert matmul_mod64(a.double() if a_bits <= 53 else a, b, method="split").tolist() == want
    assert matmul_mod64(a, b, method="int64").tolist() == want


@pytest.mark.parametrize("block, narrowest", [(1, 1), (7, 1), (64, 1), (64, 16), (64, 40), (64, 41), (1 << 22, 1)])
@pytest.mark.parametrize("tall", [False, True], ids=["wide", "tall"])
def test_a_large_right_operand_is_multiplied_a_block_at_a_time(monkeypatch, block, narrowest, tall):
    """Blocks of columns of a wide operand (the head's weight) or of the inner dimension of a tall one (a one-hot
    embedding's), a memory bound on their limbs, give the same exact product, whatever the block: a one-column or
    one-row block, blocks no smaller than the operand (no blocking, no recursion), a transposed (strided) operand
    and a batched left operand included."""
    from truncbridge.core import ring

    g = torch.Generator().manual_seed(block)
    a, b = _random_ints(5, 16, 64, g), _random_ints(40, 16, 64, g).T
    if tall:
        a, b = torch.stack([_random_ints(5, 40, 64, g), _random_ints(5, 40, 64, g)]), b.T
    want = matmul_mod64(a, b, method="int64")
    monkeypatch.setattr(ring, "LIMB_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(ring, "LIMB_BLOCK_MIN_COLUMNS", narrowest)
    assert torch.equal(matmul_mod64(a, b, method="split"), want)
    assert torch.equal(matmul_mod64(a, b, method="split", a_bits=64, b_bits=64), want)


def _random_ints(rows: int, cols: int, bits: int, g: torch.Generator) -> torch.Tensor:
    """Integers with |x| < 2^bits, the extremes included (bits = 64: the whole int64 range)."""
    hi = 2 ** min(bits, 63)
    x = torch.randint(-hi + 1 if bits < 64 else -hi, hi - 1, (rows, cols), generator=g)
    x[0, 0] = -hi + 1 if bits < 64 else -hi
    return x


def test_limb_count_follows_the_magnitudes():
    assert gemm_count(20, 20, 64) == 1  # 20 + 20 + 6 <= 53: one exact float64 GEMM
    assert gemm_count(40, 20, 1024) == 2  # the activation is cut in two, the weight kept whole
    assert gemm_count(64, 64, 4) == 8  # 4 x 19-bit limbs by 2 x 32-bit limbs
    a = torch.randint(-(2**20), 2**20, (7, 64))
    b = torch.randint(-(2**20), 2**20, (64, 5))
    assert torch.equal(matmul_mod64(a, b, method="split"), a @ b)
    with pytest.raises(UserError, match="too long"):
        gemm_count(1, 1, 2**52)


@given(st.integers(2, 64), st.integers(-(2**63), 2**63 - 1))
def test_reduce_is_the_signed_representative(bits, v):
    assert Ring(bits).reduce(torch.tensor([v])).item() == signed(v, bits)


@given(st.integers(2, 64), st.integers(0, 63), st.data())
def test_truncation_is_floor_of_the_signed_value(bits, shift, data):
    v = data.draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    got = Ring.trunc_floor(torch.tensor([v]), shift).item()
    assert got == v // 2**shift


@given(st.integers(2, 64), st.floats(-1e6, 1e6, allow_nan=False), st.integers(0, 62))
def test_public_constants_wrap_exactly(bits, value, scale):
    """A public operand may exceed the ring: it is encoded as round(c 2^s) mod 2^l, exactly."""
    from fractions import Fraction

    exact = round(Fraction(value) * 2**scale)
    got = Ring(bits).encode_public(torch.tensor([value], dtype=torch.float64), scale).item()
    assert got == signed(exact, bits)


def test_a_value_bounded_by_zero_is_checked_not_crashed_on():
    """A node whose bound is 0 at scale 0 has a negative bit count: --check counts any non-zero."""
    from truncbridge.analysis import place
    from truncbridge.core.ir import Builder
    from truncbridge.core.types import Bound

    b = Builder()
    x = b.input("x", (4,), integer=True)
    b.output(b.mul_public(x, 3.0))
    plan = place(b.program, {0: Bound(0.0, "calibrated"), 1: Bound(0.0, "calibrated"), 2: Bound(0.0, "calibrated")},
                 PlanConfig(64, 16, "eager"))
    assert plan.bound_bits(plan.program[0]) < 1
    ex = RingExecutor(plan)
    assert ex.run({"x": torch.zeros(4)}, check=True)[1] == 0
    assert ex.run({"x": torch.tensor([0.0, 1.0, 0.0, -1.0])}, check=True)[1] > 0


def test_check_names_a_value_above_its_bound_even_within_its_bit_width():
    """A bound of 5 promises 3 integer bits (up to 8): a value of 6 keeps the bit width but breaks
    the bound, and --check names the node, its origin, bound, source and what it saw; 5 (the
    bound itself) passes, and so does 5 plus fixed-point rounding (the slack), not 6."""
    from truncbridge.analysis import place
    from truncbridge.core.ir import Builder
    from truncbridge.core.types import Bound

    b = Builder()
    b.origin = "model.layers.3.mlp:act"
    x = b.input("x", (3,))
    b.output(b.add_public(x, 1.0))
    plan = place(b.program, {0: Bound(4.0, "range"), 1: Bound(5.0, "range"), 2: Bound(5.0, "range")},
                 PlanConfig(64, 16, "eager"))
    ex = RingExecutor(plan)
    assert ex.run({"x": torch.tensor([4.0, -4.0, 3.0])}, check=True)[1] == 0 and not ex.offenders
    assert ex.run({"x": torch.tensor([4.0 + 2.0**-16, 0.0, 0.0])}, check=True)[1] == 0 and not ex.offenders
    assert ex.run({"x": torch.tensor([5.0, 0.0, 0.0])}, check=True)[1] == 0  # within bits
    (worst,) = [o for o in ex.worst_offenders() if o["node"] == 1]
    assert worst["origin"] == "model.layers.3.mlp:act" and worst["source"] == "range"
    assert worst["bound"] == 5.0 and worst["seen"] == 6.0 and worst["elements"] == 1 and worst["beyond_bits"] == 0
    assert ex.above_bound == 3  # the input (5 > 4), the sum and the output (6 > 5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 4), max_size=4), st.lists(st.integers(1, 4), max_size=4))
def test_broadcast_shape_is_torch_s(x, y):
    """core.ring.broadcast_shape (plain Python, for the online pass's hot paths) = torch.broadcast_shapes,
    the refusal of shapes that do not broadcast included."""
    from truncbridge.core.ring import broadcast_shape

    try:
        expected = tuple(torch.broadcast_shapes(tuple(x), tuple(y)))
    except RuntimeError:
        with pytest.raises(RuntimeError):
            broadcast_shape(x, y)
        return
    assert broadcast_shape(x, y) == expected
