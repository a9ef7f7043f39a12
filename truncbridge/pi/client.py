"""The client's side of run_pi: its input, read on its own rank, and its output, kept there.

The client (rank 1) alone reads ``--prompt TEXT`` or ``--text FILE`` and tokenizes it with the
model's tokenizer (every party may hold the tokenizer and the architecture; only the owner holds
the weights). The sequence length is public — it fixes every shape of the plan — so the input
is always exactly ``--seq-len`` tokens:

* **longer**: the prompt's *last* ``--seq-len`` tokens are kept (the context nearest the token to
  predict);
* **shorter**: it is padded on the right with the tokenizer's pad token (else its end-of-sequence
  token, else id 0). The model is causal, so positions before the padding are computed exactly
  as without it; the client reads its next token at its last real position. (An encoder, which
  attends both ways, would see the pads.)

How many tokens are real is known to the client only: every party computes all ``--seq-len``
positions alike. Without ``--prompt`` / ``--text`` the client takes its default window, chosen on
its own rank: the first ``--seq-len`` tokens of the model's held-out text (shipped models and
``random:`` ones), or seeded random ids for a checkpoint without one.

The logits are revealed to the client only. It prints its result (the next token after its last
real position, and the top ``TOP`` there, decoded) and with ``--client-output PATH`` writes it as
JSON on its own host: the input ids, the top token per real position, the top ``TOP`` at the last
one, and with ``--client-output-logits`` the logits of the real positions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError

TOP = 5  # tokens the client prints and writes at its last real position


class ClientInputError(UserError):
    """The client's input is unusable: said on the client's rank; the other ranks are told only
    that the client failed (``mpi.fail_setup``), not why — the reason may name its file or its ids."""

    private = True


@dataclass
class ClientInput:
    ids: torch.Tensor  # (seq_len,): the real tokens, then the padding
    tokens: int  # how many are real (the client's secret, like the ids)
    source: str  # "--prompt", "--text PATH" or "default window"
    dropped: int = 0  # tokens cut from the front of a longer prompt
    pad_id: int | None = None


def client_window(loaded, seq_len: int) -> torch.Tensor:
    """The client's default token ids: the first held-out window, or seeded random ids for a
    model without held-out text (the client's own input, not protocol randomness)."""
    from ..pipeline import tokenize_windows, vocab_size

    if loaded.heldout_text is None:
        return torch.randint(0, vocab_size(loaded.model), (seq_len,), generator=torch.Generator().manual_seed(0))
    return tokenize_windows(loaded.tokenizer, loaded.heldout_text, seq_len, limit=1, what="held-out text")[0]


def pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def fit(ids: list[int], seq_len: int, pad: int) -> tuple[torch.Tensor, int, int]:
    """``ids`` made exactly ``seq_len`` long: its last ``seq_len`` tokens, or right-padded with
    ``pad``; returns (ids, real tokens, tokens dropped from the front)."""
    dropped = max(0, len(ids) - seq_len)
    kept = ids[dropped:]
    return torch.tensor(kept + [pad] * (seq_len - len(kept)), dtype=torch.long), len(kept), dropped


def client_input(loaded, seq_len: int, prompt: str | None = None, text: str | None = None) -> ClientInput:
    """The client's input (run on the client's rank only: see the module docstring)."""
    if prompt is None and text is None:
        return ClientInput(client_window(loaded, seq_len), seq_len, "default window")
    if text is not None:
        try:
            prompt = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientInputError(f"cannot read --text {text}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    if loaded.tokenizer is None:
        raise ClientInputError(f"{loaded.name} has no tokenizer: the client cannot tokenize --prompt / --text")
    ids = list(loaded.tokenizer(prompt)["input_ids"])
    if not ids:
        raise ClientInputError("the client's prompt is empty (no tokens)")
    vocab = loaded.model.get_input_embeddings().weight.shape[0]
    if max(ids) >= vocab:
        raise ClientInputError(f"the tokenizer gives id {max(ids)}, outside the model's vocabulary of {vocab}")
    pad = pad_id(loaded.tokenizer)
    padded, tokens, dropped = fit(ids, seq_len, pad)
    return ClientInput(padded, tokens, "--prompt" if text is None else f"--text {text}", dropped, pad)


def _decode(tokenizer, i: int) -> str | None:
    return None if tokenizer is None else tokenizer.decode([i])


def result(logits: torch.Tensor, given: ClientInput, tokenizer, with_logits: bool = False, lm: bool = True) -> dict:
    """One policy's result at the client: the top token per real position, the top ``TOP`` at the
    last one (decoded where there is a tokenizer), and the real positions' logits if asked. An
    encoder's output (``lm`` False) is its last hidden state: no tokens to rank."""
    real = logits[: given.tokens].double()
    if not lm:
        return {"hidden_state": real.tolist()} if with_logits else {}
    last = real[-1]
    values, ids = last.topk(min(TOP, last.numel()))
    out = {"top1": real.argmax(-1).tolist(),
           "next_token": int(ids[0]), "next_token_text": _decode(tokenizer, int(ids[0])),
           "top": [{"id": int(i), "text": _decode(tokenizer, int(i)), "logit": float(v)} for v, i in zip(values, ids)]}
    if with_logits:
        out["logits"] = real.tolist()
    return out


def report(model: str, seq_len: int, given: ClientInput, logits: dict, tokenizer,
           path: str | None = None, with_logits: bool = False, lm: bool = True) -> dict:
    """Print the client's result (its own stdout) and write it to ``path`` (its own host);
    ``logits``: policy -> the revealed output of its last run."""
    doc = {"party": "client", "model": model, "seq_len": seq_len, "source": given.source, "tokens": given.tokens,
           "dropped": given.dropped, "pad_id": given.pad_id, "input_ids": given.ids[: given.tokens].tolist(),
           "policies": {p: result(x, given, tokenizer, with_logits, lm) for p, x in logits.items()}}
    cut = f", its first {given.dropped} dropped" if given.dropped else ""
    pad = f", right-padded to {seq_len} with id {given.pad_id}" if given.tokens < seq_len else ""
    lines = [f"client: input {given.tokens} tokens from {given.source}{cut}{pad}"]
    for policy, r in doc["policies"].items():
        if not lm:
            lines.append(f"client: {policy}: received its output (the last hidden state of {given.tokens} positions)")
            continue
        top = ", ".join(f"{_show(t)} {t['logit']:.3f}" for t in r["top"])
        lines.append(f"client: {policy}: next token {_show(r['top'][0])}; top {len(r['top'])}: {top}")
    print("\n".join(lines), flush=True)
    if path:
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _show(t: dict) -> str:
    return f"{t['text']!r} (id {t['id']})" if t["text"] is not None else f"id {t['id']}"
