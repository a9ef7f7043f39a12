"""The owner's weights kept for its online products (``openings.OwnerWeights``): equal to the weight,
4 bytes an element where they fit, and one copy per base tensor however many views read it (a head's
transpose of the embedding it is tied to)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from truncbridge.backends.crypten.openings import OwnerWeights


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), bits=st.integers(1, 31), seed=st.integers(0, 2**31 - 1),
       view=st.sampled_from(["transpose", "rows", "column"]))
def test_a_view_of_a_kept_weight_shares_its_narrowed_copy(rows, cols, bits, seed, view):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-(1 << bits) + 1, 1 << bits, (rows, cols), generator=g)
    derived = {"transpose": base.permute(1, 0), "rows": base[rows // 2:], "column": base[:, cols - 1]}[view]
    kept = OwnerWeights()
    whole, whole_bits = kept.keep(base)
    part, part_bits = kept.keep(derived)
    assert whole.dtype == part.dtype == torch.int32
    assert torch.equal(whole.long(), base) and torch.equal(part.long(), derived)  # the same integers
    assert storage(part) == storage(whole)  # no second copy
    assert (whole_bits, part_bits) == (int(base.abs().max()).bit_length(), int(derived.abs().max()).bit_length())


def test_a_view_kept_first_narrows_its_whole_base_once():
    base = torch.arange(-6, 6).reshape(3, 4)
    kept = OwnerWeights()
    head, _ = kept.keep(base.t())
    embedding, _ = kept.keep(base)
    assert torch.equal(head.long(), base.t()) and storage(head) == storage(embedding)


def test_a_weight_beyond_32_bits_is_kept_as_it_is():
    base = torch.tensor([[1 << 40, -3], [5, 7]])
    kept, _ = OwnerWeights().keep(base)
    assert kept is base and kept.dtype == torch.int64


def test_a_base_beyond_32_bits_keeps_a_fitting_view_apart():
    base = torch.tensor([[1 << 40, -3], [5, 7]])
    part, bits = OwnerWeights().keep(base[1])  # the view fits; its base does not: a copy of the view alone
    assert part.dtype == torch.int32 and torch.equal(part.long(), base[1]) and bits == 3


def test_a_stale_entry_at_a_reused_id_is_not_read():
    """An entry outlives its base (ids are reused once a tensor is freed): a new base at that id is
    narrowed afresh, never read through the old copy."""
    kept, old = OwnerWeights(), torch.full((2, 2), 9)
    kept.keep(old)
    new = torch.tensor([[0, 1], [2, 3]])
    kept._narrowed[id(new)] = kept._narrowed.pop(id(old))  # what a freed `old` and `new` at its id would leave
    got, _ = kept.keep(new)
    assert torch.equal(got.long(), new)
