"""The MT19937-cloning attack on real parties: run_pi.py unchanged, then two attackers read their
own views (start it under mpirun like run_pi.py; ``--audit`` is required, it keeps the views).

    mpirun -n 3 python tests/mt_attack.py [--generator mt19937-insecure|aes-ctr] [run_pi arguments] --audit

``--generator`` picks ``truncbridge.backends.crypten.randomness``'s stream kind in every process (default:
the package's default, AES-256-CTR); ``mt19937-insecure`` is the generator the protocol used
before (torch's MT19937 seeded with 64 bits of which it keeps 32), kept only for this test.

What each attacker uses is its own view and nothing else: the receipts its communicator logged
(``--audit`` keeps the tensors themselves here, not their digests) and the dealt shares its own
provider handed out (``OpeningLog.took``). The audit pools every view at rank 0 after the run;
each attack below reads only its own party's entry, and only the scoring at the end reads the
truth (the client's token ids, the parties' shares of the weights).

Owner vs tokens (``owner_reads_tokens``). The first product is one_hot @ embedding. Party 0
receives ε = onehot − a_0 − a_1 [− a_2] and holds a_0, so ``−(ε + a_0) = a_1 − onehot`` in 2PC:
party 1's raw draws, off by one where a token sits. ``mt_clone.recover_draws`` clones party 1's
stream from the first 312 of them (fixing the one token that may sit among them) and accepts the
clone only if every later entry it gets wrong is off by exactly one; then onehot = ε + a_0 + a_1
exactly, and its argmax per row is the token ids. Prints "owner recovered K of N token ids";
without a clone it guesses the argmax of ε + a_0 (chance: 16 guesses among 1024 ids).

Client vs weights (``client_reads_weights``). The same product's static operand is the embedding
W: before the online phase the client receives W − b (b = b_0 + b_1), online ε, and holds a_1,
b_1. So ``−(ε + a_1) = a_0 − onehot``: party 0's raw draws (the client could add its own one-hot;
the attack does not need to). Party 0's provider expands the request as a_0 then b_0 from its
stream (``material.expand``), so the clone's next draws are b_0, and W = (W − b) + b_0 + b_1 in
the ring. Prints "client recovered K of M embedding entries" (exact ring values against the sum
of the parties' shares of W). Without a clone it guesses (W − b) + b_1: nothing.

Three computing parties, insecure generator. Party 0 then sees ``−(ε + a_0) = a_1 + a_2 − onehot``,
the sum mod 2^64 of two MT19937 streams; no 312 of its entries are one stream, so this clone
refuses (``recover_draws`` returns None) and this attacker is at chance — which does **not** mean
the variant is safe. Feasible attacks exist; none runs in test time:

* Meet in the middle over the seeds (``mt_clone.seeds_of_a_sum``, unit-tested on 2^16 candidate
  seeds that contain the true ones). ``manual_seed`` keeps 32 bits of the key's first 8 bytes, each
  party's stream is seeded once per run, and the first product's triple is the run's first request
  (the owner's line prints its dealing index: #0), so a_1 and a_2 are the *first* draws of their
  streams. Tabulate draw_0(s) for every 32-bit s, look up total_0 − draw_0(s_2) for every s_2 in
  the same table, confirm on the next entries; then both streams, every mask of the client and
  the helper, and the tokens follow. Cost: 2^32 seed expansions (399 steps of the seeding
  recurrence each, ``first_int64_of_seeds``: 1.4e6 seeds/s on one core in numpy here, so ~0.9
  CPU-hours) plus sorting and searching a 2^32-entry table (~48 GiB with the seeds, or several
  passes over buckets of it). The 2^20-candidate version takes ~1 s here; all 2^32 is ~4096× that,
  about an hour of one core (extrapolated, not run). Not a ~60 s test, nor this machine (2 cores,
  23 GiB).
* GF(2)-linear algebra, no seeds needed. MT19937 is linear over GF(2) and the sum's lowest bit is
  the XOR of the two streams' lowest bits (no carry enters bit 0), so 19937 independent entries
  give the XOR of the two states (a system of 19937 unknowns); then each bit where the two streams
  agree exposes its carry, i.e. a bit of stream 1 itself, giving a second system for party 1's
  state alone. The test model's one-hot opening has 16 × 1024 = 16384 entries, fewer than the
  first system needs, so it needs another opening with known plaintext (the timed pass opens the
  one-hot again, millions of draws later) and two eliminations of about 20000 × 20000 over GF(2)
  (~10^11 word operations in numpy: minutes, estimated). Not implemented.

So with three parties the suite tests only that the default generator defeats this attacker; it
makes no claim about the insecure variant there.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402
from mt_clone import recover_draws  # noqa: E402

from truncbridge.backends.crypten import randomness  # noqa: E402
from truncbridge.pi import audit, client, mpi, options, session  # noqa: E402

HELD: dict[int, dict[str, torch.Tensor]] = {}  # this process's own dealt shares of each triple, by dealing index


def keep_own_shares() -> None:
    """Each party keeps the shares of every Beaver triple its provider hands out (its own
    material: a_p, b_p), and exports them with its audit log."""
    took, export = audit.OpeningLog.took, audit.OpeningLog.export

    def took_and_kept(self, item):
        if item.request[0] in ("additive", "weight"):  # a weight's mask b: the owner's alone (no share elsewhere)
            HELD[item.index] = {name: item.shares[name].clone() for name in ("a", "b") if item.shares.get(name) is not None}
        took(self, item)

    def exported(self):
        return {**export(self), "held": dict(HELD)}

    audit.OpeningLog.took, audit.OpeningLog.export = took_and_kept, exported


def received_flat(step) -> torch.Tensor:
    """Everything a party received during one opening step, as one vector in message order."""
    return torch.cat([t.reshape(-1) for _, got in step.received for t in got])


def parts(step):
    """(offset in the message, part) of every step opened in ``step`` (a batch, or itself)."""
    at = 0
    for part in step.parts or [step]:
        yield at, part
        at += sum(s.numel() for s in part.secrets)


def first_product(log: dict, vocab: int) -> dict:
    """The first opening of one_hot @ embedding in a party's log: ε as received, W − b as received
    (with the product, or before the online phase as its half "half-b"), the triple's dealing
    index, and this party's shares of W (for scoring only)."""
    for step in log["openings"]:
        for at, part in parts(step):
            if part.kind in ("beaver", "half-a") and part.secrets[0].shape[-1] == vocab:
                shape, mask = part.secrets[0].shape, part.masks[0]
                message = received_flat(step)
                eps = message[at:at + shape.numel()].view(shape)
                if part.kind == "beaver":
                    w_share = part.secrets[1]
                    start = at + shape.numel()
                    delta = message[start:start + w_share.numel()].view(w_share.shape)
                else:
                    delta, w_share = weight_half(log, mask)
                return {"eps": eps, "delta": delta, "mask": mask, "w_share": w_share}
    raise RuntimeError("no opening of one_hot @ embedding in the log")


