"""One call of shell code in the runner VM without a pty, as :func:`dapfab.run.run_in_runner`,
fan-out, curl and the pty stager make it: through the connection's keeper when one is alive
(docs/design.md §12), else directly as a :class:`~dapfab.execution.RemoteProcess`.

The decision lives here, above both :mod:`dapfab.execution` and :mod:`dapfab.keeper`, so
that neither knows the other exists except the keeper's use of execution.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from dapfab.execution import RemoteProcess
from dapfab.keeper import client as keeper
from dapfab.result import Result
from dapfab.streams import StreamSink, caller_stdin, hide_flags

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig


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
    alive; a direct call starts one when it is done. Setting ``abort`` (from another
    thread) stops the command and raises Interrupted once it is gone."""
    hide_out, hide_err = hide_flags(hide)
    in_stream = caller_stdin(in_stream)
    if config.persist:
        result = keeper.run(config, command, hide_out=hide_out, hide_err=hide_err,
                            in_stream=in_stream, timeout=timeout, out_stream=out_stream,
                            err_stream=err_stream, abort=abort)
        if result is not None:
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
