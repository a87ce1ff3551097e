"""The full ``dap`` program (the ``dapfab`` script, and what the thin ``dap`` of
:mod:`dapfab.thin` execs when it cannot take a call): Invoke over dapfab's task tree,
leaving a record for the thin path (:mod:`dapfab.thinrecord`)."""

from __future__ import annotations

import sys

from dapfab import thinrecord


def main() -> None:
    """Entry point of the full program."""
    thinrecord.arm(sys.argv[1:])
    from dapfab.tasks.program import program

    program().run()
