"""How a command-line call ends, without Invoke: SIGINT and SIGTERM become
:class:`~dapfab.errors.Interrupted`, a :class:`~dapfab.errors.DapError` one stderr line, a
closed output a silent 141. The task edge (:mod:`dapfab.tasks.edge`) and the thin ``dap``
(:mod:`dapfab.thin`) both end their calls here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dapfab.errors import DapError, Interrupted, OutputClosed, render
from dapfab.thin import SIGNAL_EXIT, SIGNAL_NAMES


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"interrupted by {SIGNAL_NAMES[signum]}", exit_code=SIGNAL_EXIT[signum])


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


@dataclass
class Outcome:
    """The exit code a call ended with, when it ended with an error (else None)."""

    code: int | None = None


@contextmanager
def ended() -> Iterator[Outcome]:
    """Run a call's body: signals raise, and its error is reported and kept as an exit code
    in the outcome (Ctrl-C 130, SIGTERM 143, a closed output 141, a DapError its own)."""
    outcome = Outcome()
    setup_debug_logging()
    try:
        with signals_raise():
            yield outcome
    except KeyboardInterrupt:
        print(render(Interrupted("interrupted by Ctrl-C")), file=sys.stderr)
        outcome.code = 130
    except BrokenPipeError:  # OutputClosed too: the remote command is already stopped
        # Silent, as a pipeline member killed by SIGPIPE; the dead streams go to /dev/null
        # so that the interpreter's last flush cannot print a traceback.
        _drop_closed_streams()
        outcome.code = OutputClosed.exit_code
    except DapError as err:
        if logging.getLogger("dapfab").isEnabledFor(logging.DEBUG):
            logging.getLogger("dapfab").debug("error", exc_info=True)
        print(render(err), file=sys.stderr, flush=True)
        outcome.code = err.exit_code


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
