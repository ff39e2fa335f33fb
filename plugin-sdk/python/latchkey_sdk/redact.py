"""Removing secrets from service text before it becomes a detail or an error message.

Pure (standard library only), so it also runs under plain CPython for tests.
"""

from typing import Sequence

__all__ = ["redact"]

_MAX_TEXT = 300


def _looks_masked(word: str) -> bool:
    if "**" in word:
        return True
    start = 0
    while True:
        i = word.find("...", start)
        if i == -1:
            return False
        if i > 0 and i + 3 < len(word) and word[i - 1].isalnum() and word[i + 3].isalnum():
            return True
        start = i + 1


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with secrets removed: every whitespace-separated word that contains one
    of ``secrets`` or looks like a masked key becomes ``[redacted]``; control
    characters become spaces; at most 300 characters are kept."""
    words = []
    for word in text.split():
        if any(s and s in word for s in secrets) or _looks_masked(word):
            words.append("[redacted]")
        else:
            words.append("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in word))
    joined = " ".join(words)
    return joined if len(joined) <= _MAX_TEXT else joined[:_MAX_TEXT] + "…"
