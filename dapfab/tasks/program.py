"""The full ``dap`` program: the dapfab task tree without a tasks.py, reading the same
configuration files as ``inv`` (see docs/design.md §2 and §4). :mod:`dapfab.cli` runs it
when the thin path (:mod:`dapfab.thin`) does not take the call.

What every task does at its edge (errors, signals, the words after ``--``) lives in
:mod:`dapfab.tasks.edge`.
"""

from __future__ import annotations

import os
import sys

from invoke import ParseError, Program

from dapfab.errors import ConfigError, render
from dapfab.tasks import ns


def _find_project_config(start: str) -> str | None:
    """The directory of the nearest ``invoke.yaml``/``.yml``/``.json`` up from ``start``."""
    here = os.path.abspath(start)
    while True:
        for name in ("invoke.yaml", "invoke.yml", "invoke.json"):
            if os.path.isfile(os.path.join(here, name)):
                return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


REMAINDER_HINT = " (kubectl's arguments go after `--`: {program} k8s.kubectl -- get pods)"


class Dap(Program):
    """``dap``: the dapfab task tree without a tasks.py; reads the same files as ``inv``."""

    def parse_tasks(self) -> None:
        """Invoke's parsing; a word it cannot place after ``k8s.kubectl`` gets a hint."""
        try:
            super().parse_tasks()
        except ParseError as err:
            context = getattr(err, "context", None)
            name = getattr(context, "name", "") or ""
            if str(err).startswith("No idea what") and name.endswith("kubectl"):
                raise ParseError(str(err) + REMAINDER_HINT.format(program=self.binary), context) from None
            raise

    def update_config(self, merge: bool = True) -> None:
        project = _find_project_config(os.getcwd())
        try:
            if project:
                self.config.set_project_location(project)
                self.config.load_project(merge=False)
            super().update_config(merge=merge)
        except Exception as exc:  # a malformed invoke.yaml: say which file, exit 2
            mark = getattr(exc, "problem_mark", None)
            where = f"{mark.name}:{mark.line + 1}" if mark is not None else project or "config"
            err = ConfigError(
                f"cannot read {where}: {getattr(exc, 'problem', None) or exc}",
                hint="fix the YAML syntax in that file",
            )
            print(render(err), file=sys.stderr)
            sys.exit(2)


def program() -> Dap:
    """The ``dap`` program over :data:`dapfab.tasks.ns`."""
    return Dap(name="dap", binary="dap", namespace=ns, version="0.1.0")
