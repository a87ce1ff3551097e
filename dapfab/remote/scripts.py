"""The shell programs dapfab runs in the VM, loaded from this package's ``sh/`` directory.

Each ``sh/NAME.sh`` is a commented bash program that takes its values as positional
arguments and declares the external tools it needs on a ``# tools:`` line. Loading strips
comment lines and blank lines: boot programs travel as one argv word on the management
host's command line, where every byte shows (docs/design.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from dapfab.quoting import join


@dataclass(frozen=True)
class Script:
    """One shell program: its name, the text sent (comments stripped) and the tools it runs."""

    name: str
    text: str
    tools: tuple[str, ...]


def strip(source: str) -> str:
    """``source`` without comment lines (a ``#`` first on the line) and blank lines."""
    kept = [line.rstrip() for line in source.splitlines()]
    return "\n".join(line for line in kept if line.strip() and not line.lstrip().startswith("#"))


def _tools(source: str) -> tuple[str, ...]:
    for line in source.splitlines():
        if line.startswith("# tools:"):
            return tuple(line[len("# tools:") :].split())
    raise ValueError("no '# tools:' line")


@cache
def load(name: str) -> Script:
    """The script ``sh/<name>.sh`` of this package."""
    source = resources.files(__package__).joinpath("sh", f"{name}.sh").read_text("utf-8")
    return Script(name, strip(source), _tools(source))


def names() -> list[str]:
    """Every script shipped in ``sh/``, by name."""
    files = resources.files(__package__).joinpath("sh").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".sh"))


def program(name: str, *args: object, libraries: tuple[str, ...] = ()) -> str:
    """Shell code for ``bash -lc`` that runs script ``name`` with ``args`` as $1, $2...,
    after the function ``libraries`` (other scripts) it calls."""
    parts = [load(library).text for library in libraries]
    parts.append(f"set -- {join([str(arg) for arg in args])}" if args else "set --")
    parts.append(load(name).text)
    return "\n".join(parts) + "\n"


def tools_needed() -> tuple[str, ...]:
    """Every external tool any script runs (bash itself aside), sorted."""
    return tuple(sorted({tool for name in names() for tool in load(name).tools}))
