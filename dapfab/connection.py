"""The one connection factory: SSH to the management host (through a gateway), shared per
connection identity (docs/design.md §10). What runs on the connections (helpers) is kept
above this module, in :mod:`dapfab.helpers`.

Fabric parses host strings and ssh_config (``ProxyJump`` included); dapfab adds what it lacks:
host-key checking on every hop, connect timeouts on the gateway hop, ``TCP_NODELAY``, a
keepalive that wants replies (so a dead peer is noticed), and a pool that opens another
connection when one already carries ``MAX_SESSIONS`` channels.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dapfab import compat
from dapfab.errors import ConfigError, DapError, SSHError
from dapfab.identity import ConnectionIdentity

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.connection")
# paramiko logs failures (a refused channel open...) that dapfab reports as one line of its
# own; without a handler, Python's last-resort handler would print them to stderr as well.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

MAX_SESSIONS = 10  # OpenSSH's default MaxSessions

PACKET_FRAMING = 64  # bytes an SSH packet adds around channel data, at most (as paramiko counts)
GATEWAY_READ = 1 << 24  # more than a channel's window: recv() then takes all that is there
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT = 3  # unanswered intervals before the peer is declared dead


# A healthy link answers a keepalive every KEEPALIVE_INTERVAL: a peer silent for longer, or
# slow to answer the request in flight, is asked once more before a new call uses the link.
STALE_AFTER = KEEPALIVE_INTERVAL + 2.5
SLOW_REPLY = 2.0
PROBE_WAIT = 1.5  # seconds that last question waits for its reply before the link is closed


def awake_clock() -> float:
    """Seconds on a clock that also runs while the laptop sleeps (``CLOCK_BOOTTIME`` on
    Linux; macOS's ``CLOCK_MONOTONIC`` counts sleep), unlike :func:`time.monotonic`."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class Keepalive(threading.Thread):
    """Sends ``keepalive@openssh.com`` requests that want a reply; closes a silent transport.

    ``pending_since`` is when the request now in flight was sent (None when answered): the
    link uses it to blame the outermost silent hop, since an inner hop's requests travel
    through the outer ones and go unanswered too. ``heard`` is when the last reply came
    (:func:`awake_clock`).
    """

    def __init__(self, transport: Any, label: str, on_dead: Any) -> None:
        super().__init__(name=f"dapfab-keepalive-{label}", daemon=True)
        self.transport = transport
        self.label = label
        self.on_dead = on_dead
        self.stopped = threading.Event()
        self.pending_since: float | None = None
        self.heard = awake_clock()
        self._lock = threading.Lock()
        self._answered: threading.Event | None = None

    def ask(self) -> threading.Event:
        """Send a request unless one is in flight; the event set when it is answered (or
        the transport closed)."""
        with self._lock:
            if self._answered is None or self._answered.is_set():
                self._answered = threading.Event()
                self.pending_since = time.monotonic()
                threading.Thread(target=self._ask, args=(self._answered,), daemon=True).start()
            return self._answered

    def _ask(self, answered: threading.Event) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
            if self.transport.is_active():  # a reply, not a closed transport
                self.heard = awake_clock()
                self.pending_since = None
        finally:
            answered.set()

    def doubtful(self) -> bool:
        """Whether the peer has been silent longer than a healthy link allows, or is slow to
        answer the request in flight (asleep, a changed network, a NAT that forgot us)."""
        pending = self.pending_since
        return awake_clock() - self.heard > STALE_AFTER or (
            pending is not None and time.monotonic() - pending > SLOW_REPLY)

    def run(self) -> None:
        silent = KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
        while not self.stopped.wait(KEEPALIVE_INTERVAL) and self.transport.is_active():
            asked = time.monotonic()
            answered = self.ask()
            if not answered.wait(silent) and time.monotonic() - asked > silent + 1:
                answered.wait(PROBE_WAIT)  # this process was stopped: the reply may be queued
            if not answered.is_set():
                if self.stopped.is_set():
                    return
                self.on_dead(f"no reply to keepalives for {silent:.0f} s", self)
                self.transport.close()
                return


def gcm_first_transport(sock: Any, **kwargs: Any) -> Any:
    """A paramiko Transport that offers AES-GCM first (paramiko lists it last).

    GCM authenticates inside the cipher, so paramiko skips its per-packet HMAC, which is
    computed in Python: a quarter less laptop CPU per byte. Servers without GCM still get
    every other cipher, in paramiko's order.
    """
    import paramiko

    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    ciphers = tuple(options.ciphers)
    options.ciphers = tuple(c for c in ciphers if "-gcm@" in c) + tuple(
        c for c in ciphers if "-gcm@" not in c
    )
    return transport


class ChannelSocket:
    """A gateway's ``direct-tcpip`` channel as the socket of the next hop, read in bulk.

    paramiko's ``Channel.recv(n)`` copies the first ``n`` bytes of its receive buffer and
    then deletes them, moving the rest of the buffer; the next hop's transport reads every
    packet as a 16-byte header and then the body, so a full window (megabytes) was moved
    twice per packet. This takes everything buffered at once and serves the reads from it.
    Everything else is the channel's.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._data = b""
        self._view = memoryview(self._data)
        self._at = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at EOF; ``socket.timeout`` as the channel raises it."""
        if self._at >= len(self._data):
            self._data = self.channel.recv(GATEWAY_READ)
            self._view, self._at = memoryview(self._data), 0
        out = bytes(self._view[self._at : self._at + n])
        self._at += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)


