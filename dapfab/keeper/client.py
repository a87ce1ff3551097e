"""A call through a keeper (docs/design.md §12): find the keeper of the config's connection
identity, hand it the command and this process's stdin/stdout/stderr, heartbeat until the
exit code comes back. Imports no paramiko or Fabric.

:func:`run` returns None when no keeper could take the command (the caller runs it
directly, then calls :func:`after_direct_call`); once the keeper has acknowledged a
command, the command is never run a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from dapfab import errors, thin
from dapfab.identity import ConnectionIdentity
from dapfab.keeper import place, wire
from dapfab.remote.launcher import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, HELPER_STDIN_MAX
from dapfab.result import Result
from dapfab.streams import read_chunk

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.keeper")

HELLO_WAIT = 2.0  # seconds a keeper has to answer a new client before it is bypassed
START_WAIT = 5.0  # seconds the thin dap waits for a keeper it started to listen
QUIT_WAIT = 20.0  # seconds to wait for the keeper to confirm a stopped command


# Stuck keepers run() bypassed, for after_direct_call() to replace: digest -> PID (0: unknown).
_stuck: dict[str, int] = {}


def run(
    config: RunnerConfig,
    command: str,
    *,
    hide_out: bool,
    hide_err: bool,
    in_stream: Any,
    timeout: float | None,
    out_stream: IO[Any] | None,
    err_stream: IO[Any] | None,
    abort: threading.Event | None = None,
) -> Result | None:
    """Run ``command`` through the config's keeper: its Result, or None if no keeper took it."""
    sock = _connect(config)
    if sock is None:
        return None
    with sock:
        call = _Call(sock, command, hide_out, hide_err, out_stream, err_stream)
        if not call.send(config, in_stream):
            return None
        return call.follow(timeout, abort)


def _connect(config: RunnerConfig) -> socket.socket | None:
    """A socket to a live keeper of ``config``'s identity that said hello, or None (and
    a stuck keeper to replace after the direct call is noted in ``_stuck``). When none
    listens, one is started now, so that it is up by the next call (a sequence of calls
    in a shell loop); this call runs directly meanwhile."""
    digest = ConnectionIdentity.of(config).digest()
    try:
        path = place.socket_path(place.directory(), digest)
    except errors.DapError as err:
        log.warning("%s; running without a keeper", err)
        return None
    sock, found = _greet(path)
    if found == "absent":
        spawn(config)
    elif found == "foreign":
        log.warning("refusing keeper socket %s: another user's; running without a keeper", path)
    elif found == "stuck":
        _stuck[digest] = wire.peer_pid(sock) or 0  # bypass it, and replace it after this call
        sock.close()
        return None
    return sock


def _greet(path: str) -> tuple[socket.socket | None, str]:
    """Connect to the keeper at ``path`` and say hello: ``(socket, "ok")``, or None with why
    not: ``"absent"`` (nothing listens), ``"foreign"`` (another uid holds the socket) or
    ``"stuck"`` (no answer within :data:`HELLO_WAIT`; the socket is returned, still open,
    so that its peer can be named)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None, "absent"
    try:
        if wire.peer_uid(sock) != os.getuid():
            sock.close()
            return None, "foreign"
        wire.send(sock, {"op": "hello"})
        answer = wire.Reader(sock).next(HELLO_WAIT)
    except (OSError, wire.Closed):
        answer = None
    if answer is None or answer[0].get("op") != "hello":
        return sock, "stuck"
    return sock, "ok"


def after_direct_call(config: RunnerConfig) -> None:
    """After a direct call that bypassed a stuck keeper: kill it and start another."""
    digest = ConnectionIdentity.of(config).digest()
    if digest not in _stuck:
        return
    stuck = _stuck.pop(digest)
    if stuck:
        try:
            os.kill(stuck, signal.SIGKILL)  # same uid: checked by SO_PEERCRED before
        except OSError:
            pass
    spawn(config)


def spawn(config: RunnerConfig) -> None:
    """Start a keeper daemon for ``config`` (it exits at once if one already serves)."""
    settings = json.dumps(dataclasses.asdict(config)).encode()
    try:
        pid = thin.spawn_keeper(ConnectionIdentity.of(config).digest(), settings)
    except OSError as exc:
        log.debug("no keeper started: %s", exc)
        return
    # Reaped when it exits, or a long-lived caller would keep one zombie per keeper.
    threading.Thread(target=os.waitpid, args=(pid, 0), name="dapfab-keeper-reaper",
                     daemon=True).start()


class _Output:
    """Where the keeper writes one of the command's output streams: the caller's own
    descriptor, or a pipe whose other end we read (to capture it, or to copy it to a
    stream that has no descriptor)."""

    def __init__(self, hide: bool, stream: IO[Any]) -> None:
        self.stream = stream
        self.chunks: list[bytes] | None = [] if hide else None
        self.read_end: int | None = None
        if not hide:
            try:
                stream.flush()
                self.fd = stream.fileno()
                return
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                pass
        self.read_end, self.fd = os.pipe()

    def take(self, data: bytes) -> None:
        """Data read from the pipe: captured, or copied to the stream."""
        if self.chunks is not None:
            self.chunks.append(data)
        else:
            getattr(self.stream, "buffer", self.stream).write(data)

    def sent(self) -> None:
        """The keeper has its copy of our pipe's write end: close ours."""
        if self.read_end is not None:
            os.close(self.fd)

    def close(self) -> None:
        if self.read_end is not None:
            os.close(self.read_end)

    @property
    def captured(self) -> bytes:
        return b"".join(self.chunks or ())


