"""run_pi.py with one thing changed, for the privacy tests (start it under mpirun like run_pi.py).

    mpirun -n 3 python tests/pi_variants.py VARIANT [run_pi arguments]

VARIANT:
  unmasked   the exact truncation opens x + 2^62 without its dealt mask r (a broken protocol)
  unmasked-beaver  a batched Beaver product opens x itself, not x − a
  unmasked-operand  a product carried by a truncation's opening opens its other operand z, not z − b
  reused     a Beaver triple is handed out again for the next request of the same shape
  gather-logits  the old run_pi: every party's statistics go to rank 0 with its logits (the
             client's revealed output too), without --benchmark-reveal — the MPI audit must flag it
  open-cache  --generate: each step opens its new keys and values to the client with the logits (a KV
             cache opened by mistake) — the audit must flag it
  slow-dealing  party 0 deals each pass's material SLOW_DEALING_S late (as a big model's corrections
             take it), longer than the others' --timeout: they must wait for it, not name it stalled
  attack     unchanged protocol; afterwards party 0 (the owner) tries to read the client's token
             ids from its own view: the first opening of one_hot @ embedding, plus the masks it
             knows — all of them when it deals (--dealer owner-insecure), none otherwise.
             Prints "owner recovered K of N token ids".
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from truncbridge.backends.crypten import dealer, openings, truncation  # noqa: E402
from truncbridge.backends.crypten.shares import add_public  # noqa: E402
from truncbridge.pi import audit, client, mpi, options, session  # noqa: E402


def unmasked(x, r, ast_cls, rank):
    """truncation.masked_for_opening with the mask left out: the opening reveals x + 2^62 itself."""
    return add_public(ast_cls, x, 1 << truncation.EXACT_LIMIT_BITS, rank)


BEAVER = openings.beaver


def unmasked_beaver(x, y, op, rank):
    """openings.beaver with x's mask left out of its opening."""
    step = BEAVER(x, y, op, rank)
    step.masked[0] = type(x).from_shares(x.share.clone(), precision=0)
    return step


def reuse_material() -> None:
    """DealtProvider._take, except that a request repeating the previous one gets the previous
    material again (the fresh item is dropped, so the queue stays in step)."""
    original = dealer.DealtProvider._take

    def _take(self, req):
        on_take, held = self.on_take, []
        self.on_take = held.append
        try:
            shares = original(self, req)
        finally:
            self.on_take = on_take
        item = held[0]
        previous = getattr(self, "_previous", None)
        if previous is not None and previous.request == req:
            item, shares = previous, previous.shares
        self._previous = item
        if on_take is not None:
            on_take(item)
        return shares

    dealer.DealtProvider._take = _take


def attack(pooled: list[dict], vocab: int) -> None:
    """Party 0 reads the client's tokens from the first opening of one_hot @ embedding."""
    view = pooled[0]["log"]
    step, offset, first = next((step, offset, part) for step in view["openings"]
                               for offset, part in zip(offsets(step), step.parts or [step])
                               if part.kind in ("beaver", "half-a") and part.secrets[0].shape[-1] == vocab)
    shape = first.secrets[0].shape
    epsilon = step.received[0][1][0][offset:offset + shape.numel()].view(shape)  # one_hot - a, as party 0 received it
    known = pooled[0]["masks"]  # the masks party 0 dealt itself (owner-insecure), else None
    guess = epsilon + known[first.masks[0]][1]["a"] if known is not None else epsilon
    ids = guess.reshape(-1, vocab).argmax(-1)
    truth = client.client_window(session_model(), len(ids))
    print(f"owner recovered {int((ids == truth).sum())} of {len(ids)} token ids", file=sys.stderr, flush=True)


def offsets(step) -> list[int]:
    """Where each part of a batched opening starts in the message (parts: x, then y for a Beaver
    product; x, then every carried operand for a truncation); an opening of one step is its part."""
    out, at = [], 0
    for part in step.parts or [step]:
        out.append(at)
        at += sum(s.numel() for s in part.secrets)
    return out


SLOW_DEALING_S = 12.0


def slow_dealing() -> None:
    """Party 0's bulk dealing (before each timed pass; not the recording pass's one request at a time) starts late."""
    deal = dealer.DealtProvider.deal

    def late(self, requests):
        if self.rank == 0 and len(requests) > 1:
            time.sleep(SLOW_DEALING_S)
        return deal(self, requests)

    dealer.DealtProvider.deal = late


def session_model():
    from truncbridge.frontend.models import load_architecture

    return load_architecture(ARGS.model)


def main() -> int:
    global ARGS
    variant, argv = sys.argv[1], sys.argv[2:]
    if variant == "unmasked":
        truncation.masked_for_opening = unmasked
    elif variant == "unmasked-operand":
        truncation.masked_operand = lambda z, b, ast_cls: z
    elif variant == "unmasked-beaver":
        openings.beaver = unmasked_beaver
    elif variant == "reused":
        reuse_material()
    elif variant == "slow-dealing":
        slow_dealing()
    elif variant == "gather-logits":
        session.statistics = lambda mine, keeps_memory=False: {**mine.statistics(), "logits": mine.logits}  # logits too
    elif variant == "open-cache":
        from truncbridge.backends.crypten.roles import CLIENT
        from truncbridge.crypten import generation

        def open_everything(self, cached, outs):  # every output, the cache's too
            opened = self.runners[cached].open_outputs(outs, dst=CLIENT)
            return None if opened is None else opened[0][0, -1]

        generation.CachedRunners.open_logits = open_everything
    elif variant == "attack":
        digest = audit.digest
        audit.digest = lambda t: t.clone()  # keep what each party received, not just its hash
        ARGS = options.parse_args(argv)
        summary = session.audit_summary

        def summary_and_attack(pooled, parties, dealer_mode, **kwargs):
            attack(pooled, session_model().model.get_input_embeddings().weight.shape[0])
            audit.digest = digest
            for log in (p["log"] for p in pooled[:parties]):
                for step in log["openings"]:
                    step.received = [(method, [digest(t) for t in got]) for method, got in step.received]
            return summary(pooled, parties, dealer_mode, **kwargs)

        session.audit_summary = summary_and_attack
    else:
        raise SystemExit(f"unknown variant {variant}")
    mpi.leave(session.main(argv))


if __name__ == "__main__":
    main()
