"""The keeper daemon (docs/design.md §12): one per connection identity, started by the
first call that found none, as ``python -m dapfab.keeper DIGEST`` with its config on stdin.

It takes ``<digest>.lock`` (two keepers never serve one identity), listens on
``<digest>.sock``, and runs each client's command with its own pool of connections and
helpers, doing the I/O on the descriptors the client passed. It refuses peers of another
uid and requests of another identity, and exits ``persist`` seconds after its last client
(or on ``stop``).
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dapfab import curl
from dapfab.config import RunnerConfig
from dapfab.connection import Pool
from dapfab.errors import DapError, OutputClosed
from dapfab.execution import RemoteProcess
from dapfab.helpers import HelperPool
from dapfab.identity import ConnectionIdentity
from dapfab.keeper import place, wire
from dapfab.remote.launcher import HEARTBEAT_TIMEOUT
from dapfab.result import Result
from dapfab.streams import StreamSink

log = logging.getLogger("dapfab.keeper")

ACCEPT_POLL = 0.5  # seconds between checks of the idle deadline
GO_WAIT = 5.0  # seconds a client has to confirm a request the keeper accepted
LOCK_WAIT = 3.0  # seconds a new keeper waits for a starting or stopping one
MAX_CONFIG = 1 << 16  # bytes of config on stdin


class Keeper:
    """Serves the commands of every client of one connection identity."""

    def __init__(self, config: RunnerConfig, helpers: HelperPool | None = None) -> None:
        self.config = config
        self.identity = ConnectionIdentity.of(config)
        self.helpers = helpers if helpers is not None else HelperPool(Pool())
        self.clients = 0
        self.idle_since = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.socket_path = place.socket_path(place.directory(), self.identity.digest())
        # stop() wakes the accept loop; a socket pair, so the keeper holds no pipe of anybody's
        self.wake_read, self.wake_write = socket.socketpair()

    def stop(self) -> None:
        """Stop taking calls at once (the socket goes away now), then exit."""
        with self.lock:
            if not self.stopping.is_set():
                self.stopping.set()
                self._unlink()
                self.wake_write.send(b"x")  # now: the lock is free for a new keeper sooner

    def _unlink(self) -> None:
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    # -- lifetime --------------------------------------------------------------------------
    def serve(self) -> int:
        """Lock, listen and serve until idle for ``persist`` seconds or stopped; exit code."""
        lock = os.open(place.lock_path(self.socket_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if not self._take(lock):
            os.close(lock)
            return 0  # another keeper serves this identity
        mine = b"%d\n" % os.getpid()
        os.pwrite(lock, mine, 0)  # then cut: a reader never sees an empty file
        os.ftruncate(lock, len(mine))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(self.socket_path):
                os.unlink(self.socket_path)  # a dead keeper's; we hold the lock
            old_umask = os.umask(0o177)
            try:
                listener.bind(self.socket_path)
            finally:
                os.umask(old_umask)
            listener.listen(64)
            threading.Thread(target=self._warm, daemon=True).start()
            self._accept(listener)
        finally:
            with self.lock:
                if not self.stopping.is_set():
                    self.stopping.set()  # a late stop() has nothing left to do
                    self._unlink()
            listener.close()
            os.close(lock)  # a new keeper may start while this one closes its connections
            self.wake_read.close()
            self.wake_write.close()
            self.helpers.connections.close_all()
        return 0

    def _take(self, lock: int) -> bool:
        """Take the identity's lock; False if another keeper serves. A holder without a
        socket is starting (it listens soon) or stopping (its lock is free soon): wait for
        either, up to LOCK_WAIT, so that a keeper started just after a stop serves."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if os.path.exists(self.socket_path) or time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _warm(self) -> None:
        """Open the connection and leave an idle helper, so the first client finds both."""
        try:
            with RemoteProcess(self.config, "true", on_stdout=_drop, on_stderr=_drop,
                               reuse=True, helpers=self.helpers) as process:
                process.wait(30.0)
        except Exception as exc:  # the first client's call reports the real error
            log.debug("warming failed: %s", exc)

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([listener, self.wake_read], [], [], ACCEPT_POLL)
            if listener not in ready:
                with self.lock:
                    idle = self.clients == 0 and time.monotonic() - self.idle_since > self.config.persist
                if idle:
                    return
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with self.lock:
                self.clients += 1
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            if wire.peer_uid(conn) != os.getuid():
                return  # another user: not a word
            ClientSession(self, conn).run()
        except Exception as exc:
            log.debug("client ended: %s", exc)
        finally:
            conn.close()
            with self.lock:
                self.clients -= 1
                self.idle_since = time.monotonic()