class _Call:
    """One command through a keeper, from the client's side."""

    def __init__(self, sock: socket.socket, command: str, hide_out: bool, hide_err: bool,
                 out_stream: IO[Any] | None, err_stream: IO[Any] | None) -> None:
        self.sock = sock
        self.reader = wire.Reader(sock)
        self.command = command
        self.outputs = (_Output(hide_out, out_stream or sys.stdout),
                        _Output(hide_err, err_stream or sys.stderr))
        self.input_pipe: int | None = None  # our read end given to the keeper, if a copier feeds it
        self.heard = time.monotonic()  # when the keeper last said something

    def send(self, config: RunnerConfig, in_stream: Any) -> bool:
        """Hand the command over; False if the keeper did not acknowledge it (it never runs)."""
        message: dict[str, Any] = {"op": "run", "config": dataclasses.asdict(config),
                                   "command": self.command, "stdin": None}
        fds = [output.fd for output in self.outputs]
        payload = b""
        if isinstance(in_stream, io.BytesIO) and (
            len(in_stream.getbuffer()) - in_stream.tell() <= HELPER_STDIN_MAX
        ):
            payload = in_stream.read()
            message["stdin"] = "data"
        elif in_stream is not None:
            message["stdin"] = "fd"
            fds.append(self._input(in_stream))
        try:
            wire.send(self.sock, message, payload, fds)
            answer = self.reader.next(HELLO_WAIT)
        except (OSError, wire.Closed):
            answer = None
        finally:
            for output in self.outputs:
                output.sent()
            if self.input_pipe is not None:
                os.close(self.input_pipe)
        if answer is None or answer[0].get("op") != "accepted":
            for output in self.outputs:
                output.close()
            return False
        wire.send(self.sock, {"op": "go"})  # from here on, the command is the keeper's
        return True

    def _input(self, in_stream: Any) -> int:
        """A descriptor for the command's stdin: the stream's own, or a pipe fed by a thread."""
        try:
            return in_stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        read_end, write_end = os.pipe()

        def copy() -> None:
            try:
                with os.fdopen(write_end, "wb") as pipe:
                    while chunk := read_chunk(in_stream):
                        pipe.write(chunk)
            except OSError:
                pass

        threading.Thread(target=copy, daemon=True).start()
        self.input_pipe = read_end
        return read_end

    def follow(self, timeout: float | None, abort: threading.Event | None = None) -> Result:
        """Heartbeat and collect output until the keeper sends the outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = self._on_tstp()
        try:
            outcome = self._loop(deadline, timeout, abort)
        except errors.SSHError as err:
            if err.hop != "keeper":
                self._quit()
            raise
        except BaseException:
            self._quit()  # interrupted (or timed out): the keeper stops the command first
            raise
        finally:
            _restore_tstp(previous)
            for output in self.outputs:
                output.close()
        if outcome.get("op") == "exit":
            out, err = (output.captured for output in self.outputs)
            return Result(self.command, int(outcome["code"]), out, err)
        raise errors.from_wire(outcome)

    def _loop(self, deadline: float | None, timeout: float | None,
              abort: threading.Event | None) -> dict[str, Any]:
        self.heard = sent = time.monotonic()
        pipes = {o.read_end: o for o in self.outputs if o.read_end is not None}
        while True:
            ready, _, _ = select.select([self.sock, *pipes], [], [], 0.5)
            now = time.monotonic()
            for fd in ready:
                if fd in pipes:
                    data = os.read(fd, 1 << 16)
                    if data:
                        pipes[fd].take(data)
                    else:
                        del pipes[fd]
            if self.sock in ready:
                try:
                    self.reader.fill()
                except (OSError, wire.Closed):
                    raise _keeper_lost(self.sock, "ended during the command") from None
                while (got := self.reader.ready()) is not None:
                    self.heard = now
                    if got[0].get("op") in ("exit", "error"):
                        for fd, output in pipes.items():  # the keeper closed its ends
                            while data := os.read(fd, 1 << 16):
                                output.take(data)
                        return got[0]
            if now - sent >= HEARTBEAT_INTERVAL:
                try:
                    wire.send(self.sock, {"op": "h"})
                except OSError:
                    raise _keeper_lost(self.sock, "ended during the command") from None
                sent = now
            if now - self.heard > HEARTBEAT_TIMEOUT:
                # A stuck keeper still holds our stdout/stderr (`out=$(inv ...)` would wait
                # for it) and the remote command: end it (ours: SO_PEERCRED said so).
                pid = wire.peer_pid(self.sock)
                if pid:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                raise _keeper_lost(self.sock, f"stopped answering for {HEARTBEAT_TIMEOUT} s; killed it")
            if abort is not None and abort.is_set():
                raise errors.stopped_with_others()
            if deadline is not None and now > deadline:
                raise errors.command_timed_out(timeout)

    def _on_tstp(self) -> Any:
        """Ctrl-Z while the command runs: tell the keeper to pause it (it stops reading the
        command's output, and does not count our silence), stop, and resume on ``fg``."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def suspend(_signum: int, _frame: Any) -> None:
            try:
                wire.send(self.sock, {"op": "pause"})
            except OSError:
                pass
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
            signal.signal(signal.SIGTSTP, suspend)
            self.heard = time.monotonic()  # the keeper was not silent: we were stopped
            try:
                wire.send(self.sock, {"op": "resume"})
            except OSError:
                pass

        return signal.signal(signal.SIGTSTP, suspend)

    def _quit(self) -> None:
        """Interrupted: the keeper stops the command; wait until it says it is gone."""
        try:
            wire.send(self.sock, {"op": "quit"})
            deadline = time.monotonic() + QUIT_WAIT
            while time.monotonic() < deadline:
                got = self.reader.next(deadline - time.monotonic())
                if got is None or got[0].get("op") in ("exit", "error"):
                    return
        except (OSError, wire.Closed):
            pass


def _keeper_lost(sock: socket.socket, what: str) -> errors.SSHError:
    pid = wire.peer_pid(sock)
    return keeper_lost(f" (pid {pid})" if pid else "", what)


def keeper_lost(who: str, what: str) -> errors.SSHError:
    """The keeper ``who`` (`` (pid N)`` or nothing) ``what`` (ended, stopped answering)."""
    return errors.SSHError(
        f"the keeper{who} {what}",
        hop="keeper",
        hint="run the command again (a new keeper starts); `inv config.disconnect` stops keepers",
    )


def _restore_tstp(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTSTP, previous)


def status(config: RunnerConfig) -> int | None:
    """The PID of the live keeper of ``config``'s connection identity, or None; DapError
    if the keeper directory cannot be used."""
    sock = _connect_quietly(socket_path(config))
    if sock is None:
        return None
    with sock:
        return wire.peer_pid(sock) or 0


def stop(config: RunnerConfig | None = None) -> list[int]:
    """Stop the keeper of ``config``'s identity (every keeper of this user's with None);
    the PIDs of those that were running. Commands in flight through them end."""
    paths = place.sockets(place.directory()) if config is None else [socket_path(config)]
    stopped = []
    for path in paths:
        sock = _connect_quietly(path)
        if sock is None:
            continue
        with sock:
            pid = wire.peer_pid(sock)
            try:
                wire.send(sock, {"op": "stop"})
                wire.Reader(sock).next(HELLO_WAIT)
            except (OSError, wire.Closed):
                pass
            if pid:
                stopped.append(pid)
    return stopped


def socket_path(config: RunnerConfig) -> str:
    """The socket of the keeper of ``config``'s connection identity."""
    return place.socket_path(place.directory(), ConnectionIdentity.of(config).digest())


def _connect_quietly(path: str) -> socket.socket | None:
    """A socket to the keeper at ``path`` that is this user's and said hello, or None."""
    sock, found = _greet(path)
    if found == "ok":
        return sock
    if sock is not None:
        sock.close()
    return None
