"""The ``dap`` console script: the thin path first (:mod:`dapfab.thin`, no Invoke), else
the full program (:mod:`dapfab.tasks.program`)."""

from __future__ import annotations

import sys

from dapfab import thin


def main() -> None:
    """Entry point of the ``dap`` console script."""
    argv = sys.argv[1:]
    code = thin.try_run(argv)  # on a miss, armed to record what the full path resolves
    if code is not None:
        sys.exit(code)
    from dapfab.tasks.program import program

    program().run()
