"""Port-forwards inside the runner: :func:`port_forward` and the :class:`Forward` behind it.

``kubectl port-forward --address 127.0.0.1 TARGET LOCAL:REMOTE`` runs in the VM through the
remote launcher (:class:`~dapfab.execution.RemoteProcess`), so it is tied to its caller: when
the block ends (normally, by exception, Ctrl-C, or SIGTERM in the main thread) it is killed
and gone before :func:`port_forward` returns; when this process dies, freezes or loses its
link, the launcher in the VM stops hearing heartbeats and kills it within
:data:`dapfab.remote.launcher.HEARTBEAT_TIMEOUT` seconds.

Off the main thread no signal handler can be installed: Ctrl-C and SIGTERM reach the main
thread only. If the main thread lets the process exit, daemon threads die without cleanup
and the remote kubectl is gone within the heartbeat timeout (10 s); close the block from
the main thread (or call :meth:`Forward.close`) to have it gone at once.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dapfab.commands import (
    kubectl_command,
    validate_context,
    validate_namespace,
    validate_port,
    validate_seconds,
)
from dapfab.errors import CommandError, ConfigError, DapError, DapTimeout, Interrupted
from dapfab.execution import RemoteProcess
from dapfab.remote import protocol, scripts

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.forward")

READY_TIMEOUT = 30.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
_FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")

_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(/[A-Za-z0-9][A-Za-z0-9.:-]*)?")

EventSink = Callable[[str], None]


def validate_target(value: Any) -> str:
    """Return ``value`` if it is a port-forward target (``pod/NAME``, ``svc/NAME``, ``NAME``)."""
    if not isinstance(value, str) or len(value) > 300 or not _TARGET.fullmatch(value):
        raise ConfigError(
            f"invalid port-forward target {value!r}",
            hint="give TYPE/NAME such as pod/web, svc/web or deploy/web (or a pod name)",
        )
    return value


def forward_command(
    target: str,
    remote_port: int,
    *,
    local_port: int = 0,
    namespace: str | None = None,
    context: str | None = None,
) -> str:
    """The shell code for ``kubectl port-forward`` in the VM, listening on 127.0.0.1 only."""
    args = ["port-forward", "--address", "127.0.0.1", target, f"{local_port}:{remote_port}"]
    return kubectl_command(args, namespace=namespace, context=context)


def reporting_forward_command(command: str) -> str:
    """``command`` (a :func:`forward_command`) with its output passed through a reader
    (``sh/forward_report.sh``) that, after kubectl's ``Forwarding from`` line, prints the
    ``listener`` marker with the inode of kubectl's listening socket. The exit code is
    kubectl's."""
    return scripts.program("forward_report", command, libraries=("listener",))


# What `--dry` shows for a forward: run by hand on the management host, nothing tells the
# VM that the caller's SSH went away except stdin's end, so kubectl runs in the background
# and is killed when stdin closes (or on INT/TERM/HUP, which incus passes on).
_UNTIL_STDIN_CLOSES = (
    "{command} & k=$!; exec 3<&0; cat <&3 >/dev/null & c=$!; "
    "trap 'kill $k $c 2>/dev/null' EXIT; trap exit INT TERM HUP; wait -n"
)


def forward_dry_command(command: str) -> str:
    """``command`` (a :func:`forward_command`) as a user can paste it: it ends when its
    stdin closes (the SSH session that ran it went away), on Ctrl-C, or when kubectl exits."""
    return _UNTIL_STDIN_CLOSES.format(command=command)


def parse_forwarding(output: bytes) -> int | None:
    """The runner port from kubectl's ``Forwarding from 127.0.0.1:<port> -> <remote>`` line."""
    match = _FORWARDING.search(output)
    return int(match.group(1)) if match else None


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class _Attempt:
    """One ``kubectl port-forward`` process and what it said."""

    def __init__(self, config: RunnerConfig, command: str) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.ready = threading.Event()
        self.port: int | None = None
        self.listener: int | None = None  # kubectl's listening socket (inode), once reported
        self.process: RemoteProcess = RemoteProcess(
            config, command, on_stdout=self._out, on_stderr=self._err, in_stream=None
        )

    def _out(self, data: bytes) -> None:
        if self.ready.is_set():
            return
        self.stdout += data
        port = parse_forwarding(bytes(self.stdout))
        report = protocol.last_marker(bytes(self.stdout), "listener")
        if port is not None and report is not None:
            self.port = port
            inode = report[1]
            self.listener = int(inode[0]) if inode and inode[0].isdigit() else None
            self.ready.set()

    def _err(self, data: bytes) -> None:
        self.stderr += data[-65536:]
        del self.stderr[:-65536]

    def ended(self) -> bool:
        """Whether the remote command has finished or its connection broke."""
        return self.process.ended()

    def failure(self, what: str) -> DapError:
        """The error for an attempt that ended before (or instead of) being ready."""
        code = self.process.wait(10.0)  # raises the SSH/runner hop's own error if that broke
        message = _last_line(bytes(self.stderr)) or f"kubectl exited with {code}"
        return CommandError(
            f"{what}: {message}",
            hop="kubectl",
            exit_code=code or 1,
            hint="check the target and port with `inv k8s.kubectl -- get pods,svc`",
        )


