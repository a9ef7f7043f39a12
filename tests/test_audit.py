"""The mask-accounting audit on hand-made logs: it accepts correct openings and names every kind of
broken one (the real-process versions of these controls are in test_run_pi.py)."""
from __future__ import annotations

import torch

from truncbridge.pi.audit import OFFSET_BITS, Opening, digest, findings

GEN = torch.Generator().manual_seed(7)


def ring(*shape):
    return torch.randint(-(2 ** 63), 2 ** 63 - 1, shape, generator=GEN, dtype=torch.long)


def split(value: torch.Tensor, parties: int, xor: bool = False) -> list[torch.Tensor]:
    shares = [ring(*value.shape) for _ in range(parties - 1)]
    last = value.clone()
    for s in shares:
        last = last ^ s if xor else last - s
    return [*shares, last]


def logs_for(steps: list[tuple], parties: int = 2) -> list[dict]:
    """steps: (kind, secrets (plaintext list), mask index, what every party receives)."""
    logs = [{"rank": r, "openings": [], "stray": [], "outputs": 0} for r in range(parties)]
    for kind, secrets, index, received in steps:
        shared = [split(s, parties, xor=kind in ("and", "b2a")) for s in secrets]
        for r, log in enumerate(logs):
            log["openings"].append(Opening(kind, [sh[r] for sh in shared], [index],
                                           [("all_reduce", [digest(t) for t in received])]))
    logs[1]["outputs"] = 1
    return logs


def beaver(index=0, masks=None):
    x, y = ring(3, 4), ring(4, 2)
    a, b = ring(3, 4), ring(4, 2)
    masks = {} if masks is None else masks
    masks[index] = (("additive",), {"a": a, "b": b})
    return x, y, a, b, masks


def test_correct_openings_pass():
    x, y, a, b, masks = beaver()
    r = ring(5)
    masks[1] = (("trunc",), {"r": r})
    bits, rb = torch.randint(0, 2, (6,), generator=GEN), torch.randint(0, 2, (6,), generator=GEN)
    masks[2] = (("B2A",), {"rB": rb})
    logs = logs_for([("beaver", [x, y], 0, [x - a, y - b]),
                     ("trunc", [r * 0 + 17], 1, [r * 0 + 17 + (1 << OFFSET_BITS) + r]),
                     ("b2a", [bits], 2, [bits ^ rb])])
    assert findings(logs, masks, set()) == []


def test_an_opening_without_its_mask_is_found():
    x, y, a, b, masks = beaver()
    assert any("not the secret plus a fresh dealt mask" in f
               for f in findings(logs_for([("beaver", [x, y], 0, [x, y - b])]), masks, set()))


def test_a_reused_mask_is_found():
    x, y, a, b, masks = beaver()
    x2, y2 = ring(3, 4), ring(4, 2)
    logs = logs_for([("beaver", [x, y], 0, [x - a, y - b]), ("beaver", [x2, y2], 0, [x2 - a, y2 - b])])
    assert any("mask 0 was already used by opening 0" in f for f in findings(logs, masks, set()))


def test_a_receiver_that_knows_the_mask_is_found():
    x, y, a, b, masks = beaver()
    found = findings(logs_for([("beaver", [x, y], 0, [x - a, y - b])]), masks, {0})
    assert found == ["opening 0 (beaver): party 0 receives an opening whose mask it knows (it dealt it)"]


def test_receipts_outside_openings_and_outputs_elsewhere_are_found():
    x, y, a, b, masks = beaver()
    logs = logs_for([("beaver", [x, y], 0, [x - a, y - b])])
    logs[0]["stray"].append(("broadcast", 12))
    logs[0]["outputs"] = 1
    found = findings(logs, masks, set())
    assert "party 0: broadcast of 12 elements outside any masked opening" in found
    assert "party 0: received the output, which only the client may" in found


def test_an_opening_with_no_dealt_mask_is_found():
    x, y, a, b, masks = beaver()
    logs = logs_for([("beaver", [x, y], 0, [x - a, y - b])])
    for log in logs:
        log["openings"][0].masks = []
    assert findings(logs, masks, set()) == ["opening 0 (beaver): opened with no dealt mask"]


