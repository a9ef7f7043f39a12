"""Text that every Python installation carries, and its fixed train / held-out split.

The default model is trained on the documentation topics shipped in the standard library's
``pydoc_data`` package; a tenth of its unique paragraphs is held out for evaluation and shipped
next to the model as ``heldout.txt`` so the evaluation text does not depend on the Python version.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError

HELDOUT_EVERY = 10  # one block of paragraphs in ten is held out
BLOCK_PARAGRAPHS = 12
SHARED_LINE_CHARS = 30  # a held-out paragraph sharing a line this long with training is dropped


def pydoc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def _unique_paragraphs() -> list[str]:
    """Paragraphs of all topics in sorted-topic order, each kept once (the topics repeat a lot)."""
    seen, out = set(), []
    for text in pydoc_topics().values():
        for para in text.split("\n\n"):
            para = para.strip("\n")
            if para.strip() and para not in seen:
                seen.add(para)
                out.append(para)
    return out


def split_pydoc_text() -> tuple[str, str]:
    """Return (train_text, heldout_text).

    The topics quote each other heavily, so the split is by blocks of unique paragraphs, and a
    held-out paragraph that shares any long line with the training text is dropped: the held-out
    text is text the model has not seen.
    """
    paragraphs = _unique_paragraphs()
    train, heldout = [], []
    for i, para in enumerate(paragraphs):
        (heldout if (i // BLOCK_PARAGRAPHS) % HELDOUT_EVERY == HELDOUT_EVERY // 2 else train).append(para)
    train_lines = {line for para in train for line in para.splitlines() if len(line.strip()) >= SHARED_LINE_CHARS}
    heldout = [p for p in heldout
               if not any(len(line.strip()) >= SHARED_LINE_CHARS and line in train_lines for line in p.splitlines())]
    return "\n\n".join(train), "\n\n".join(heldout)


def read_text_file(path: str | Path) -> str:
    """Read a user-supplied evaluation text, rejecting missing or empty files with a clear error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"text file is not valid UTF-8: {p} ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise UserError(f"text file is empty: {p}")
    return text
