"""The laptop bridge: 127.0.0.1 on the laptop to a port on the runner's loopback.

Each TCP connection accepted on the laptop becomes one relay in the VM, started through the
remote launcher over dapfab's pooled SSH connections (more connections than the management
host's ``MaxSessions`` open more SSH connections; no process on the laptop, nothing listening
beyond loopback). The relay uses only what the VM has, bash and cat::

    exec 3<>/dev/tcp/127.0.0.1/PORT; cat <&0 >&3 & exec cat <&3

Bytes pass through ``cat`` untouched in both directions. Closing: when the runner side ends
(the forward's peer closed), the relay exits and the laptop connection is closed after the
last byte. When the laptop client ends its sending side, the relay stops sending too; bash
cannot half-close a socket, so the runner side sees the end only when the connection closes.
A laptop client that closed only its sending side still gets the answer; the relay is ended
once the answer stops for :data:`HALF_CLOSED_IDLE` seconds or the client is gone.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dapfab.commands import validate_port
from dapfab.errors import ConfigError

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.bridge")

FRAME = 1 << 20  # the launcher's largest stdin frame
SOCKET_BUFFER = 4 << 20
HALF_CLOSED_IDLE = 30.0


def relay_command(port: int) -> str:
    """Shell code for the VM: carry stdin to 127.0.0.1:``port`` and its answers to stdout."""
    port = validate_port(port)
    return (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} || exit 111\n"
        "cat <&0 >&3 &\n"
        "exec cat <&3\n"
    )


class _SocketReader:
    """``read1`` over the laptop socket for the launcher's stdin pump, in large frames."""

    def __init__(self, conn: BridgedConnection) -> None:
        self.conn = conn

    def read1(self, size: int) -> bytes:
        conn = self.conn
        sock = conn.sock
        try:
            data = sock.recv(size)
            if not data:
                conn.client_eof = time.monotonic()
                return b""
            chunks = [data]
            total = len(data)
            # Gather what is already waiting so that frames (one `head` each in the VM) are big.
            while total < size:
                try:
                    more = sock.recv(size - total, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if not more:
                    conn.client_eof = time.monotonic()
                    break
                chunks.append(more)
                total += len(more)
        except OSError as exc:
            conn.fail(f"laptop client: {exc.strerror or exc}")
            return b""
        conn.bridge.count(up=total)
        conn.last_activity = time.monotonic()
        return b"".join(chunks) if len(chunks) > 1 else data


class BridgedConnection:
    """One laptop TCP connection carried to the runner port by one relay in the VM."""

    def __init__(self, bridge: LaptopBridge, sock: socket.socket) -> None:
        self.bridge = bridge
        self.sock = sock
        self.client_eof: float | None = None
        self.last_activity = time.monotonic()
        self.broken = threading.Event()
        self.reason = ""
        self.relay_stderr = bytearray()

    def fail(self, reason: str) -> None:
        """Mark the connection broken; the connection thread stops the relay."""
        if not self.broken.is_set():
            self.reason = reason
            self.broken.set()

    def _down(self, data: bytes) -> None:
        if self.broken.is_set():
            return
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.fail(f"laptop client: {exc.strerror or exc}")
            return
        self.bridge.count(down=len(data))
        self.last_activity = time.monotonic()

    def _err(self, data: bytes) -> None:
        self.relay_stderr += data[-4096:]

    def run(self) -> None:
        """Carry the connection until either side ends, then stop the relay and close."""
        from dapfab.errors import DapError
        from dapfab.execution import RemoteProcess

        bridge = self.bridge
        process = RemoteProcess(
            bridge.config,
            relay_command(bridge.runner_port or 0),
            on_stdout=self._down,
            on_stderr=self._err,
            in_stream=_SocketReader(self),
        )
        try:
            process.start()
            bridge._track(process)
            channel = process.channel
            while not channel.status_event.wait(0.25):
                if self.broken.is_set() or bridge.closed.is_set():
                    break
                if not process.link.transport.is_active() or channel.closed:
                    self.fail("SSH connection lost")
                    break
                if (
                    self.client_eof is not None
                    and time.monotonic() - self.last_activity > HALF_CLOSED_IDLE
                ):
                    break
            if channel.status_event.is_set():
                code = process.wait(10.0)
                if code == 111 and self.relay_stderr:
                    log.debug("relay: %s", self.relay_stderr.decode("utf-8", "replace").strip())
        except DapError as err:
            self.fail(str(err))
        except Exception as exc:  # never let one connection take the listener down
            self.fail(repr(exc))
        finally:
            process.close()
            bridge._untrack(process)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            if self.reason:
                log.debug("bridged connection ended: %s", self.reason)
            bridge._connection_done(self)


class LaptopBridge:
    """Listen on the laptop's 127.0.0.1 and carry each connection to ``runner_port`` in the VM.

    Use as a context manager or call :meth:`start` / :meth:`close`. ``laptop_port`` 0 picks a
    free port; :attr:`laptop_port` is the real one once started. A port already in use raises
    :class:`~dapfab.errors.ConfigError` (exit 2) at once.
    """

    def __init__(
        self,
        config: RunnerConfig,
        runner_port: int | None = None,
        *,
        laptop_port: int | str = 0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.runner_port = None if runner_port is None else validate_port(runner_port, what="runner port")
        self.requested_port = validate_port(laptop_port, allow_zero=True, what="laptop port")
        self.laptop_port: int | None = None
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.closed = threading.Event()
        self.open_connections = 0
        self.total_connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._processes: set[Any] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def count(self, *, up: int = 0, down: int = 0) -> None:
        """Add to the byte counters (approximate under concurrency is fine for a status line)."""
        self.bytes_up += up
        self.bytes_down += down

    def bind(self) -> int:
        """Bind 127.0.0.1 (before anything is sent, so a port in use fails early); the port."""
        if self._listener is not None:
            assert self.laptop_port is not None
            return self.laptop_port
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.requested_port))
        except OSError as exc:
            listener.close()
            reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(
                f"laptop port {self.requested_port} on 127.0.0.1: {reason}",
                hop="laptop",
                hint="pick another --laptop-port, or 0 for a free one",
            ) from None
        listener.listen(128)
        listener.settimeout(0.25)
        self._listener = listener
        self.laptop_port = listener.getsockname()[1]
        return self.laptop_port

    def start(self, runner_port: int | None = None) -> int:
        """Bind (unless bound) and start accepting for ``runner_port``; the laptop port."""
        if runner_port is not None:
            self.runner_port = validate_port(runner_port, what="runner port")
        if self.runner_port is None:
            raise ValueError("the runner port is not known yet")
        self.bind()
        self._acceptor = threading.Thread(target=self._accept, name="dapfab-bridge", daemon=True)
        self._acceptor.start()
        assert self.laptop_port is not None
        return self.laptop_port

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.closed.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.closed.is_set():
                    return
                time.sleep(0.1)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                except OSError:
                    pass
            connection = BridgedConnection(self, sock)
            thread = threading.Thread(target=connection.run, name="dapfab-bridged", daemon=True)
            with self._lock:
                if self.closed.is_set():
                    sock.close()
                    return
                self.open_connections += 1
                self.total_connections += 1
                self._threads.add(thread)
            thread.start()

    def _track(self, process: Any) -> None:
        with self._lock:
            self._processes.add(process)
        if self.closed.is_set():
            process.stop()

    def _untrack(self, process: Any) -> None:
        with self._lock:
            self._processes.discard(process)

    def _connection_done(self, connection: BridgedConnection) -> None:
        with self._lock:
            self.open_connections -= 1
            self._threads.discard(threading.current_thread())

    def close(self) -> None:
        """Stop listening, end every relay and wait until they are gone in the VM."""
        self.closed.set()
        if self._listener is not None:
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5.0)
        with self._lock:
            processes = list(self._processes)
            threads = list(self._threads)
        stoppers = [threading.Thread(target=p.stop, daemon=True) for p in processes]
        for thread in stoppers:
            thread.start()
        for thread in stoppers + threads:
            thread.join(15.0)

    def __enter__(self) -> LaptopBridge:
        if self.laptop_port is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LaptopBridge", "relay_command"]
