"""The one quoting function of the package: POSIX shell quoting, once per shell crossed."""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def quote(word: str) -> str:
    """Quote ``word`` for one POSIX shell so that it parses back to exactly ``word``."""
    return shlex.quote(word)


def join(words: Iterable[str]) -> str:
    """Quote every word and join them with spaces: one command line for one shell."""
    return " ".join(quote(word) for word in words)
