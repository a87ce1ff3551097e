"""What every dapfab task does at its edge, in one place.

:func:`cli_edge` is the only place where a :class:`~dapfab.errors.DapError` becomes a stderr
line and an exit code (Ctrl-C, SIGTERM and a closed output get theirs); :func:`reported`
wraps a task body in it; :func:`command_line_remainder` reads the words after ``--``;
:func:`resolve_call` turns the task's ``--runner``, ``-n`` and ``--context`` into what to
run against; :func:`announce` prints a remote command for Invoke's ``--dry`` / ``--echo``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from invoke import Context, Exit, Task

from dapfab import compat
from dapfab.commands import validate_context, validate_namespace
from dapfab.config import DEFAULTS, Profile, RunnerConfig, resolve, runner_names
from dapfab.errors import ConfigError, DapError, Interrupted, OutputClosed, render

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class DapTask(Task):
    """An Invoke task whose only short flag is ``-n`` for ``--namespace``."""

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        if name == "namespace":
            opts["names"] = ["namespace", "n"]
        return opts


def _raise_interrupted(signum: int, frame: Any) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    raise Interrupted(f"interrupted by {name}", exit_code=SIGNAL_EXIT[signum])


@contextmanager
def signals_raise() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def setup_debug_logging() -> None:
    """``DAP_DEBUG=1`` turns on dapfab's own debug log on stderr (never secrets)."""
    if os.environ.get("DAP_DEBUG") and not logging.getLogger("dapfab").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dapfab debug: %(name)s: %(message)s"))
        logger = logging.getLogger("dapfab")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


@contextmanager
def cli_edge() -> Iterator[None]:
    """Run a task body: signals become cleanup + 130/143, DapErrors one line + their code."""
    setup_debug_logging()
    try:
        with signals_raise():
            yield
    except KeyboardInterrupt:
        print(render(Interrupted("interrupted by Ctrl-C")), file=sys.stderr)
        raise Exit(code=130) from None
    except BrokenPipeError:  # OutputClosed too: the remote command is already stopped
        # Silent, as a pipeline member killed by SIGPIPE; the dead streams go to /dev/null
        # so that the interpreter's last flush cannot print a traceback.
        _drop_closed_streams()
        raise Exit(code=OutputClosed.exit_code) from None
    except DapError as err:
        if logging.getLogger("dapfab").isEnabledFor(logging.DEBUG):
            logging.getLogger("dapfab").debug("error", exc_info=True)
        print(render(err), file=sys.stderr, flush=True)
        raise Exit(code=err.exit_code) from None


def _drop_closed_streams() -> None:
    """Point stdout and stderr at /dev/null, dropping what is still buffered for them."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):
                pass
    finally:
        os.close(devnull)


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
