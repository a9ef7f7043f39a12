"""The nearest valid names to a mistyped one, for one-line errors."""
from __future__ import annotations

import difflib


def close_matches(word: str, candidates, n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=n, cutoff=0.6)


def nearest(word: str, candidates, n: int = 3) -> str:
    """' (did you mean X or Y?)' for the closest of ``candidates``, or '' when none is close."""
    close = close_matches(word, candidates, n)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
