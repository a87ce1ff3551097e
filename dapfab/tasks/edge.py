"""What every dapfab task does at its edge, in one place.

:func:`cli_edge` ends a task body where every call ends (:func:`dapfab.exits.ended`: a
:class:`~dapfab.errors.DapError` becomes a stderr line and an exit code, Ctrl-C, SIGTERM
and a closed output get theirs); :func:`reported`
wraps a task body in it; :func:`command_line_remainder` reads the words after ``--``;
:func:`resolve_call` turns the task's ``--runner``, ``-n`` and ``--context`` into what to
run against; :func:`announce` prints a remote command for Invoke's ``--dry`` / ``--echo``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from invoke import Context, Exit, Task

from dapfab import compat
from dapfab.commands import validate_context, validate_namespace
from dapfab.config import DEFAULTS, Profile, RunnerConfig, resolve, runner_names
from dapfab.errors import ConfigError
from dapfab.exits import ended


class DapTask(Task):
    """An Invoke task whose only short flag is ``-n`` for ``--namespace``."""

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        if name == "namespace":
            opts["names"] = ["namespace", "n"]
        return opts


@contextmanager
def cli_edge() -> Iterator[None]:
    """Run a task body at the edge (:func:`dapfab.exits.ended`), then exit with its code."""
    with ended() as outcome:
        yield
    if outcome.code is not None:
        raise Exit(code=outcome.code)


def command_line_remainder(task: Task) -> list[str] | None:
    """The argv after ``--`` if ``task`` is the last task named on the command line, else None.

    Invoke 2.2 joins the remainder with spaces; the original words come from the argv the
    running Program parsed. A task called from Python (a runbook) gets None.
    """
    program = compat.running_program(task.body)
    if program is None or not getattr(program, "tasks", None):
        return None
    argv = compat.program_argv(program)
    try:
        last = program.collection[program.tasks[-1].name]
    except (KeyError, TypeError, AttributeError):
        return None
    if getattr(last, "body", None) is not task.body or "--" not in argv:
        return None
    return argv[argv.index("--") + 1 :]


RUNNER_HELP = ("named runner profile (dap.runners.NAME); several at once: a,b or @GROUP "
               "(dap.groups.GROUP); default: $DAP_RUNNER or dap.runner")
PARALLEL_HELP = f"with several runners: how many run at once (default: dap.fanout.parallel, {DEFAULTS['fanout']['parallel']})"
NAMESPACE_HELP = "kubectl --namespace (default: dap.kubectl.namespace)"
CONTEXT_HELP = "kubectl --context (default: dap.kubectl.context)"


def reported(body: Callable[..., Any]) -> Callable[..., Any]:
    """Run the task body at the CLI edge (see :func:`cli_edge`)."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cli_edge():
            return body(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Call:
    """What one task call runs against: the runner, kubectl's namespace and context, and
    whether kubectl's file arguments name laptop paths (``dap.kubectl.laptop_files``)."""

    config: RunnerConfig
    namespace: str | None
    context: str | None
    laptop_files: bool


def resolve_call(
    c: Context, runner: str | None, namespace: str | None = None, context: str | None = None
) -> Call:
    """Config files, ``DAP_*`` variables, the ``--runner`` profile, then the task's flags
    (``-n`` and ``--context`` beat every configured value); the tree is resolved once."""
    profile = Profile.resolve(c.config, runner=runner)
    return Call(
        profile.runner,
        validate_namespace(namespace) if namespace is not None else profile.namespace,
        validate_context(context) if context is not None else profile.context,
        profile.laptop_files,
    )


def resolve_runners(c: Context, runner: str | None) -> list[str] | None:
    """The profiles ``--runner`` (or ``DAP_RUNNER``) names: ``a,b`` and ``@GROUP``, all
    checked before anything runs; None for the default runner."""
    return runner_names(c.config, runner)


def single_runner(names: list[str] | None, what: str) -> str | None:
    """The one profile of ``names`` (None: the default runner); ConfigError (exit 2) when
    ``what`` is asked of several."""
    if names is not None and len(names) > 1:
        raise ConfigError(f"{what} runs on one runner, not {len(names)}",
                          hint="give --runner a single profile")
    return names[0] if names else None


def fan_out_parallel(c: Context, parallel: str | None) -> int:
    """``--parallel``, else ``dap.fanout.parallel`` (``DAP_FANOUT_PARALLEL``): at least 1."""
    value = parallel if parallel is not None else resolve(c.config, profile_from_env=False).value(
        "fanout.parallel")
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"invalid --parallel {value!r}", hint="give a whole number of runners, 1 or more")
    return number


def run_options(c: Context) -> dict[str, bool]:
    """Invoke's own ``--dry`` and ``--echo`` flags, as run() options."""
    run = c.config.get("run", {})
    return {"dry": bool(run.get("dry")), "echo": bool(run.get("echo"))}


def announce(c: Context, reference: str) -> bool:
    """Print ``reference`` for Invoke's ``--dry`` or ``--echo``
    (:func:`dapfab.run.show_reference`); True if dry, when the task must run nothing."""
    from dapfab.run import show_reference  # run loads the SSH and keeper layers: not for --list

    return show_reference(reference, **run_options(c))