class Forward:
    """A running ``kubectl port-forward`` in the runner; optionally restarted when it exits.

    ``runner_port`` is the port it listens on inside the runner (127.0.0.1). With
    ``reconnect=True`` a kubectl that exits (pod restarted: ``lost connection to pod``) is
    started again with backoff on the same runner port; ``on_event`` hears about it.
    """

    def __init__(
        self,
        config: RunnerConfig,
        target: str,
        remote_port: int | str,
        *,
        namespace: str | None = None,
        context: str | None = None,
        local_port: int | str = 0,
        ready_timeout: float = READY_TIMEOUT,
        reconnect: bool = False,
        on_event: EventSink | None = None,
    ) -> None:
        self.config = config
        self.target = validate_target(target)
        self.remote_port = validate_port(remote_port, what="remote port")
        self.local_port = validate_port(local_port, allow_zero=True, what="runner port")
        self.namespace = None if namespace is None else validate_namespace(namespace)
        self.context = None if context is None else validate_context(context)
        self.ready_timeout = validate_seconds(ready_timeout, what="ready_timeout")
        self.reconnect = reconnect
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.runner_port: int | None = None
        self.restarts = 0
        self.closed = threading.Event()
        self.failed: DapError | None = None
        self._lock = threading.Lock()
        self._attempt: _Attempt | None = None
        self._monitor: threading.Thread | None = None

    # -- starting ------------------------------------------------------------------------
    def _command(self, port: int) -> str:
        return reporting_forward_command(forward_command(
            self.target, self.remote_port, local_port=port, namespace=self.namespace,
            context=self.context,
        ))

    def _start_attempt(self, port: int) -> _Attempt:
        """Start kubectl and wait until it is forwarding; raise DapError if it is not."""
        attempt = _Attempt(self.config, self._command(port))
        with self._lock:
            if self.closed.is_set():
                raise Interrupted("the forward was closed while starting")
            attempt.process.start()
            self._attempt = attempt
        deadline = time.monotonic() + self.ready_timeout
        try:
            while not attempt.ready.wait(0.05):
                if self.closed.is_set():
                    raise Interrupted("the forward was closed while starting")
                if attempt.ended():
                    if attempt.ready.wait(0.2):
                        break
                    raise attempt.failure(f"kubectl port-forward {self.target} failed")
                if time.monotonic() > deadline:
                    detail = _last_line(bytes(attempt.stderr))
                    raise DapTimeout(
                        f"kubectl port-forward {self.target} not ready after "
                        f"{self.ready_timeout:g} s" + (f": {detail}" if detail else ""),
                        hop="kubectl",
                        hint="check that the pod is running: inv k8s.kubectl -- get pods",
                    )
            if attempt.listener is None:
                raise CommandError(
                    f"kubectl port-forward {self.target} is forwarding, but its listening "
                    f"socket on runner port {attempt.port} was not found",
                    hop="kubectl",
                    hint="the VM needs bash, coreutils and a readable /proc",
                )
        except BaseException:
            self._stop_attempt(attempt)
            raise
        return attempt

    def _stop_attempt(self, attempt: _Attempt) -> None:
        attempt.process.close()
        with self._lock:
            if self._attempt is attempt:
                self._attempt = None

    def open(self) -> int:
        """Start the forward; the runner port once kubectl is forwarding."""
        attempt = self._start_attempt(self.local_port)
        self.runner_port = attempt.port
        self._monitor = threading.Thread(
            target=self._watch, args=(attempt,), name="dapfab-forward", daemon=True
        )
        self._monitor.start()
        assert self.runner_port is not None
        return self.runner_port

    # -- watching ------------------------------------------------------------------------
    def _watch(self, attempt: _Attempt) -> None:
        """Wait for kubectl to exit; restart it with backoff when ``reconnect`` is on."""
        backoff = BACKOFF_FIRST
        while not self.closed.is_set():
            while not self.closed.wait(0.2) and not attempt.ended():
                pass
            if self.closed.is_set():
                return
            try:
                reason = attempt.failure("kubectl port-forward exited")
            except DapError as err:
                reason = err
            self._stop_attempt(attempt)
            if not self.reconnect or isinstance(reason, Interrupted):
                self.failed = reason
                self.on_event(f"forward ended: {reason.message}")
                return
            while not self.closed.is_set():
                self.on_event(
                    f"kubectl port-forward exited ({reason.message}); restarting in "
                    f"{backoff:g} s on runner port {self.runner_port}"
                )
                if self.closed.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                try:
                    assert self.runner_port is not None
                    attempt = self._start_attempt(self.runner_port)
                except Interrupted:
                    return
                except DapError as err:
                    reason = err
                    continue
                self.restarts += 1
                backoff = BACKOFF_FIRST
                self.on_event(
                    f"forward reconnected: 127.0.0.1:{self.runner_port} -> "
                    f"{self.target}:{self.remote_port} (restart {self.restarts})"
                )
                break

    @property
    def listener(self) -> int | None:
        """The inode of the running kubectl's listening socket; None while it is down."""
        attempt = self._attempt
        if attempt is None or attempt.ended() or self.closed.is_set():
            return None
        return attempt.listener

    @property
    def alive(self) -> bool:
        """Whether kubectl is forwarding right now (False between a restart's attempts)."""
        attempt = self._attempt
        return attempt is not None and not attempt.ended() and not self.closed.is_set()

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Kill the remote kubectl and wait until it is gone (idempotent)."""
        self.closed.set()
        with self._lock:
            attempt = self._attempt
        if attempt is not None:
            self._stop_attempt(attempt)
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(15.0)
        with self._lock:  # a restart may have raced the first stop
            attempt = self._attempt
        if attempt is not None:
            self._stop_attempt(attempt)

    def __enter__(self) -> Forward:
        if self.runner_port is None:
            try:
                self.open()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- SIGTERM in the main thread ---------------------------------------------------------------
_GUARD_LOCK = threading.Lock()
_GUARD_DEPTH = 0
_GUARD_PREVIOUS: Any = None


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Interrupted("terminated by SIGTERM", exit_code=143)


@contextmanager
def sigterm_cleanup() -> Iterator[None]:
    """In the main thread with SIGTERM at its default: SIGTERM raises Interrupted (143).

    Python's default for SIGTERM is to die without running ``finally`` blocks; this turns it
    into an exception so that the block's cleanup runs. A handler the program installed
    itself is left alone. Off the main thread this does nothing (see the module docs).
    """
    global _GUARD_DEPTH, _GUARD_PREVIOUS
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _GUARD_LOCK:
        if _GUARD_DEPTH == 0:
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None):
                _GUARD_PREVIOUS = current
                signal.signal(signal.SIGTERM, _raise_terminated)
            else:
                _GUARD_PREVIOUS = _raise_terminated  # marker: nothing to restore
        _GUARD_DEPTH += 1
    try:
        yield
    finally:
        with _GUARD_LOCK:
            _GUARD_DEPTH -= 1
            if _GUARD_DEPTH == 0 and _GUARD_PREVIOUS is not _raise_terminated:
                if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                    signal.signal(signal.SIGTERM, _GUARD_PREVIOUS or signal.SIG_DFL)


@contextmanager
def port_forward(
    config: RunnerConfig,
    target: str,
    remote_port: int | str,
    *,
    namespace: str | None = None,
    context: str | None = None,
    local_port: int | str = 0,
    ready_timeout: float = READY_TIMEOUT,
    reconnect: bool = False,
    on_event: EventSink | None = None,
) -> Iterator[int]:
    """Forward ``target``'s ``remote_port`` to 127.0.0.1 in the runner; yield the runner port.

    ``local_port=0`` picks a random free port (the one kubectl reports is yielded). Raises
    :class:`~dapfab.errors.CommandError` with kubectl's own message if it fails before it is
    ready (pod not found, port in use), :class:`~dapfab.errors.DapTimeout` if it is not ready
    within ``ready_timeout`` seconds. The remote kubectl is gone when the block exits,
    however it exits; in the main thread SIGTERM (at its default) raises
    :class:`~dapfab.errors.Interrupted` (exit code 143) so that this holds for it too.
    ``reconnect=True`` restarts kubectl with backoff on the same port when it exits.
    """
    forward = Forward(
        config,
        target,
        remote_port,
        namespace=namespace,
        context=context,
        local_port=local_port,
        ready_timeout=ready_timeout,
        reconnect=reconnect,
        on_event=on_event,
    )
    with sigterm_cleanup(), forward:
        assert forward.runner_port is not None
        yield forward.runner_port


__all__ = ["Forward", "forward_command", "parse_forwarding", "port_forward", "sigterm_cleanup"]
