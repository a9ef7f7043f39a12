"""tests/mt_clone.py: the facts about torch's CPU generator it relies on, and the clone itself.

The reference MT19937 here is numpy's legacy ``RandomState(seed)`` (``init_genrand(seed)``, raw
32-bit outputs through ``randint(0, 2**32, dtype=uint32)``): independent of torch and of mt_clone.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from mt_clone import (
    DRAWS_FOR_STATE,
    Clone,
    clone,
    first_int64_of_seeds,
    int64_of_words,
    recover_draws,
    seed_of_first_outputs,
    seeds_of_a_sum,
    temper,
    untemper,
    words_of_int64,
)

LOW, HIGH = -(2**63), 2**63 - 1  # the protocol's draw


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def draws(g: torch.Generator, *size: int) -> torch.Tensor:
    return torch.randint(LOW, HIGH, size, generator=g, dtype=torch.long)


def reference_outputs(seed: int, n: int) -> np.ndarray:
    """The first n 32-bit outputs of the reference MT19937 seeded with init_genrand(seed)."""
    return np.random.RandomState(seed).randint(0, 2**32, n, dtype=np.uint32)


SEEDS = [0, 1, 5489, 0xDEADBEEF, 2**40 + 7, 2**64 - 1, 0x8000000000000005]


# -- facts about torch 2.13's CPU generator ------------------------------------------------------

@pytest.mark.parametrize("seed", [2**40 + 7, 0xDEADBEEFCAFEBABE, 2**63 + 5, 2**64 - 1])
def test_manual_seed_keeps_only_the_low_32_bits(seed):
    assert torch.equal(draws(generator(seed), 1000), draws(generator(seed & 0xFFFFFFFF), 1000))
    negative = (seed | 1 << 63) - 2**64  # same low 32 bits
    assert torch.equal(draws(generator(negative), 100), draws(generator(seed & 0xFFFFFFFF), 100))
    assert not torch.equal(draws(generator(seed), 100), draws(generator((seed + 1) & 0xFFFFFFFF), 100))


@pytest.mark.parametrize("seed", SEEDS)
def test_an_int64_draw_is_two_outputs_the_first_the_high_half(seed):
    raw = reference_outputs(seed & 0xFFFFFFFF, 2 * 64).astype(np.uint64)
    got = draws(generator(seed), 64).numpy()
    high_first = ((raw[0::2] << np.uint64(32)) | raw[1::2]) ^ np.uint64(1 << 63)
    low_first = ((raw[1::2] << np.uint64(32)) | raw[0::2]) ^ np.uint64(1 << 63)
    assert (got.view(np.uint64) == high_first).all()
    assert not (got.view(np.uint64) == low_first).any()
    assert (int64_of_words(raw.astype(np.uint32)) == got).all()
    assert (words_of_int64(got) == raw).all()


@pytest.mark.parametrize("sizes", [[(16,)], [(1000,)], [(16384,)], [(100000,)], [(3,), (7,), (100000,)],
                                   [(64, 300)], [(5000, 50)], [(2, 3, 4, 5)]])
def test_randint_consumes_outputs_in_element_order_at_every_size(sizes):
    """No vectorised or reordered path: element i of the flattened tensor is outputs 2i, 2i + 1,
    and consecutive calls continue the stream."""
    seed = 987654321
    g = generator(seed)
    got = torch.cat([draws(g, *s).reshape(-1) for s in sizes]).numpy()
    raw = reference_outputs(seed, 2 * got.size)
    assert (int64_of_words(raw) == got).all()


@pytest.mark.parametrize("span", [2, 2**8, 2**28 - 1, 2**28, 2**31, 2**32, 2**40, 2**62])
def test_a_range_below_2_to_the_28_takes_one_output_per_element_wider_two(span):
    seed, n = 4242, 4000
    got = torch.randint(0, span, (n,), generator=generator(seed)).numpy().astype(np.uint64)
    raw = reference_outputs(seed, 2 * n).astype(np.uint64)
    if span < 2**28:
        assert (got == raw[:n] % np.uint64(span)).all()
    else:
        assert (got == ((raw[0::2] << np.uint64(32)) | raw[1::2]) % np.uint64(span)).all()


# -- the clone -------------------------------------------------------------------------------------

def test_untemper_inverts_temper():
    y = np.random.default_rng(0).integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32)
    assert (temper(untemper(y)) == y).all() and (untemper(temper(y)) == y).all()
    assert (temper(y) != y).mean() > 0.99


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("following", [1, 16, 1000, 16384, 100000])
def test_312_draws_predict_every_following_draw(seed, following):
    g = generator(seed)
    seen = draws(g, DRAWS_FOR_STATE)
    assert torch.equal(clone(seen).next_int64(following), draws(g, following))


def test_a_million_draws_are_predicted_exactly_and_fast():
    g = generator(0xC0FFEE)
    c = clone(draws(g, DRAWS_FOR_STATE))
    start = time.perf_counter()
    predicted = c.next_int64(10**6)
    seconds = time.perf_counter() - start
    assert torch.equal(predicted, draws(g, 10**6))
    assert seconds < 5, seconds  # ~0.3 s here


@pytest.mark.parametrize("start", [0, 1, 311, 312, 313, 624, 1000, 16000, 20000 - DRAWS_FOR_STATE])
def test_a_clone_from_any_offset_inside_a_tensor(start):
    """No alignment to torch's 624-word blocks: any 312 consecutive draws of a (multi-dimensional)
    tensor predict the rest of it and the tensors drawn after it."""
    g = generator(31337)
    seen = draws(g, 40, 500)  # 20000 draws, in element order
    c = clone(seen, start)
    rest = seen.reshape(-1)[start + DRAWS_FOR_STATE:]
    assert torch.equal(c.next_int64(rest.numel()), rest)
    assert torch.equal(c.next_int64(3000).reshape(3, 1000), draws(g, 3, 1000))


def test_skip_and_narrow_draws_follow_the_generator():
    """A clone tracks a generator through draws it does not predict (skip), and through torch's
    narrower ranges (one output per element below 2^28: the dealer's 1-bit B2A masks)."""
    g = generator(99)
    c = clone(draws(g, DRAWS_FOR_STATE))
    draws(g, 12345)
    c.skip(12345)
    for low, high, size in [(0, 2, (5, 7)), (0, 2**40, (100,)), (-5, 2**20, (33,)), (LOW, HIGH, (9,)), (0, 2**28, (10,))]:
        assert torch.equal(c.next_randint(low, high, size), torch.randint(low, high, size, generator=g))
    assert torch.equal(c.next_int64(500), draws(g, 500))


def test_the_clone_s_state_is_the_generator_s_recurrence():
    """Cloning from outputs at stream position 0 yields the generator's first twisted block,
    which Clone also accepts directly (state words), predicting the same."""
    g = generator(7)
    seen = draws(g, DRAWS_FOR_STATE)
    direct = Clone(untemper(words_of_int64(seen)))
    assert torch.equal(direct.next_int64(1000), clone(seen).next_int64(1000))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_32_bit_seed_comes_back_from_the_first_312_draws(seed):
    assert seed_of_first_outputs(words_of_int64(draws(generator(seed), DRAWS_FOR_STATE))) == seed & 0xFFFFFFFF


def test_first_draw_of_many_seeds_at_once():
    seeds = np.array([0, 1, 5489, 0xDEADBEEF, 2**32 - 1, 123456789], dtype=np.uint64).astype(np.uint32)
    expected = [draws(generator(int(s)), 1).item() for s in seeds]
    assert first_int64_of_seeds(seeds).tolist() == expected


# -- negative control: what is not MT19937 is not cloned ------------------------------------------

def test_draws_that_are_not_mt19937_predict_nothing():
    """The same cloning applied to OS randomness predicts 0 of the next draws (so the tests
    above can fail); so does a clone from a torch stream applied to another torch stream, and a
    clone taken one output off the draw boundary."""
    n = 4096
    fake = torch.from_numpy(np.frombuffer(os.urandom(8 * (DRAWS_FOR_STATE + n)), dtype=np.int64).copy())
    assert int((clone(fake).next_int64(n) == fake[DRAWS_FOR_STATE:]).sum()) == 0

    g, other = generator(1), generator(2)
    seen = draws(g, DRAWS_FOR_STATE)
    draws(other, DRAWS_FOR_STATE)
    assert int((clone(seen).next_int64(n) == draws(other, n)).sum()) == 0

    g = generator(3)
    words = words_of_int64(draws(g, DRAWS_FOR_STATE + 1))
    shifted = Clone.from_outputs(words[1:625])  # 624 consecutive outputs, but pairs split the wrong way
    assert int((shifted.next_int64(n) == draws(g, n)).sum()) == 0


# -- recover_draws: the attack's primitive ----------------------------------------------------------

def one_hot_rows(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, vocab).long()


@pytest.mark.parametrize("first_token", [0, 1, 10, 311, 312, 900])
def test_draws_off_by_one_where_a_token_sits_are_recovered_with_what_follows(first_token):
    """The owner's view in 2PC: a_1 − onehot. Every a_1 entry comes back, the token positions
    included (wherever the first token sits, even inside the 312-draw window), and the draws
    the stream makes next (the client's next masks)."""
    g = generator(first_token + 1000)
    a1, following = draws(g, 16, 1024), draws(g, 1024, 64)
    ids = torch.randint(0, 1024, (16,), generator=torch.Generator().manual_seed(first_token))
    ids[0] = first_token
    raw = recover_draws(a1 - one_hot_rows(ids, 1024), tail=following.numel())
    assert raw is not None
    assert torch.equal(raw[:a1.numel()].view(16, 1024), a1) and torch.equal(raw[a1.numel():].view(1024, 64), following)


def test_recover_draws_refuses_what_is_not_one_mt_stream():
    """Negative controls: OS randomness, and the sum of two MT streams (the owner's view in 3PC,
    −(a_1 + a_2)), give no clone at all — not a wrong one."""
    fake = torch.from_numpy(np.frombuffer(os.urandom(8 * 16384), dtype=np.int64).copy())
    assert recover_draws(fake) is None
    assert recover_draws(draws(generator(1), 16384) + draws(generator(2), 16384)) is None


def test_meet_in_the_middle_finds_the_two_seeds_behind_a_sum():
    """The 3PC owner's view −(ε + a_0) = a_1 + a_2 where the one-hot is 0: when a_1 and a_2 are
    their streams' first draws, the two 32-bit seeds come back by meeting in the middle. Run on
    2^16 candidate seeds that contain the true ones (all 2^32 take hours: see mt_attack.py);
    negative control: seeds outside the candidates are not found, and no pair is made up."""
    candidates = np.random.default_rng(1).choice(2**32, 2**16, replace=False).astype(np.uint32)
    s1, s2 = int(candidates[12345]), int(candidates[999])
    total = draws(generator(s1), 64) + draws(generator(s2), 64)
    assert set(seeds_of_a_sum(total, candidates)) == {(s1, s2), (s2, s1)}
    outside = total + draws(generator(int(candidates.max()) + 1), 64)  # a third stream in the sum
    assert seeds_of_a_sum(outside, candidates) == []