def weight_half(log: dict, mask: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W − b as received in the weight's half opening of triple ``mask``, and this party's share of W."""
    for step in log["openings"]:
        for at, part in parts(step):
            if part.kind == "half-b" and part.masks and part.masks[0] == mask:
                w_share = part.secrets[0]
                return received_flat(step)[at:at + w_share.numel()].view(w_share.shape), w_share
    raise RuntimeError(f"no half opening of triple {mask}'s weight")


def owner_reads_tokens(view: dict, vocab: int) -> tuple[torch.Tensor, bool, int]:
    """Party 0's attack on its own view: (token ids it reads, whether it cloned a stream, the
    triple's dealing index)."""
    product = first_product(view, vocab)
    eps, a0 = product["eps"], view["held"][product["mask"]]["a"]
    known = eps + a0  # onehot − a_1 in 2PC
    a1 = recover_draws(-known)
    onehot = known if a1 is None else known + a1.view(known.shape)
    return onehot.reshape(-1, vocab).argmax(-1), a1 is not None, product["mask"]


def client_reads_weights(view: dict, vocab: int) -> tuple[torch.Tensor, bool]:
    """Party 1's attack on its own view: (the embedding as it reads it, in the ring; whether it
    cloned a stream)."""
    product = first_product(view, vocab)
    eps, delta, held = product["eps"], product["delta"], view["held"][product["mask"]]
    drawn = recover_draws(-(eps + held["a"]), tail=delta.numel())  # a_0, then b_0
    b0 = torch.zeros_like(delta) if drawn is None else drawn[eps.numel():].view(delta.shape)
    return delta + b0 + held.get("b", 0), drawn is not None


def attacks(pooled: list[dict], parties: int, model) -> None:
    vocab = model.model.get_input_embeddings().weight.shape[0]
    logs = [p["log"] for p in pooled[:parties]]
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    start = time.perf_counter()
    ids, cloned, index = owner_reads_tokens(logs[0], vocab)
    seconds = time.perf_counter() - start
    truth = client.client_window(model, len(ids))  # scoring only
    say(f"owner recovered {int((ids == truth).sum())} of {len(ids)} token ids "
        f"({'cloned the client stream' if cloned else 'no clone'}, {seconds:.2f} s; triple #{index} of the run)")

    start = time.perf_counter()
    weights, cloned = client_reads_weights(logs[1], vocab)
    seconds = time.perf_counter() - start
    truth = sum(first_product(log, vocab)["w_share"] for log in logs)  # the owner's encoded W: scoring only
    say(f"client recovered {int((weights == truth).sum())} of {truth.numel()} embedding entries "
        f"({'cloned the owner stream' if cloned else 'no clone'}, {seconds:.2f} s)")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--generator"]:
        randomness.select(argv[1])
        argv = argv[2:]
    print(f"mt_attack: generator {randomness.selected()}", file=sys.stderr, flush=True)
    args = options.parse_args(argv)
    if not args.audit:
        raise SystemExit("mt_attack needs --audit (it keeps each party's view)")
    digest = audit.digest
    audit.digest = lambda t: t.clone()  # keep what each party received, not just its hash
    keep_own_shares()
    summary = session.audit_summary

    def summary_and_attacks(pooled, parties, dealer_mode, *more, **kw):
        from truncbridge.frontend.models import load_architecture

        attacks(pooled, parties, load_architecture(args.model))
        audit.digest = digest
        for log in (p["log"] for p in pooled[:parties]):
            for step in log["openings"]:
                step.received = [(method, [digest(t) for t in got]) for method, got in step.received]
        return summary(pooled, parties, dealer_mode, *more, **kw)

    session.audit_summary = summary_and_attacks
    mpi.leave(session.main(argv))


if __name__ == "__main__":
    main()
