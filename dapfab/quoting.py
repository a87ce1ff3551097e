"""The one quoting function of the package: POSIX shell quoting, once per shell crossed.
:func:`quote` is defined in :mod:`dapfab.thin`, the ``dap`` script that runs without the
package."""

from __future__ import annotations

from collections.abc import Iterable

from dapfab.thin import quote

__all__ = ["join", "quote"]


def join(words: Iterable[str]) -> str:
    """Quote every word and join them with spaces: one command line for one shell."""
    return " ".join(quote(word) for word in words)