def _set_nodelay(transport: Any) -> None:
    sock = compat.transport_socket(transport)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _connect_error(
    exc: BaseException, label: str, target: str, timeout: float, known_hosts: str
) -> DapError:
    """Map what paramiko or the OS raised while connecting to one hop to a DapError."""
    import paramiko

    from dapfab.hostkeys import changed_host_error

    if isinstance(exc, DapError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return changed_host_error(label, exc.hostname, exc.key, known_hosts)
    message, hint = _connect_failure(exc, target, timeout)
    return SSHError(message, hop=f"ssh {label}", hint=hint)


def _connect_failure(exc: BaseException, target: str, timeout: float) -> tuple[str, str]:
    """What went wrong connecting to ``target``, and how to fix it."""
    import paramiko

    up = "check that the management host is up and reachable from the gateway"
    if isinstance(exc, paramiko.AuthenticationException):
        return (f"authentication to {target} failed ({exc})",
                "check dap.runner.ssh_key, your ssh-agent, and the user's authorized_keys")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return (f"no answer from {target} within {timeout:g} s",
                "check that the host is up and reachable, or raise dap.ssh.connect_timeout")
    if isinstance(exc, (ConnectionRefusedError, paramiko.ssh_exception.NoValidConnectionsError)):
        return f"connection to {target} refused", "check the host and port, and that sshd runs there"
    if isinstance(exc, socket.gaierror):
        return (f"cannot resolve {target} ({exc.strerror})",
                "check the host name in dap.runner.ssh_host / dap.runner.gateway")
    if isinstance(exc, paramiko.SSHException) and "Timeout opening channel" in str(exc):
        return (f"no answer from {target} through the gateway within {timeout:g} s",
                f"{up}, or raise dap.ssh.connect_timeout")
    if isinstance(exc, paramiko.ChannelException):
        return f"the gateway could not open a connection to {target} ({exc.text})", up
    if isinstance(exc, OSError):
        return f"cannot connect to {target} ({exc.strerror or exc})", "check the network path to the host"
    return f"SSH to {target} failed ({exc})", "check the host and sshd"


def check_key_file(config: RunnerConfig) -> str | None:
    """The key file to offer, or None to rely on the agent and ssh_config; exit 2 if unusable."""
    from dapfab.config import default_ssh_key

    path = config.ssh_key
    default = default_ssh_key()
    if not os.path.exists(path):
        if path == default:
            return None
        raise ConfigError(
            f"SSH key {path} does not exist",
            hint="fix dap.runner.ssh_key / DAP_RUNNER_SSH_KEY or run `inv config.init`",
        )
    # Not only a directory: opening a FIFO or a device would block or read forever.
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(
            f"SSH key {path} is not a readable file",
            hint="point dap.runner.ssh_key at a private key file you can read",
        )
    try:
        with open(path, "rb") as key_file:
            head = key_file.read(1 << 16)
    except OSError as exc:
        raise ConfigError(
            f"SSH key {path} cannot be read ({exc.strerror})",
            hint="fix its permissions or point dap.runner.ssh_key elsewhere",
        ) from None
    if _is_encrypted(path, head) and not os.environ.get("SSH_AUTH_SOCK"):
        raise ConfigError(
            f"SSH key {path} is encrypted and no ssh-agent is running",
            hint="start ssh-agent and ssh-add the key, or use an unencrypted key",
        )
    return path


def _is_encrypted(path: str, head: bytes) -> bool:
    import paramiko

    if b"ENCRYPTED" in head:
        return True
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            kind.from_private_key_file(path)
            return False
        except paramiko.PasswordRequiredException:
            return True
        except (paramiko.SSHException, ValueError):
            continue
    return False


def _apply_connect_settings(hop: Any, timeout: float, connect_kwargs: dict[str, Any]) -> None:
    """Give a hop Fabric built from ssh_config ``ProxyJump`` the same timeouts and key.

    Fabric creates those gateway connections with no connect timeout (an unreachable jump
    host would hang for the kernel's TCP timeout) and without the configured key.
    """
    if hop.connect_timeout is None:
        hop.connect_timeout = timeout
    for name, value in connect_kwargs.items():
        if name == "key_filename":
            keys = hop.connect_kwargs.get("key_filename") or []
            keys = [keys] if isinstance(keys, str) else list(keys)
            hop.connect_kwargs["key_filename"] = keys + [k for k in value if k not in keys]
        else:
            hop.connect_kwargs.setdefault(name, value)


def _hop_chain(config: RunnerConfig, timeout: float) -> tuple[list[Any], dict[str, Any]]:
    """The Fabric connections to make, outermost (first contacted) first, and the connect
    options they share; ssh_config ``ProxyJump`` hops included, ``ProxyCommand`` refused."""
    from fabric import Connection

    connect_kwargs: dict[str, Any] = {
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        "channel_timeout": timeout,
        "transport_factory": gcm_first_transport,
    }
    key = check_key_file(config)
    if key:
        connect_kwargs["key_filename"] = [key]
    gateway = None
    if config.gateway:
        gateway = Connection(
            config.gateway, connect_timeout=timeout, connect_kwargs=dict(connect_kwargs)
        )
    chain = [
        Connection(
            config.ssh_host, gateway=gateway, connect_timeout=timeout,
            connect_kwargs=dict(connect_kwargs),
        )
    ]
    while isinstance(chain[-1].gateway, Connection):
        chain.append(chain[-1].gateway)
    chain.reverse()
    if isinstance(chain[0].gateway, str):
        raise ConfigError(
            "ssh_config ProxyCommand gateways are not supported",
            hint="use ProxyJump or dap.runner.gateway",
        )
    return chain, connect_kwargs


class Link:
    """One SSH connection to the management host, with the gateway hops it needs."""

    def __init__(self, config: RunnerConfig, identity: ConnectionIdentity) -> None:
        self.config = config  # the settings it was opened with (any config of its identity)
        self.identity = identity
        self._sessions = 0  # channels taken from the pool, idle helpers' included
        self.dead_reason: str | None = None
        self.dead_hop: str | None = None  # label of the hop whose keepalives went unanswered
        self._keepalives: list[Keepalive] = []
        self._connections: list[Any] = []
        self.transport: Any = None
        self._open_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._last_nudge = 0.0
        self.opened_at = 0.0
        self.open_seconds: float | None = None  # how long opening took, once open
        self.open_error: Exception | None = None  # why opening failed, for those who waited

    def ensure_open(self) -> None:
        """Open the connection unless it is open; concurrent callers wait for the first and
        share its failure (runners behind a dead host then fail together, not one by one)."""
        with self._open_lock:
            if self.open_error is not None:
                raise self.open_error
            if self.transport is None:
                started = time.monotonic()
                try:
                    self.open()
                except Exception as exc:
                    self.open_error = exc
                    raise
                self.opened_at = time.monotonic()
                self.open_seconds = self.opened_at - started

    def _mark_dead(self, reason: str, keepalive: Keepalive) -> None:
        """Record why the link died, blaming the outermost hop that is silent too."""
        hop = keepalive.label
        now = time.monotonic()
        for outer in self._keepalives:
            if outer is keepalive:
                break
            since = outer.pending_since
            if since is not None and now - since > KEEPALIVE_INTERVAL / 2:
                hop = outer.label
                break
        if self.dead_reason is None:
            self.dead_reason, self.dead_hop = reason, hop

    def check_fresh(self) -> None:
        """Before a new call uses this open link: when its peer looks doubtful (see
        :meth:`Keepalive.doubtful`), ask every hop once and, without a reply from the
        management host within ``PROBE_WAIT``, close the link from its outermost silent
        hop, so that the caller opens a fresh one instead of waiting for keepalives to time
        out. Commands still on the link end with its error (exit 255, naming that hop)."""
        keepalives = list(self._keepalives)
        if not keepalives or not keepalives[-1].doubtful():
            return
        with self._probe_lock:  # one caller asks; the others wait for its answer
            if not keepalives[-1].doubtful() or not self.alive:
                return
            silence = awake_clock() - keepalives[-1].heard
            answers = [keepalive.ask() for keepalive in keepalives]
            if answers[-1].wait(PROBE_WAIT):
                return
            first = next(i for i, answer in enumerate(answers) if not answer.is_set())
            if self.dead_reason is None:
                self.dead_reason = (f"no reply within {PROBE_WAIT:.1f} s after {silence:.0f} s of "
                                    "silence (the laptop slept or the network changed)")
                self.dead_hop = keepalives[first].label
            log.debug("closing a silent link to %s: %s", self.config.ssh_host, self.dead_reason)
            for keepalive in keepalives[first:]:
                keepalive.stopped.set()
                keepalive.transport.close()

    def open(self) -> None:
        """Connect every hop, gateway first, checking host keys; raise DapError on failure."""
        timeout = float(self.config.connect_timeout)
        chain, connect_kwargs = _hop_chain(self.config, timeout)
        target = chain[-1]
        sock = None
        for index, hop in enumerate(chain):
            label = f"{'management host' if hop is target else 'gateway'} {hop.host}"
            self._connect_hop(hop, label, sock, timeout, connect_kwargs)
            if index + 1 < len(chain):
                nxt = chain[index + 1]
                try:
                    sock = hop.transport.open_channel(
                        "direct-tcpip", (nxt.host, int(nxt.port)), ("", 0), timeout=timeout
                    )
                except BaseException as exc:
                    self.close()
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    nxt_name = f"management host {nxt.host}" if nxt is target else "gateway"
                    raise _connect_error(
                        exc, nxt_name, f"{nxt.host}:{nxt.port}", timeout, self.config.known_hosts
                    ) from None
        self.transport = target.transport
        log.debug("connected to %s through %d hop(s)", self.config.ssh_host, len(chain))

    def _connect_hop(
        self, hop: Any, label: str, sock: Any, timeout: float, connect_kwargs: dict[str, Any]
    ) -> None:
        """Connect one hop (through ``sock``, the previous hop's channel, if any) with its
        host key checked, and start its keepalives; DapError (all hops closed) on failure."""
        from dapfab.hostkeys import enforce, hash_known_hosts_wanted, known_hosts_name

        config = self.config
        enforce(
            hop.client,
            label=label,
            name=known_hosts_name(hop.host, int(hop.port)),
            known_hosts=config.known_hosts,
            policy=config.host_key_policy,
            hashed=hash_known_hosts_wanted(hop.ssh_config),
        )
        hop.gateway = None
        _apply_connect_settings(hop, timeout, connect_kwargs)
        if sock is not None:
            hop.connect_kwargs["sock"] = ChannelSocket(sock)
        try:
            hop.open()
        except BaseException as exc:
            self.close()
            if isinstance(exc, KeyboardInterrupt):
                raise
            name = f"{hop.user}@{hop.host}:{hop.port}"
            raise _connect_error(exc, label, name, timeout, config.known_hosts) from None
        self._connections.append(hop)
        _set_nodelay(hop.transport)
        keepalive = Keepalive(hop.transport, label, self._mark_dead)
        keepalive.start()
        self._keepalives.append(keepalive)

    def open_session(self) -> Any:
        """A new session channel on this connection."""
        try:
            channel = self.transport.open_session(timeout=float(self.config.connect_timeout))
        except Exception as exc:
            raise self.lost_error(f"could not open a session ({exc})") from None
        outer = compat.transport_socket(self.transport)
        if isinstance(outer, ChannelSocket):
            # Packets small enough that each one, with its SSH framing, fits in one packet
            # of the gateway's channel: otherwise every full packet travels as two there.
            compat.cap_packet_size(channel, compat.max_packet_size(outer.channel) - PACKET_FRAMING)
        return channel

    def reserve(self) -> bool:
        """Count a session for a new caller if the connection has room (``MAX_SESSIONS``);
        whether it had. Called with the pool's lock held."""
        if self._sessions >= MAX_SESSIONS:
            return False
        self._sessions += 1
        return True

    def release(self) -> None:
        """A session counted by :meth:`reserve` is given back (the pool's lock held)."""
        self._sessions -= 1

    @property
    def sessions(self) -> int:
        """How many sessions are counted on this connection."""
        return self._sessions

    @property
    def hops(self) -> int:
        """How many SSH connections this link is made of (gateways included)."""
        return len(self._connections)

    @property
    def alive(self) -> bool:
        """Whether every hop of this connection is still up."""
        return all(c.transport is not None and c.transport.is_active() for c in self._connections)

    def nudge(self) -> None:
        """Send an SSH_MSG_IGNORE so that small packets held on the far side go out now.

        A non-interactive sshd leaves Nagle on, and a gateway with nothing to send back
        delays its TCP ACK by up to 40 ms: each small reply (a start marker, an exit
        status) then waits for that ACK. A tiny message towards the management host
        carries the ACK at once. Rate-limited to one per millisecond.
        """
        now = time.monotonic()
        if now - self._last_nudge < 0.001 or self.transport is None:
            return
        self._last_nudge = now
        try:
            self.transport.send_ignore(1)
        except Exception:  # a dying transport: the readers report it
            pass

    def lost_error(self, what: str = "the connection was lost") -> SSHError:
        """The error to raise when this connection breaks under a running command."""
        reason = self.dead_reason or what
        return SSHError(
            reason,
            hop=f"ssh {self.dead_hop or 'management host ' + self.config.ssh_host}",
            hint="check the network path to the gateway and the management host",
        )

    def close(self) -> None:
        """Close every hop, innermost first."""
        for keepalive in self._keepalives:
            keepalive.stopped.set()
        for connection in reversed(self._connections):
            try:
                connection.close()
            except Exception:  # closing a broken connection may raise; nothing to do then
                pass
        self._connections.clear()


class Pool:
    """Connections shared by every call in the process, keyed by their
    :class:`~dapfab.identity.ConnectionIdentity` (runners behind one management host share
    them).

    Each connection carries at most ``MAX_SESSIONS`` channels. Something that keeps
    sessions while they are idle (the helper pool, :mod:`dapfab.helpers`) registers with
    :meth:`add_holder` and gives one up when a caller needs the room.
    """

    def __init__(self, link_factory: Callable[[RunnerConfig, ConnectionIdentity], Link] = Link) -> None:
        self._links: dict[ConnectionIdentity, list[Link]] = {}
        # A session freed, a link opened; its lock guards the links and their session counts
        # (and the holders' idle sessions: they use it too).
        self.changed = threading.Condition(threading.Lock())
        self._holders: list[Callable[[Link], Any]] = []
        self._new_link = link_factory  # the seam the root-free unit tests use
        self.opened = 0

    def add_holder(self, give_up: Callable[[Link], Any]) -> None:
        """Register something that keeps sessions while idle: ``give_up(link)`` (called
        with :attr:`changed` held) hands one of ``link``'s over to a new caller and returns
        what to close, or returns None."""
        self._holders.append(give_up)

    def holds(self, link: Link) -> bool:
        """Whether ``link`` is still one of the pool's (call with :attr:`changed` held)."""
        return link in self._links.get(link.identity, [])

    def take(
        self,
        config: RunnerConfig,
        *,
        prefer: Callable[[list[Link], list[Any]], tuple[Link, Any] | None] | None = None,
        wait_until: Callable[[list[Link], float], float] | None = None,
    ) -> tuple[Link, Any]:
        """A link with a session reserved for the caller, and what ``prefer`` offered.

        Under the pool's lock, each round: ``prefer(links, retired)`` may hand over a
        session it holds (with its channel); else a link with a free session; else a
        holder's idle session changes hands; else, with ``wait_until(links, since)``, wait
        until then for room; else a new link. What lands in ``retired`` is closed after.
        """
        config.check_configured()
        retired: list[Any] = []
        since = time.monotonic()
        identity = ConnectionIdentity.of(config)
        with self.changed:
            links = list(self._links.get(identity, []))
        for link in links:
            link.check_fresh()
        try:
            with self.changed:
                while True:
                    links = self._links.setdefault(identity, [])
                    for link in list(links):
                        if not link.alive:
                            links.remove(link)
                            retired.append(link)
                    offered = prefer(links, retired) if prefer else None
                    if offered is not None:
                        return offered
                    got = self._room(links, retired)
                    if got is not None:
                        return got, None
                    if wait_until is None or not links:
                        break
                    left = wait_until(links, since) - time.monotonic()
                    if left <= 0:
                        break
                    self.changed.wait(left)
                link = self._new_link(config, identity)
                link.reserve()
                links.append(link)
                self.opened += 1
                return link, None
        finally:
            for item in retired:
                item.close()

    def _room(self, links: list[Link], retired: list[Any]) -> Link | None:
        """A link with a session for the caller: a free one, or a holder's idle one."""
        for link in links:
            if link.reserve():
                return link
        for link in links:
            for give_up in self._holders:
                spare = give_up(link)
                if spare is not None:  # the session changes hands
                    retired.append(spare)
                    return link
        return None

    def open_channel(self, link: Link) -> Any:
        """Connect ``link`` if needed (dropping it from the pool if that fails); a new channel."""
        self._connect(link)
        return link.open_session()

    def _connect(self, link: Link) -> None:
        """Open ``link`` unless it is open; if that fails, drop it from the pool and raise."""
        try:
            link.ensure_open()
        except BaseException:
            with self.changed:
                if self.holds(link):
                    self._links[link.identity].remove(link)
                self.changed.notify_all()
            raise
        with self.changed:
            self.changed.notify_all()

    def connected(self, config: RunnerConfig) -> bool:
        """Whether the pool holds an open, live connection of ``config``'s identity."""
        identity = ConnectionIdentity.of(config)
        with self.changed:
            return any(link.transport is not None and link.alive
                       for link in self._links.get(identity, []))

    def connect_ahead(self, config: RunnerConfig) -> None:
        """Open a connection of ``config``'s identity for the calls to come (DapError if it
        cannot be opened; nothing is kept then)."""
        link, _ = self.take(config)
        try:
            self._connect(link)
        finally:
            self.give_back(link, None)

    def give_back(self, link: Link, channel: Any) -> None:
        """Return a session taken with :meth:`take` and close its channel."""
        with self.changed:
            link.release()
            self.changed.notify_all()
        if channel is not None:
            channel.close()

    @contextmanager
    def session(self, config: RunnerConfig) -> Iterator[tuple[Link, Any]]:
        """A session channel to the management host; closed and given back on exit."""
        link, _ = self.take(config)
        channel = None
        try:
            channel = self.open_channel(link)
            yield link, channel
        finally:
            self.give_back(link, channel)

    def close_all(self) -> None:
        """Close every connection (registered at exit)."""
        with self.changed:
            links = [link for group in self._links.values() for link in group]
            self._links.clear()
        for link in links:
            link.close()


POOL = Pool()
atexit.register(POOL.close_all)