def _drop(_data: bytes) -> None:
    pass


class ClientSession:
    """One client connection: hello, then a command (or stop)."""

    def __init__(self, keeper: Keeper, conn: socket.socket) -> None:
        self.keeper = keeper
        self.conn = conn
        self.reader = wire.Reader(conn)
        self.files: list[Any] = []
        self.send_lock = threading.Lock()

    def run(self) -> None:
        try:
            got = self.reader.next(GO_WAIT)
            if got is None or got[0].get("op") != "hello":
                return
            wire.send(self.conn, {"op": "hello", "pid": os.getpid()})
            got = self.reader.next(None)
            op = got[0].get("op") if got else None
            if op == "stop":
                self.keeper.stop()
                wire.send(self.conn, {"op": "stopped"})
            elif op == "run":
                self._run(*got)
            elif op == "curl":
                self._curl(got[0])
        except wire.Closed:
            pass
        finally:
            self.reader.close_fds()
            self._close_files()

    def _run(self, message: dict[str, Any], payload: bytes) -> None:
        """A command, its output on the client's descriptors."""
        taken = self._start(message)
        if taken is None:
            return
        config, (stdout, stderr, *rest) = taken
        in_stream: Any = None
        if message.get("stdin") == "fd" and rest:
            in_stream = rest[0]
        elif message.get("stdin") == "data":
            in_stream = io.BytesIO(payload)

        def work(watched: Callable[..., int]) -> int:
            return watched(RemoteProcess(
                config, message["command"], on_stdout=StreamSink(stdout),
                on_stderr=StreamSink(stderr), in_stream=in_stream, reuse=True,
                helpers=self.keeper.helpers))

        self._conclude(work)

    def _curl(self, message: dict[str, Any]) -> None:
        """``k8s.curl URL`` for the thin ``dap``: the request on this keeper's connection,
        then what the task prints, on the client's descriptors, and its exit code."""
        taken = self._start(message)
        if taken is None:
            return
        config, (stdout, stderr, *_) = taken

        def work(watched: Callable[..., int]) -> int:
            def run(script: str, stdin: bytes, limit: float) -> Result:
                out: list[bytes] = []
                err: list[bytes] = []
                code = watched(RemoteProcess(
                    config, script, on_stdout=out.append, on_stderr=err.append,
                    in_stream=io.BytesIO(stdin), reuse=True, helpers=self.keeper.helpers),
                    limit)
                return Result(script, code, b"".join(out), b"".join(err))

            return curl.show(curl.curl_with(run, str(message["url"])), stdout, stderr)

        self._conclude(work)

    def _start(self, message: dict[str, Any]) -> tuple[RunnerConfig, list[Any]] | None:
        """Take the request: its config must be of this keeper's identity; the passed
        descriptors become files; ``accepted``, then the client's ``go``. The config and
        the files, or None: nothing is to run."""
        config = RunnerConfig(**message["config"])
        if ConnectionIdentity.of(config) != self.keeper.identity:
            wire.send(self.conn, {"op": "refused", "why": "another connection identity"})
            return None
        fds = self.reader.take_fds()
        files = [os.fdopen(fd, "wb") for fd in fds[:2]]
        files += [os.fdopen(fd, "rb", buffering=0) for fd in fds[2:3]]
        self.files += files
        wire.send(self.conn, {"op": "accepted"})
        got = self.reader.next(GO_WAIT)
        if got is None or got[0].get("op") != "go":
            return None  # the client gave up before confirming: the command never runs
        return config, files

    def _conclude(self, work: Callable[[Callable[..., int]], int]) -> None:
        """Run ``work(watched)``, where ``watched(process, limit)`` waits for a remote
        process while the client is followed (:meth:`_watch`); then close the client's
        descriptors and send the exit code or the error."""
        watchers: list[threading.Thread] = []

        def watched(process: RemoteProcess, limit: float | None = None) -> int:
            done = threading.Event()
            watcher = threading.Thread(target=self._watch, args=(process, done), daemon=True)
            watcher.start()
            watchers.append(watcher)
            try:
                with process:
                    return process.wait(limit)
            finally:
                done.set()

        try:
            outcome: dict[str, Any] = {"op": "exit", "code": work(watched)}
        except DapError as err:
            outcome = {"op": "error", **err.to_wire()}
        except BrokenPipeError:  # the reader of the client's output went away
            outcome = {"op": "error", **OutputClosed("output closed").to_wire()}
        except Exception as exc:  # a bug: say so instead of hanging the client
            outcome = {"op": "error", **DapError(f"keeper: {exc!r}", hop="keeper",
                                                 hint="run with DAP_SSH_PERSIST=0",
                                                 exit_code=255).to_wire()}
        self._close_files()  # before the exit code: `out=$(inv ...)` returns at once
        self._send(outcome)
        for watcher in watchers:
            watcher.join()

    def _send(self, message: dict[str, Any]) -> None:
        with self.send_lock:
            try:
                wire.send(self.conn, message)
            except OSError:
                pass

    def _watch(self, process: RemoteProcess, done: threading.Event) -> None:
        """Follow the client while the command runs: heartbeats, pause/resume, quit; stop
        the command when the client goes silent (frozen) or away (killed)."""
        heard = time.monotonic()
        paused = False
        while not done.is_set():
            try:
                got = self.reader.next(0.5)
            except (wire.Closed, OSError):
                process.stop()  # the client is gone
                return
            if got is None:
                if not paused and time.monotonic() - heard > HEARTBEAT_TIMEOUT:
                    process.stop()
                    return
                continue
            heard = time.monotonic()
            op = got[0].get("op")
            if op == "h":
                self._send({"op": "h"})
            elif op == "pause":
                paused = True
                process.pause()
            elif op == "resume":
                paused = False
                process.resume()
            elif op == "quit":
                process.stop()

    def _close_files(self) -> None:
        for file in self.files:
            try:
                file.close()
            except OSError:
                pass
        self.files.clear()


def main(argv: list[str]) -> int:
    """Entry point: ``python -m dapfab.keeper DIGEST``, the config's JSON on stdin (never in
    argv, which every local user can read); exits 2 if the config is not of that digest."""
    import json

    os.umask(0o077)
    os.chdir("/")
    _close_inherited()
    settings = _read_stdin(MAX_CONFIG)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the spawner's pipe is not held for the daemon's life
    os.close(null)
    config = RunnerConfig(**json.loads(settings))
    if argv != [ConnectionIdentity.of(config).digest()]:
        return 2  # a file changed since the spawner looked: the next call starts the right one
    return Keeper(config).serve()


def _close_inherited() -> None:
    """Close every descriptor above stderr that the spawner passed on by mistake (a pipe
    left open here would keep its reader waiting for as long as the keeper lives)."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _read_stdin(limit: int) -> bytes:
    data = b""
    while chunk := os.read(0, limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise ValueError("config too large")
    return data


if __name__ == "__main__":  # pragma: no cover - see __main__.py
    sys.exit(main(sys.argv[1:]))
