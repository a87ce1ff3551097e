"""One call of shell code in the runner VM without a pty, as :func:`dapfab.run.run_in_runner`,
fan-out, curl and the pty stager make it: through the connection's keeper when one is alive
(docs/design.md §12), else directly as a :class:`~dapfab.execution.RemoteProcess`.

The decision lives here, above both :mod:`dapfab.execution` and :mod:`dapfab.keeper`, so
that neither knows the other exists except the keeper's use of execution.

A process that calls again holds its own connection: after a thread's second call through
a keeper, the connection opens in the background, and calls that find it open run directly
(one hop less than through the keeper's socket).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from dapfab.connection import POOL
from dapfab.execution import RemoteProcess
from dapfab.keeper import client as keeper
from dapfab.result import Result
from dapfab.streams import StreamSink, caller_stdin, hide_flags

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.calls")

# Calls each thread made through a keeper, per config (the keeper already computed its
# identity). Per thread, so that a fan-out's workers, one call each, do not open connections
# their process will not use.
_kept_calls: dict[tuple[RunnerConfig, int], int] = {}
_kept_lock = threading.Lock()


def run_command(
    config: RunnerConfig,
    command: str,
    *,
    hide: Any = None,
    in_stream: Any = None,
    timeout: float | None = None,
    out_stream: IO[Any] | None = None,
    err_stream: IO[Any] | None = None,
    abort: threading.Event | None = None,
) -> Result:
    """Run shell code in the VM without a pty and return its :class:`Result`, whatever its
    exit code: the core of :func:`dapfab.run.run_in_runner` (which adds dry/echo, the pty
    path and ``warn``). With ``config.persist``, through the connection's keeper if one is
    alive and this process holds no connection of its own; a direct call starts one when it
    is done. Setting ``abort`` (from another
    thread) stops the command and raises Interrupted once it is gone."""
    hide_out, hide_err = hide_flags(hide)
    in_stream = caller_stdin(in_stream)
    if config.persist and not POOL.connected(config):
        result = keeper.run(config, command, hide_out=hide_out, hide_err=hide_err,
                            in_stream=in_stream, timeout=timeout, out_stream=out_stream,
                            err_stream=err_stream, abort=abort)
        if result is not None:
            _after_kept_call(config)
            return result
    captured: dict[str, list[bytes]] = {"out": [], "err": []}
    on_stdout = captured["out"].append if hide_out else StreamSink(out_stream or sys.stdout)
    on_stderr = captured["err"].append if hide_err else StreamSink(err_stream or sys.stderr)
    process = RemoteProcess(
        config, command, on_stdout=on_stdout, on_stderr=on_stderr, in_stream=in_stream,
        reuse=True, abort=abort,
    )
    with process:
        code = process.wait(timeout)
    if config.persist:
        keeper.after_direct_call(config)
    return Result(command, code, b"".join(captured["out"]), b"".join(captured["err"]))


def _after_kept_call(config: RunnerConfig) -> None:
    """Count a call made through a keeper; at a thread's second, open this process's own
    connection in the background."""
    key = (config, threading.get_ident())
    with _kept_lock:
        count = _kept_calls[key] = _kept_calls.get(key, 0) + 1
    if count == 2:
        threading.Thread(target=_connect_ahead, args=(config,), name="dapfab-connect-ahead",
                         daemon=True).start()


def _connect_ahead(config: RunnerConfig) -> None:
    try:
        POOL.connect_ahead(config)
    except Exception as err:  # noqa: BLE001 - the calls go on through the keeper
        log.debug("no connection of this process's own: %s", err)