def test_wraps_gathers_must_be_masked_share_by_share():
    x = ring(4)
    shares = split(x, 3)
    r_shares = [ring(4) for _ in range(3)]
    masks = {0: (("wraps",), {"r": sum(r_shares), **{f"r@{p}": r_shares[p] for p in range(3)}})}

    def logs(gathered):
        out = [{"rank": p, "openings": [Opening("wraps", [shares[p]], [0], [])], "stray": [], "outputs": 0}
               for p in range(3)]
        out[0]["openings"][0].received = [("gather", [digest(t) for t in gathered])]
        out[1]["outputs"] = 1
        return out

    good = [shares[p] + r_shares[p] for p in range(3)]
    assert findings(logs(good), masks, set()) == []
    leaked = [shares[0] + r_shares[0], shares[1], shares[2] + r_shares[2]]  # party 1's share unmasked
    assert findings(logs(leaked), masks, set()) == [
        "opening 0 (wraps): what party 0 received is not the secret plus a fresh dealt mask"]


# -- batched openings (openings.reveal_together): several steps in one message -----------------
def batch_logs(parts: list[tuple], received: torch.Tensor, parties: int = 2, holder: int | None = None) -> list[dict]:
    """One batch of parts (kind, secrets, mask index) whose message every party receives; shared at random,
    or — ``holder`` — the owner's way: its share is the whole secret, the others' zero."""
    def shares(s):
        return split(s, parties) if holder is None else [s if r == holder else torch.zeros_like(s) for r in range(parties)]

    shared = [[shares(s) for s in secrets] for _, secrets, _ in parts]
    logs = [{"rank": r, "openings": [], "stray": [], "outputs": 0} for r in range(parties)]
    for r, log in enumerate(logs):
        steps = [Opening(kind, [sh[r] for sh in shares], [index]) for (kind, _, index), shares in zip(parts, shared)]
        log["openings"].append(Opening("batch", [], [s.masks[0] for s in steps], [("all_reduce", [digest(received)])],
                                       parts=steps))
    logs[1]["outputs"] = 1
    return logs


