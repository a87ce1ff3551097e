"""The command-line edge: the ``dap`` program, signal handling, errors rendered to one line.

Tasks wrap their bodies in :func:`cli_edge`; it is the only place where a
:class:`~dapfab.errors.DapError` becomes a stderr line and an exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from invoke import Exit, ParseError, Program, Task

from dapfab.errors import DapError, Interrupted, OutputClosed, render

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


def _called_by_program(task: Task) -> Program | None:
    """The running Program if ``task`` was invoked by its Executor, not from Python code."""
    from invoke import Executor

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Task) and owner.body is task.body:
            caller = frame.f_back
            executor = caller.f_locals.get("self") if caller is not None else None
            if not isinstance(executor, Executor):
                return None
            while caller is not None:
                candidate = caller.f_locals.get("self")
                if isinstance(candidate, Program):
                    return candidate
                caller = caller.f_back
            return None
        frame = frame.f_back
    return None


def command_line_remainder(task: Task) -> list[str] | None:
    """The argv after ``--`` if ``task`` is the last task named on the command line, else None.

    Invoke 2.2 joins the remainder with spaces; the original words come from the argv the
    running Program parsed. A task called from Python (a runbook) gets None.
    """
    program = _called_by_program(task)
    if program is None or not getattr(program, "tasks", None):
        return None
    argv = list(program.argv) if program.argv is not None else sys.argv
    try:
        last = program.collection[program.tasks[-1].name]
    except (KeyError, TypeError, AttributeError):
        return None
    if getattr(last, "body", None) is not task.body or "--" not in argv:
        return None
    return argv[argv.index("--") + 1 :]


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
            from dapfab.errors import ConfigError

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
    from dapfab.tasks import ns

    return Dap(name="dap", binary="dap", namespace=ns, version="0.1.0")


def main() -> None:
    """Entry point of the ``dap`` console script."""
    program().run()
