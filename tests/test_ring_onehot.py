"""The one-hot product (``one_hot(ids) @ table``, the client's tokens) as a row gather: the same
integers as the general product and as Python integers, in every field, table entries at the
field's edges included; inputs that are not exactly one-hot take the general product."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from truncbridge.backends import RingExecutor, ring_backend
from truncbridge.core.fields import prime_capacity_bits
from truncbridge.core.gemm import _as_int64, one_hot_rows, select_rows
from truncbridge.core.ir import Node, Program
from truncbridge.core.ring import matmul_mod64
from truncbridge.core.types import Plan, PlanConfig

P61, P127 = 2**61 - 1, 170141183460469230551095682998472802077
FIELDS = [(bits, None) for bits in (2, 8, 31, 53, 63, 64, 65, 96, 128)] + [(0, P61), (0, P127), (0, 65521)]


def element_range(bits: int, prime: int | None) -> tuple[int, int]:
    """The field's signed representatives that arrive as int64 (its edges where int64 holds them)."""
    lo, hi = (-((prime - 1) // 2), (prime - 1) // 2) if prime else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return max(lo, -(2**63)), min(hi, 2**63 - 1)


def reduce(v: int, bits: int, prime: int | None) -> int:
    if prime:
        v %= prime
        return v - prime if v > (prime - 1) // 2 else v
    v %= 1 << bits
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def one_hot_plan(bits: int, prime: int | None, rows: int, k: int, n: int, weight: torch.Tensor | None) -> Plan:
    """tokens (1, rows, k) integer @ table (k, n): the table an int64 input, or a weight (folded, kept as float64)."""
    prog = Program()
    prog.nodes.append(Node(0, "input", (), (1, rows, k), {"name": "tokens", "integer": True}, scale=0))
    if weight is None:
        prog.nodes.append(Node(1, "input", (), (k, n), {"name": "table"}, scale=0))
    else:
        prog.weights["table"] = weight
        prog.nodes.append(Node(1, "weight", (), (k, n), {"name": "table"}, scale=0))
    prog.nodes.append(Node(2, "matmul", (0, 1), (1, rows, n), {}, scale=0))
    prog.nodes.append(Node(3, "output", (2,), (1, rows, n), {}, scale=0))
    prog.inputs = {"tokens": 0} if weight is not None else {"tokens": 0, "table": 1}
    prog.outputs = [3]
    bits = prime_capacity_bits(prime) if prime else bits
    return Plan(prog, PlanConfig(bits, 0, "test", prime=prime), {i: bits for i in range(4)})


def run(plan: Plan, inputs: dict, general: bool = False) -> tuple[list, RingExecutor]:
    """The output's integers; ``general``: with the row gather switched off (the reference path)."""
    executor = RingExecutor(plan)
    if general:
        executor.backend.selectors = set()
    (out,), _ = executor.run(inputs)
    return executor.backend.field.to_ints(out), executor


def python_product(tokens: list, table: list, bits: int, prime: int | None) -> list:
    """sum_k tokens[r][k] * table[k][j], reduced: the general product, independently."""
    return [[[reduce(sum(t * row[j] for t, row in zip(trow, table)), bits, prime) for j in range(len(table[0]))]
             for trow in tokens[0]]]


@st.composite
def cases(draw):
    bits, prime = draw(st.sampled_from(FIELDS) | st.builds(lambda b: (b, None), st.integers(2, 128)))
    lo, hi = element_range(bits, prime)
    edges = st.sampled_from(sorted({lo, lo + 1, -1, 0, 1, hi - 1, hi}))  # all elements, from 2 bits up
    k, n, rows = draw(st.integers(1, 9)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    entry = edges | st.integers(lo, hi)
    table = draw(st.lists(st.lists(entry, min_size=n, max_size=n), min_size=k, max_size=k))
    ids = draw(st.lists(st.integers(0, k - 1), min_size=rows, max_size=rows))
    return bits, prime, table, ids


@settings(max_examples=150, deadline=None)
@given(cases(), st.booleans())
def test_one_hot_rows_equal_the_general_product(case, as_float):
    bits, prime, table, ids = case
    k, n = len(table), len(table[0])
    tokens = torch.nn.functional.one_hot(torch.tensor([ids]), k)
    given_tokens = tokens.double() if as_float else tokens  # the pipeline gives float64 0/1; int64 also works
    plan = one_hot_plan(bits, prime, len(ids), k, n, None)
    inputs = {"tokens": given_tokens, "table": torch.tensor(table, dtype=torch.int64)}
    fast, executor = run(plan, inputs)
    assert executor.backend.rows[0] is not None  # the gather was taken
    want = python_product(tokens.tolist(), [[reduce(v, plan.field_bits, prime) for v in row] for row in table],
                          plan.field_bits, prime)
    assert fast == want
    assert run(plan, inputs, general=True)[0] == want


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FIELDS), st.integers(1, 9), st.integers(1, 4), st.data())
def test_a_folded_weight_table_gives_the_same_rows(field, k, n, data):
    """The table as a weight: folded once and kept as float64 for GEMMs (< 2^53), gathered from there."""
    bits, prime = field
    cap = prime_capacity_bits(prime) if prime else bits
    limit = 1 << (min(cap, 53) - 1)
    table = data.draw(st.lists(st.lists(st.sampled_from([-limit, limit - 1, 0, -1]) | st.integers(-limit, limit - 1),
                                        min_size=n, max_size=n), min_size=k, max_size=k))
    ids = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=6))
    plan = one_hot_plan(bits, prime, len(ids), k, n, torch.tensor(table, dtype=torch.float64))
    inputs = {"tokens": torch.nn.functional.one_hot(torch.tensor([ids]), k).double()}
    fast, executor = run(plan, inputs)
    assert executor.backend.rows[0] is not None
    assert fast == run(plan, inputs, general=True)[0] == [[table[i] for i in ids]]