def flat(*tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_a_batch_is_checked_part_by_part():
    """A Beaver product and a truncation in one message pass; the same message with the product's
    x unmasked (negative control) is found, as is a part that took no mask."""
    x, y, a, b, masks = beaver()
    t, r = ring(5), ring(5)
    masks[1] = (("trunc",), {"r": r})
    parts = [("beaver", [x, y], 0), ("trunc", [t], 1)]
    good = flat(x - a, y - b, t + (1 << OFFSET_BITS) + r)
    assert findings(batch_logs(parts, good), masks, set()) == []
    leaked = flat(x, y - b, t + (1 << OFFSET_BITS) + r)
    assert findings(batch_logs(parts, leaked), masks, set()) == [
        f"opening 0 (batch): what party {p} received is not the secret plus a fresh dealt mask" for p in (0, 1)]
    logs = batch_logs(parts, good)
    for log in logs:
        log["openings"][0].parts[1].masks = []
    assert findings(logs, masks, set()) == ["opening 0 (batch): opened with no dealt mask"]


def test_a_triples_two_halves_may_be_opened_apart_once_each():
    """A weight's half (w − b) before the online phase and the activation's (x − a) online use one
    triple: allowed. The activation's half opened twice with it is a reused mask."""
    x, w, a, b, masks = beaver()
    x2 = ring(3, 4)
    halves = batch_logs([("half-b", [w], 0)], flat(w - b))
    online = batch_logs([("half-a", [x], 0)], flat(x - a))
    again = batch_logs([("half-a", [x2], 0)], flat(x2 - a))

    def joined(*runs):
        return [{**runs[0][r], "openings": [o for logs in runs for o in logs[r]["openings"]]} for r in range(2)]

    assert findings(joined(halves, online), masks, set()) == []
    assert findings(joined(halves, online, again), masks, set()) == ["opening 2 (batch): mask 0 was already used by opening 0"]
    assert findings(joined(online, again), masks, set()) == ["opening 1 (batch): mask 0 was already used by opening 0"]


def test_a_weights_mask_drawn_alone_is_known_to_its_owner_only_before_any_input():
    """A weight's triple (kind "weight") has the weight's mask b drawn by the owner alone: the owner, whose
    share is the whole weight, may receive w − b in the weights' phase (it knows w). Negative controls: the
    same receipt online, a weight's mask drawn by the client (which would learn w), and the owner's mask on a
    weight shared at random (the owner would learn the others' shares) are found."""
    x, w, a, b, _ = beaver()

    def run(drawn_by: int, before_input: bool, holder: int | None = 0):
        masks = {0: (("weight", (3, 4), (4, 2), "matmul", 1, drawn_by), {"a": a, "b": b})}
        halves = batch_logs([("half-b", [w], 0)], flat(w - b), holder=holder)
        online = batch_logs([("half-a", [x], 0)], flat(x - a))
        for log in halves:
            log["openings"][0].parts[0].before_input = before_input
        logs = [{**halves[r], "openings": halves[r]["openings"] + online[r]["openings"]} for r in range(2)]
        return findings(logs, masks, set())

    assert run(drawn_by=0, before_input=True) == []
    assert run(drawn_by=0, before_input=False) == [
        "opening 0 (batch): party 0 receives an opening whose mask it drew (a half-b online)"]
    assert run(drawn_by=1, before_input=True) == [
        "opening 0 (batch): party 1 receives an opening whose mask it drew (a half-b before any input)"]
    assert run(drawn_by=0, before_input=True, holder=None) == [
        "opening 0 (batch): party 0 receives an opening whose mask it drew (a half-b before any input)"]


# -- MPI, the side channel -----------------------------------------------------------------------
def receipt(kind: str, what, setup: bool = False, rank: int = 0, source: int = 1) -> dict:
    return {"rank": rank, "source": source, "kind": kind, "setup": setup, "what": what}


def test_mpi_describe_keeps_shapes_not_values():
    from truncbridge.pi.mpi import describe

    assert describe({"rounds": 5, "wall_s": 0.1, "logits": torch.zeros(16, 8)}, "stats") == \
        {"rounds": "int", "wall_s": "float", "logits": "tensor(16, 8)"}
    assert describe({"eager": {"redacted": True}, "lazy": {"nodes": []}}, "plans") == \
        {"eager": "redacted plan", "lazy": {"nodes": []}}
    assert describe({"log": [torch.zeros(3)]}, "audit") == "audit"


def test_mpi_receipts_are_set_up_material_statistics_or_announced():
    from truncbridge.pi.audit_mpi import mpi_findings

    fine = [receipt("hosts", "str", setup=True), receipt("address", "str", setup=True, rank=1, source=0),
            receipt("plans", {"eager": "redacted plan"}, setup=True, rank=2, source=0),
            receipt("stats", {"wall_s": "float", "rounds": "int", "online_dealer_requests": "int"}),
            receipt("notice", "str"), receipt("audit", "audit")]
    assert mpi_findings([fine]) == []
    revealed = receipt("reveal", {"ids": "tensor(16,)", "logits": {"eager": ["tensor(16, 1024)"]}})
    assert mpi_findings([[revealed]], reveal=True) == []
    broken = [receipt("stats", {"wall_s": "float", "logits": "tensor(16, 1024)"}),  # the old logits gather
              receipt("stats", {"rounds": "tensor(3,)"}),  # a statistic's name on a tensor
              receipt("stats", ["int"]),
              receipt("plans", {"eager": {"nodes": [], "redacted": "bool"}}, setup=True, rank=1, source=0),
              receipt("plans", {"eager": "redacted plan"}, rank=1, source=0),  # after set-up
              revealed,  # without --benchmark-reveal
              receipt("hosts", "str"),  # after set-up
              receipt("audit", "audit", rank=1, source=0),
              receipt("ids", "tensor(16,)")]
    found = mpi_findings([broken[:4], broken[4:]])
    assert len(found) == len(broken), found
    assert found[0] == ("party 0 received over MPI from party 1 after set-up: 'logits' (tensor(16, 1024)) among "
                        "its statistics, which are numbers only")
    to_the_helper = receipt("reveal", {"ids": "tensor(16,)"}, rank=2)  # only the owner, only from the client
    assert len(mpi_findings([[to_the_helper]], reveal=True)) == 1
