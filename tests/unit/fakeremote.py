"""An in-process stand-in for the management host and the VM: the seam that lets the core
(RemoteProcess and its strategies, the connection and helper pools, the keeper) be tested
without root, sshd or a VM, as Fabric's ``MockRemote`` does for Fabric.

:class:`FakeHost` plays ``sh/boot.sh`` and ``sh/helper.sh`` at the level of the protocol
(docs/design.md §9): it prints the start marker, decodes the frames the laptop sends and
answers a helper request with begin and end markers. What a command does is a Python
function of the test's (:data:`Behaviour`). Everything above the channel is dapfab's own
code: :class:`FakeLink` is a real :class:`~dapfab.connection.Link` whose ``open`` makes no
SSH connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dapfab.connection import Link, Pool
from dapfab.errors import SSHError
from dapfab.helpers import HelperPool
from dapfab.remote import launcher


class Stream:
    """One direction of a channel: bytes with an end, read blocking."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ended = False
        self._changed = threading.Condition()

    def write(self, data: bytes) -> None:
        """Append ``data`` (ignored after the end, as a closed channel drops it)."""
        with self._changed:
            if not self._ended:
                self._data += data
                self._changed.notify_all()

    def end(self) -> None:
        """No more data: readers get what is left, then b""."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, waiting for some; b"" once ended and drained."""
        with self._changed:
            self._changed.wait_for(lambda: self._data or self._ended)
            data = bytes(self._data[:size])
            del self._data[:size]
            return data

    def read_exactly(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes, or None if the stream ends first."""
        parts = b""
        while len(parts) < size:
            data = self.read(size - len(parts))
            if not data:
                return None
            parts += data
        return parts

    def read_line(self) -> bytes | None:
        """One line without its newline, or None at the end."""
        line = b""
        while not line.endswith(b"\n"):
            data = self.read(1)
            if not data:
                return None
            line += data
        return line[:-1]


class FakeChannel:
    """The part of a paramiko ``Channel`` that dapfab uses, wired to a :class:`FakeHost`."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.stdin, self.stdout, self.stderr = Stream(), Stream(), Stream()
        self.status_event = threading.Event()  # what compat.exit_status_event reads
        self.exit_status = -1
        self.closed = False
        self.eof_received = False
        self.command: str | None = None

    # -- the laptop's side (paramiko's API) ------------------------------------------------
    def exec_command(self, command: str) -> None:
        """Start what ``command`` names: the helper or the one-shot launcher."""
        self.command = command
        self.host.exec(self, command)

    def sendall(self, data: Any) -> None:
        """Send bytes to the remote side; OSError once the channel is closed."""
        if self.closed or self.status_event.is_set():
            raise OSError("Socket is closed")
        self.stdin.write(bytes(data))

    def send_ready(self) -> bool:
        """Whether a send would not block."""
        return not self.closed

    def recv(self, size: int) -> bytes:
        """Stdout data; b"" at EOF."""
        return self.stdout.read(size)

    def recv_stderr(self, size: int) -> bytes:
        """Stderr data; b"" at EOF."""
        return self.stderr.read(size)

    def exit_status_ready(self) -> bool:
        """Whether the exit status came."""
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        """The exit status, waiting for it; -1 when the channel closed without one."""
        self.status_event.wait()
        return self.exit_status

    def close(self) -> None:
        """Close the channel: the remote side sees its stdin end, our readers see EOF."""
        self.closed = True
        self.stdin.end()
        self.stdout.end()
        self.stderr.end()
        self.status_event.set()

    # -- the remote side -------------------------------------------------------------------
    def exit(self, code: int) -> None:
        """The remote program ended with ``code`` (-1: killed without a status)."""
        self.stdout.end()
        self.stderr.end()
        self.eof_received = True
        self.exit_status = code
        self.status_event.set()


@dataclass
class Job:
    """One command as the fake VM runs it."""

    command: str
    stdin: bytes
    channel: FakeChannel
    quit: threading.Event = field(default_factory=threading.Event)

    def out(self, data: bytes) -> None:
        """Write to the command's stdout."""
        self.channel.stdout.write(data)

    def err(self, data: bytes) -> None:
        """Write to the command's stderr."""
        self.channel.stderr.write(data)


Behaviour = Callable[[Job], int]


def echo_behaviour(job: Job) -> int:
    """``echo WORDS`` prints WORDS; ``cat`` copies stdin; ``exit N`` exits N; ``fail`` prints
    to stderr and exits 3; ``wait`` blocks until the caller quits (exit 137)."""
    if job.command.startswith("echo "):
        job.out(job.command[5:].encode() + b"\n")
        return 0
    if job.command == "cat":
        job.out(job.stdin)
        return 0
    if job.command.startswith("exit "):
        return int(job.command[5:])
    if job.command == "fail":
        job.err(b"it failed\n")
        return 3
    if job.command == "wait":
        job.quit.wait(30)
        return 137
    return 0


class FakeHost:
    """A management host with one VM, as seen through :class:`FakeChannel` s.

    ``behaviour`` runs each command; ``refuse`` makes connecting fail (after
    ``connect_delay``); ``crash_on_request`` kills the helper that gets the next request
    before it begins it; ``exec_error`` makes
    every ``incus exec`` fail before the launcher starts (``(code, stderr)``). Counters:
    ``connects``, ``launchers`` and ``helpers`` (execs of each kind), ``jobs`` (commands
    run) and ``quits`` (``q`` frames).
    """

    def __init__(self, behaviour: Behaviour = echo_behaviour) -> None:
        self.behaviour = behaviour
        self.refuse: str | None = None
        self.connect_delay = 0.0  # seconds connecting takes
        self.crash_on_request = False  # the next helper request finds its helper dying
        self.exec_error: tuple[int, bytes] | None = None
        self.connects = 0
        self.launchers = 0
        self.helpers: list[FakeChannel] = []
        self.jobs: list[Job] = []
        self.quits = 0
        self.lock = threading.Lock()

    def pool(self) -> HelperPool:
        """A helper pool on a connection pool whose links reach this host."""
        return HelperPool(Pool(link_factory=lambda config, identity: FakeLink(config, identity, self)))

    def exec(self, channel: FakeChannel, command: str) -> None:
        """Start the launcher or the helper that ``command`` runs."""
        if self.exec_error is not None:
            code, stderr = self.exec_error
            channel.stderr.write(stderr)
            channel.exit(code)
            return
        helper = "dapfab-helper" in command
        with self.lock:
            if helper:
                self.helpers.append(channel)
            else:
                self.launchers += 1
        target = self._helper if helper else self._launcher
        threading.Thread(target=target, args=(channel,), daemon=True).start()

    def _run(self, job: Job) -> int:
        with self.lock:
            self.jobs.append(job)
        return self.behaviour(job)

    def _launcher(self, channel: FakeChannel) -> None:
        """``sh/boot.sh``: the command, stdin frames up to ``e``; ``q`` kills."""
        channel.stdout.write(launcher.STARTED)
        command, stdin, job = None, b"", None
        while (header := channel.stdin.read_line()) is not None:
            kind, *fields = header.split(b" ")
            if kind == b"dapfab1":
                command = channel.stdin.read_exactly(int(fields[0])).decode()
            elif kind == b"d":
                stdin += channel.stdin.read_exactly(int(fields[0]))
            elif kind == b"e" and command is not None:
                job = Job(command, stdin, channel)
                threading.Thread(target=self._finish, args=(job,), daemon=True).start()
            elif kind == b"q":
                self._quit(job, channel)
                return

    def _finish(self, job: Job) -> None:
        job.channel.exit(self._run(job))

    def _helper(self, channel: FakeChannel) -> None:
        """``sh/helper.sh``: requests one after another; ``q`` kills."""
        channel.stdout.write(launcher.STARTED)
        job = None
        while (header := channel.stdin.read_line()) is not None:
            kind, *fields = header.split(b" ")
            if kind == b"c":
                size, stdin_size, nonce = int(fields[0]), int(fields[1]), fields[2].decode()
                payload = channel.stdin.read_exactly(size + stdin_size)
                if self.crash_on_request:  # it died as the request came: nothing began
                    self.crash_on_request = False
                    channel.exit(137)
                    return
                job = Job(payload[:size].decode(), payload[size:], channel)
                threading.Thread(target=self._request, args=(job, nonce), daemon=True).start()
            elif kind == b"q":
                self._quit(job, channel)
                return

    def _request(self, job: Job, nonce: str) -> None:
        channel = job.channel
        channel.stdout.write(launcher.begin_marker(nonce))
        code = self._run(job)
        if channel.status_event.is_set():
            return
        out, err = launcher.end_markers(nonce)
        channel.stderr.write(err)
        channel.stdout.write(out + b"%d\n" % code)

    def _quit(self, job: Job | None, channel: FakeChannel) -> None:
        with self.lock:
            self.quits += 1
        if job is not None:
            job.quit.set()
        channel.exit(137)

    def kill_helpers(self) -> None:
        """Something killed every helper (their channels end with a status, as a dead exec does)."""
        for channel in self.helpers:
            if not channel.status_event.is_set():
                channel.exit(137)


class FakeTransport:
    """What dapfab asks of a paramiko Transport on a link."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        """Whether the connection is up."""
        return self.active

    def send_ignore(self, _size: int) -> None:
        """The nudge (see Link.nudge): nothing to carry here."""


class FakeLink(Link):
    """A :class:`~dapfab.connection.Link` whose connection is to a :class:`FakeHost`."""

    def __init__(self, config: Any, identity: Any, host: FakeHost) -> None:
        super().__init__(config, identity)
        self.host = host
        self.channels: list[FakeChannel] = []

    def open(self) -> None:
        with self.host.lock:
            self.host.connects += 1
        threading.Event().wait(self.host.connect_delay)
        if self.host.refuse:
            raise SSHError(self.host.refuse, hop=f"ssh management host {self.config.ssh_host}",
                           hint="check the host")
        self.transport = FakeTransport()

    def open_session(self) -> FakeChannel:
        channel = FakeChannel(self.host)
        self.channels.append(channel)
        return channel

    @property
    def alive(self) -> bool:
        return self.transport is None or self.transport.active

    @property
    def hops(self) -> int:
        return 1

    def drop(self) -> None:
        """The connection breaks under its channels (no exit status reaches them)."""
        self.transport.active = False
        for channel in self.channels:
            channel.stdout.end()
            channel.stderr.end()
            channel.closed = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.active = False
        for channel in self.channels:
            channel.close()