NOT_ONE_HOT = {  # (1, 2, 3) token matrices a gather would get wrong
    "two ones in a row": [[[1, 1, 0], [0, 0, 1]]],
    "a 2": [[[0, 2, 0], [1, 0, 0]]],
    "a -1": [[[0, -1, 0], [1, 0, 0]]],
    "an empty row": [[[0, 0, 0], [1, 0, 0]]],
    "1 and a cancelling pair": [[[1, 1, -1], [1, 0, 0]]],
}


@pytest.mark.parametrize("name", sorted(NOT_ONE_HOT))
@pytest.mark.parametrize("field", [(64, None), (16, None), (96, None), (0, P61)])
def test_tokens_that_are_not_one_hot_take_the_general_product(name, field):
    bits, prime = field
    tokens = NOT_ONE_HOT[name]
    lo, hi = element_range(bits, prime)
    table = [[hi, lo, 5], [-1, hi - 1, lo + 1], [7, 0, hi]]
    plan = one_hot_plan(bits, prime, 2, 3, 3, None)
    for dtype in (torch.int64, torch.float64):
        inputs = {"tokens": torch.tensor(tokens, dtype=dtype), "table": torch.tensor(table, dtype=torch.int64)}
        got, executor = run(plan, inputs)
        assert executor.backend.rows[0] is None
        assert got == python_product(tokens, table, plan.field_bits, prime)


def test_a_wrong_gather_is_caught(monkeypatch):
    """Negative control: a gather that picks the next row fails the comparison the tests above make."""
    table = [[2**63 - 1, -(2**63)], [3, -4], [0, 1]]
    tokens = torch.nn.functional.one_hot(torch.tensor([[0, 2, 1]]), 3)
    plan = one_hot_plan(64, None, 3, 3, 2, None)
    inputs = {"tokens": tokens, "table": torch.tensor(table)}
    want = python_product(tokens.tolist(), table, 64, None)
    assert run(plan, inputs)[0] == want
    monkeypatch.setattr(ring_backend, "select_rows", lambda t, rows: select_rows(t, (rows + 1) % t.shape[0]))
    assert run(plan, inputs)[0] != want


def test_gemm_helpers_are_exact():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 7), generator=g)
    one_hot = torch.nn.functional.one_hot(ids, 50)
    assert torch.equal(one_hot_rows(one_hot), ids) and torch.equal(one_hot_rows(one_hot.double()), ids)
    for x in (one_hot * 2, one_hot - one_hot, torch.zeros(3, 0), one_hot.bool()):
        assert one_hot_rows(x) is None
    table = torch.randint(-(2**63), 2**63 - 1, (50, 5), generator=g)
    table[0, 0], table[1, 1] = -(2**63), 2**63 - 1
    ids[0, :2] = torch.tensor([0, 1])  # the rows with the int64 edges
    one_hot = torch.nn.functional.one_hot(ids, 50)
    assert torch.equal(select_rows(table, ids), matmul_mod64(one_hot, table, method="split"))
    floats = torch.randint(-(2**53), 2**53 + 1, (50, 5), generator=g).double()
    assert torch.equal(select_rows(floats, ids), matmul_mod64(one_hot, floats, method="split"))
    edges = torch.tensor([2.0**53, -(2.0**53), 0.0, -1.0, 1.0, 2.0**52 + 1], dtype=torch.float64)
    assert torch.equal(_as_int64(edges.clone()), edges.to(torch.int64))
    assert torch.equal(_as_int64(edges.view(2, 3).t()), edges.view(2, 3).t().to(torch.int64))  # not contiguous
    assert torch.equal(_as_int64(edges.float()), edges.float().to(torch.int64))  # not float64: converted, not viewed


def test_cpu_products_take_int64_only_when_tiny(monkeypatch):
    """On CPU an int64 matmul costs 25-65 float64 GEMMs from 128^3 up (``ring.CPU_INT64_MACS_PER_GEMM``):
    a product of 4 limb GEMMs takes the limbs unless it is tiny; both give the same integers."""
    dtypes = []
    real = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b, **kw: dtypes.append(a.dtype) or real(a, b, **kw))
    g = torch.Generator().manual_seed(2)
    for (m, k, n), want in (((64, 256, 64), torch.float64), ((4, 4, 4), torch.int64)):
        a = torch.randint(-(2**39), 2**39, (m, k), generator=g)
        b = torch.randint(-(2**39), 2**39, (k, n), generator=g)
        dtypes.clear()
        got = matmul_mod64(a, b)
        assert set(dtypes) == {want}
        assert torch.equal(got, matmul_mod64(a, b, method="split")) and torch.equal(got, matmul_mod64(a, b, method="int64"))
