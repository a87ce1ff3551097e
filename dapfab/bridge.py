"""The laptop bridge: the laptop's loopback to a port on the runner's loopback.

It listens on 127.0.0.1 and, where the laptop has IPv6 loopback, on ::1 with the same port
(another local user could otherwise take ``[::1]:PORT`` and get the connections of every
client whose ``localhost`` is ::1 first). Each TCP connection accepted there becomes one
relay in the VM, started through the remote launcher over dapfab's pooled SSH connections
(more connections than the management host's ``MaxSessions`` open more SSH connections; no
process on the laptop, nothing listening beyond loopback). The relay uses only what the VM
has, bash and cat::

    exec 3<>/dev/tcp/127.0.0.1/PORT; cat <&0 >&3 & exec cat <&3

Given the forward's ``listener`` (the inode of its kubectl's listening socket), the relay
connects only while that socket holds the port, checked in ``/proc/net/tcp`` before and after
connecting: a VM user who takes the port while kubectl restarts never gets a laptop
connection. While the forward is down, a laptop connection is accepted and closed at once.

Bytes pass through ``cat`` untouched in both directions. Closing: when the runner side ends
(the forward's peer closed), the relay exits and the laptop connection is closed after the
last byte. When the laptop client ends its sending side, the relay stops sending too; bash
cannot half-close a socket, so the runner side sees the end only when the connection closes.
A laptop client that closed only its sending side still gets the answer; the relay is ended
once the answer stops for :data:`HALF_CLOSED_IDLE` seconds or the client is gone.

For ``k8s.proxy`` the bridge is given the proxy's token: each connection then passes
:mod:`dapfab.gate` first (bearer token and loopback ``Host`` checked on the laptop, the
token taken out of every request), and a relay starts in the VM only for a connection
whose first request passed.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dapfab.commands import validate_port
from dapfab.errors import ConfigError, DapError
from dapfab.execution import RemoteProcess
from dapfab.gate import Refused, RequestGate
from dapfab.remote import scripts
from dapfab.remote.protocol import RELAY_NOT_OURS, RELAY_REFUSED
from dapfab.tls import TlsConnection

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.bridge")

FRAME = 1 << 20  # the launcher's largest stdin frame
SOCKET_BUFFER = 4 << 20
HALF_CLOSED_IDLE = 30.0
FIRST_REQUEST_TIMEOUT = 30.0  # a gated connection that sends no whole request head is closed




def relay_command(port: int, listener: int | None = None) -> str:
    """Shell code for the VM (``sh/relay.sh``): carry stdin to 127.0.0.1:``port`` and its
    answers to stdout; with ``listener``, only if that socket (inode) listens there before
    and after connecting."""
    inode = "" if listener is None else int(listener)
    return scripts.program(
        "relay", validate_port(port), inode, RELAY_REFUSED, RELAY_NOT_OURS, libraries=("listener",)
    )


class _SocketReader:
    """``read1`` over the laptop socket for the launcher's stdin pump, in large frames;
    with a gate, what the gate passes (``first``: the checked first request)."""

    def __init__(self, conn: BridgedConnection, gate: RequestGate | None = None,
                 first: bytes = b"") -> None:
        self.conn = conn
        self.gate = gate
        self.first = first

    def read1(self, size: int) -> bytes:
        if self.first:
            first, self.first = self.first, b""
            return first
        while True:
            data = self._read(size)
            if not data or self.gate is None:
                return data
            try:
                data = self.gate.feed(data)
            except Refused as refused:
                self.conn.fail(f"refused a request on an open connection: {refused.reason}")
                return b""
            if data:
                return data

    def _read(self, size: int) -> bytes:
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

    def __init__(self, bridge: LaptopBridge, sock: socket.socket, listener: int | None) -> None:
        self.bridge = bridge
        self.sock: Any = sock  # a socket, or a TlsConnection over it once admitted
        self.listener = listener
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

    def _first_request(self, gate: RequestGate) -> bytes | None:
        """TLS (with a ``tls`` context), then read until the gate passes the first request;
        None (the connection answered, if refused, and to be closed) when it refuses it, the
        handshake fails or the client sends nothing in time."""
        self.sock.settimeout(FIRST_REQUEST_TIMEOUT)
        try:
            if self.bridge.tls is not None:
                tls = TlsConnection(self.bridge.tls, self.sock)
                if not tls.speaks_tls():
                    self.sock.sendall(Refused(400, "this port speaks TLS (https)").response())
                    self._drain()
                    return None
                tls.handshake()
                self.sock = tls
            while True:
                data = self.sock.recv(FRAME)
                if not data:
                    return None
                self.bridge.count(up=len(data))
                try:
                    passed = gate.feed(data)
                except Refused as refused:
                    self.bridge.on_event(f"refused a laptop request ({refused.status}): "
                                         f"{refused.reason}")
                    self.sock.sendall(refused.response())
                    self._drain()
                    return None
                if passed:
                    return passed
        except OSError:  # a timeout, or a client that left
            return None
        finally:
            self.sock.settimeout(None)

    def _drain(self) -> None:
        """End the sending side and read what the refused client still sends (briefly):
        closing with unread bytes would reset the connection before it read the answer."""
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.settimeout(2.0)
        for _ in range(64):
            if not self.sock.recv(FRAME):
                return

    def run(self) -> None:
        """Carry the connection until either side ends, then stop the relay and close."""
        bridge = self.bridge
        reader = _SocketReader(self)
        if bridge.token is not None:
            gate = RequestGate(bridge.token)
            first = self._first_request(gate)
            if first is None:  # nothing was started in the VM for it
                self._closed()
                return
            reader = _SocketReader(self, gate, first)
        process = RemoteProcess(
            bridge.config,
            bridge.relay_for(self.listener),
            on_stdout=self._down,
            on_stderr=self._err,
            in_stream=reader,
        )
        try:
            process.start()
            bridge._track(process)
            exited = process.exit_event()
            while not exited.wait(0.25):
                if self.broken.is_set() or bridge.closed.is_set():
                    break
                if process.broken():
                    self.fail("SSH connection lost")
                    break
                if (
                    self.client_eof is not None
                    and time.monotonic() - self.last_activity > HALF_CLOSED_IDLE
                ):
                    break
            if exited.is_set():
                code = process.wait(10.0)
                if code == RELAY_REFUSED and self.relay_stderr:
                    log.debug("relay: %s", self.relay_stderr.decode("utf-8", "replace").strip())
                elif code == RELAY_NOT_OURS:
                    bridge.on_event(
                        f"runner port {bridge.runner_port} is not held by this forward's kubectl "
                        "(restarting, or taken by another process); closed a laptop connection"
                    )
        except DapError as err:
            self.fail(str(err))
        except Exception as exc:  # never let one connection take the listener down
            self.fail(repr(exc))
        finally:
            process.close()
            bridge._untrack(process)
            self._closed()

    def _closed(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.reason:
            log.debug("bridged connection ended: %s", self.reason)
        self.bridge._connection_done(self)


class LaptopBridge:
    """Listen on the laptop's 127.0.0.1 and carry each connection to ``runner_port`` in the VM.

    Use as a context manager or call :meth:`start` / :meth:`close`. ``laptop_port`` 0 picks a
    port free on both loopbacks; :attr:`laptop_port` is the real one once started and
    :attr:`addresses` what is listened on. A port already in use (on 127.0.0.1 or ::1) raises
    :class:`~dapfab.errors.ConfigError` (exit 2) at once. ``listener`` returns the inode of
    the forward's listening socket, or None while it is down (see the module docs); without
    it, connections are relayed to whatever listens on the runner port. ``relay`` (given
    the listener's inode, the VM shell code for one connection) replaces the relay to the
    runner port, e.g. with one to a Unix socket (k8s.proxy).
    With ``token`` every connection is read as HTTP (over TLS with the server context
    ``tls``: :mod:`dapfab.tls`) through a :class:`~dapfab.gate.RequestGate`: nothing starts in the VM before its first request
    passed (bearer ``token``, a loopback ``Host``), and each request goes on without its
    ``Authorization`` line.
    """

    def __init__(
        self,
        config: RunnerConfig,
        runner_port: int | None = None,
        *,
        laptop_port: int | str = 0,
        on_event: Callable[[str], None] | None = None,
        listener: Callable[[], int | None] | None = None,
        relay: Callable[[int | None], str] | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.token = token
        self.tls = tls
        self.listener = listener
        self.relay = relay
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
        self._listeners: list[socket.socket] = []
        self.addresses: list[str] = []
        self._acceptor: threading.Thread | None = None

    def relay_for(self, listener: int | None) -> str:
        """The VM shell code that carries one laptop connection."""
        if self.relay is not None:
            return self.relay(listener)
        return relay_command(self.runner_port or 0, listener)

    def count(self, *, up: int = 0, down: int = 0) -> None:
        """Add to the byte counters (approximate under concurrency is fine for a status line)."""
        self.bytes_up += up
        self.bytes_down += down

    def bind(self) -> int:
        """Bind 127.0.0.1 and ::1 (before anything is sent, so a port in use fails early);
        the port."""
        if self._listeners:
            assert self.laptop_port is not None
            return self.laptop_port
        ipv6 = _has_ipv6_loopback()
        for _ in range(20):  # port 0: retry until the free IPv4 port is free on ::1 too
            v4 = _listen(socket.AF_INET, "127.0.0.1", self.requested_port)
            port = v4.getsockname()[1]
            try:
                self._listeners = [v4] + ([_listen(socket.AF_INET6, "::1", port)] if ipv6 else [])
                break
            except ConfigError:
                v4.close()
                if self.requested_port:
                    raise
        else:
            raise ConfigError(
                "no laptop port is free on both 127.0.0.1 and ::1",
                hop="laptop",
                hint="give a free --laptop-port",
            )
        self.laptop_port = port
        self.addresses = ["127.0.0.1"] + (["[::1]"] if ipv6 else [])
        return port

    def start(
        self,
        runner_port: int | None = None,
        listener: Callable[[], int | None] | None = None,
    ) -> int:
        """Bind (unless bound) and start accepting for ``runner_port`` (only while
        ``listener``, if given, names the forward's socket); the laptop port."""
        if runner_port is not None:
            self.runner_port = validate_port(runner_port, what="runner port")
        if listener is not None:
            self.listener = listener
        if self.runner_port is None and self.relay is None:
            raise ValueError("the runner port is not known yet")
        self.bind()
        self._acceptor = threading.Thread(target=self._accept, name="dapfab-bridge", daemon=True)
        self._acceptor.start()
        assert self.laptop_port is not None
        return self.laptop_port

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                ready, _, _ = select.select(self._listeners, [], [], 0.25)
                accepted = [listener.accept()[0] for listener in ready]
            except (OSError, ValueError):  # closed under us, or a client that left at once
                if self.closed.is_set():
                    return
                time.sleep(0.1)
                continue
            for sock in accepted:
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        """Relay one accepted laptop connection, or close it at once while the forward is down."""
        listener = None
        if self.listener is not None:
            listener = self.listener()
            if listener is None:
                log.debug("forward down: closed a laptop connection at once")
                sock.close()
                return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        connection = BridgedConnection(self, sock, listener)
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
        for listener in self._listeners:
            listener.close()
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


def _has_ipv6_loopback() -> bool:
    """Whether this host can listen on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _listen(family: socket.AddressFamily, address: str, port: int) -> socket.socket:
    """A listening socket on ``address``:``port``; ConfigError (exit 2) if that port is taken."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        listener.bind((address, port))
    except OSError as exc:
        listener.close()
        reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        shown = f"[{address}]" if ":" in address else address
        raise ConfigError(
            f"laptop port {port} on {shown}: {reason}",
            hop="laptop",
            hint="pick another --laptop-port, or 0 for a free one",
        ) from None
    listener.listen(128)
    return listener


__all__ = ["LaptopBridge", "relay_command"]
