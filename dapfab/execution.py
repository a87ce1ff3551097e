"""How one command runs in the runner VM: :class:`RemoteProcess` and the strategies it runs
on (:class:`OneShot`, :class:`OnHelper`). Whether a call goes through a keeper instead is
decided above this module, in :mod:`dapfab.calls`.

Every command is a :class:`RemoteProcess`: one SSH session channel on a pooled connection,
running the remote launcher (:mod:`dapfab.remote.launcher`). Output streams as it arrives in large
chunks and is captured (linearly) only where ``hide`` keeps it off the terminal; stdin is
sent in large frames; a heartbeat keeps the remote side alive while the caller is.
"""

from __future__ import annotations

import errno
import io
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from dapfab import compat
from dapfab.errors import (
    DapError,
    OutputClosed,
    RunnerError,
    command_timed_out,
    stopped_with_others,
)
from dapfab.helpers import HELPERS, HelperPool
from dapfab.remote import launcher
from dapfab.remote.incus import EXIT_ERROR_LINES, runner_failure
from dapfab.remote.protocol import MarkerScanner
from dapfab.streams import Sink, read_chunk, reader_gone

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.execution")

READ_SIZE = 1 << 18
QUIT_GRACE = 10.0  # seconds to wait for the remote tree to be gone after `q`
# Only replies this small can be held back by the far side's Nagle (see Link.nudge); bulk
# output arrives in full segments and needs no nudge.
SMALL_REPLY = 4096


class _Heartbeats(threading.Thread):
    """One thread per process that tells every running remote launcher, and every idle
    helper of the pools in use, that the caller is alive."""

    def __init__(self) -> None:
        super().__init__(name="dapfab-heartbeat", daemon=True)
        self.processes: set[RemoteProcess] = set()
        self.pools: set[HelperPool] = set()
        self.lock = threading.Lock()

    def add(self, process: RemoteProcess) -> None:
        """Keep ``process`` (and its pool's idle helpers) alive until :meth:`discard`."""
        with self.lock:
            self.processes.add(process)
            self.pools.add(process.helpers)

    def discard(self, process: RemoteProcess) -> None:
        """Stop the heartbeats of ``process`` (its pool's idle helpers keep theirs)."""
        with self.lock:
            self.processes.discard(process)

    def run(self) -> None:
        while True:
            time.sleep(launcher.HEARTBEAT_INTERVAL)
            with self.lock:
                processes, pools = list(self.processes), list(self.pools)
            for process in processes:
                process.heartbeat()
            for pool in pools:
                pool.send_idle(launcher.HEARTBEAT_FRAME)


_HEARTBEATS: _Heartbeats | None = None
_HEARTBEATS_LOCK = threading.Lock()


def _heartbeats() -> _Heartbeats:
    global _HEARTBEATS
    with _HEARTBEATS_LOCK:
        if _HEARTBEATS is None:
            _HEARTBEATS = _Heartbeats()
            _HEARTBEATS.start()
        return _HEARTBEATS


class Strategy:
    """How a :class:`RemoteProcess` gets its command to the VM and learns its end.

    The process calls the hooks in this order: :meth:`open` (a link and a channel),
    :meth:`launch`, :meth:`started` once the expected prefix arrived, :meth:`stdout` /
    :meth:`stderr` per chunk of output, :meth:`outputs_ended` when both pumps are done,
    then :meth:`exit_code` once :meth:`done` is set; if that gives none, :meth:`retry` and
    :meth:`failure` judge the channel's end; :meth:`release` last, always. Strategies use
    only the process's public side (``config``, ``command``, ``in_stream``, ``send``,
    ``write_stdout``, ``write_stderr``, ``emit_stderr``, ``helpers``).
    """

    streams_stdin = False  # whether a pump streams the caller's stdin to the command
    fresh = True  # whether the channel is new (the remote side still has to be started)

    def __init__(self, process: RemoteProcess) -> None:
        self.process = process
        self._session: Any = None

    def open(self) -> tuple[Any, Any]:
        """A link and a channel for the command."""
        raise NotImplementedError

    def launch(self, channel: Any) -> bytes:
        """Start the remote side on ``channel`` if needed and send the command; the prefix
        expected on stdout before the command's own output."""
        raise NotImplementedError

    def started(self) -> None:
        """The expected prefix arrived."""

    def stdout(self, data: bytes) -> bool:
        """Pass the command's stdout on; True when the command's output is complete."""
        self.process.write_stdout(data)
        return False

    def stderr(self, data: bytes) -> bool:
        """Pass the command's stderr on; True when the command's output is complete."""
        self.process.emit_stderr(data)
        return False

    def outputs_ended(self) -> None:
        """Both output pumps have ended (at the end markers or at the channel's EOF)."""

    def done(self, channel: Any) -> threading.Event:
        """Set once the command's outcome is known."""
        return compat.exit_status_event(channel)

    def exit_code(self) -> int | None:
        """The exit code the protocol reported, or None to read the channel's exit status."""
        return None

    def retry(self, *, began: bool, connected: bool) -> Strategy | None:
        """The strategy to run the command with again when the channel ended without an exit
        code from :meth:`exit_code`, or None: the command may run once only."""
        return None

    def failure(self, code: int, *, began: bool, connected: bool) -> DapError | None:
        """The error that a channel ending with exit status ``code`` means for this
        strategy, or None to judge it as the one-shot launcher's status."""
        return None

    def release(self, *, clean: bool) -> None:
        """Give the channel back; ``clean``: the command ended with an exit code."""
        if self._session is not None:
            session, self._session = self._session, None
            session.__exit__(None, None, None)


class OneShot(Strategy):
    """The command gets a channel of its own running the one-shot launcher
    (``sh/boot.sh``), with stdin streamed in frames; the SSH exit status is its exit code."""

    def open(self) -> tuple[Any, Any]:
        self._session = self.process.helpers.connections.session(self.process.config)
        return self._session.__enter__()

    def launch(self, channel: Any) -> bytes:
        process = self.process
        channel.exec_command(launcher.launch_command(process.config))
        try:
            process.send(launcher.command_frame(process.command))
            if not self.streams_stdin:
                process.send(launcher.EOF_FRAME)
        except OSError as exc:
            # The exec ended before reading its command (incus missing, VM gone): wait()
            # reports that hop from the exit status and stderr.
            log.debug("command not sent, channel closed: %s", exc)
        return launcher.STARTED

    @property
    def streams_stdin(self) -> bool:  # type: ignore[override]
        return self.process.in_stream is not None


class OnHelper(Strategy):
    """The command and its whole stdin go as one request to a reusable helper
    (``sh/helper.sh``) on an idle channel, or on a new one; end markers carry the exit code."""

    def __init__(self, process: RemoteProcess, stdin: bytes, *, idle: bool) -> None:
        super().__init__(process)
        self.stdin = stdin
        self.idle = idle
        self.lease: Any = None
        self.ends: tuple[MarkerScanner, MarkerScanner] | None = None
        self.ended = threading.Event()  # both output pumps are past the end markers
        self._launched = 0.0

    def open(self) -> tuple[Any, Any]:
        self._session = self.process.helpers.lease(self.process.config, idle=self.idle)
        self.lease = self._session.__enter__()
        self.fresh = self.lease.fresh
        return self.lease.link, self.lease.channel

    def launch(self, channel: Any) -> bytes:
        process = self.process
        prefix = b""
        if self.fresh:
            self._launched = time.monotonic()
            channel.exec_command(launcher.launch_command(process.config, helper=True))
            prefix = launcher.STARTED
        nonce = secrets.token_hex(8)
        out, err = launcher.end_markers(nonce)
        self.ends = (MarkerScanner(out, process.write_stdout), MarkerScanner(err, process.write_stderr))
        try:
            process.send(launcher.request_frame(process.command, self.stdin, nonce))
        except OSError as exc:
            log.debug("request not sent, channel closed: %s", exc)
        return prefix + launcher.begin_marker(nonce)

    def started(self) -> None:
        if self.fresh:
            self.lease.started(time.monotonic() - self._launched)

    def stdout(self, data: bytes) -> bool:
        return self.ends[0].feed(data) and b"\n" in self.ends[0].after

    def stderr(self, data: bytes) -> bool:
        return self.ends[1].feed(data)

    def outputs_ended(self) -> None:
        self.ended.set()

    def done(self, channel: Any) -> threading.Event:
        return self.ended

    def exit_code(self) -> int | None:
        out, err = self.ends
        if err.after is not None and b"\n" in (out.after or b""):
            return int(out.after.split(b"\n", 1)[0])
        return None

    def retry(self, *, began: bool, connected: bool) -> Strategy | None:
        # An idle helper that died before beginning the command (the VM restarted, its exec
        # client was killed) never ran it: a new helper may.
        if self.fresh or began or not connected:
            return None
        return OnHelper(self.process, self.stdin, idle=False)

    def failure(self, code: int, *, began: bool, connected: bool) -> DapError | None:
        if not (connected and began):
            return None
        return RunnerError(
            f"the dapfab helper in VM {self.process.config.vm_name} ended during the command "
            f"({f'exit {code}' if code >= 0 else 'killed'})",
            hint="something on the management host or in the VM killed it; run the command again",
        )

    def release(self, *, clean: bool) -> None:
        if self.lease is not None:
            self.lease.keep = clean
        super().release(clean=clean)


class RemoteProcess:
    """One command running in the VM; the building block of every call.

    The command runs either on the one-shot launcher (:class:`OneShot`) or, with
    ``reuse`` and a stdin known up front, on a reusable helper (:class:`OnHelper`); both
    share the output pumps, the heartbeat and the error reporting here. Helpers and
    connections come from ``helpers`` (the process-wide :data:`~dapfab.helpers.HELPERS` on
    :data:`~dapfab.connection.POOL` by default).

    Use as a context manager: on exit, however it exits, the remote process tree is killed
    (if still running) and gone before ``__exit__`` returns.
    """

    def __init__(
        self,
        config: RunnerConfig,
        command: str,
        *,
        on_stdout: Sink,
        on_stderr: Sink,
        in_stream: Any = None,
        reuse: bool = False,
        helpers: HelperPool | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.abort = abort  # set by another thread: wait() stops the command, raises Interrupted
        self.command = command
        self.helpers = helpers if helpers is not None else HELPERS
        self.sinks = (on_stdout, on_stderr)
        self.write_stdout = self._guarded(on_stdout, "stdout")
        self.write_stderr = self._guarded(on_stderr, "stderr")
        # The first failed write to our own stdout/stderr (a reader that left): from then on
        # output is drained and dropped, and wait() stops the command and raises.
        self.output_error: DapError | None = None
        self.in_stream = in_stream
        self._send_lock = threading.Lock()
        self._pumps_lock = threading.Lock()
        self._reading = threading.Event()  # cleared while paused (see pause())
        self._reading.set()
        helper_stdin = self._helper_stdin() if reuse else None
        self.strategy: Strategy = (
            OneShot(self) if helper_stdin is None else OnHelper(self, helper_stdin, idle=True)
        )
        self.link: Any = None
        self.channel: Any = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        """Reset what one launch of the command tracks."""
        self.started = threading.Event()  # the expected prefix has arrived on stdout
        self.finished = False
        self.clean = False  # the command ended with an exit code (a helper may be reused)
        self._prefix = launcher.STARTED
        self._early_stderr = bytearray()
        self._stderr_tail = bytearray()
        self._stderr_at_line_start = True
        self._threads: list[threading.Thread] = []
        self._pumps_running = 2

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> RemoteProcess:
        """Take a channel, start the launcher or helper there and send it the command."""
        self.link, self.channel = self.strategy.open()
        try:
            self._prefix = self.strategy.launch(self.channel)
            pumps = [self._pump_stdout, self._pump_stderr]
            if self.strategy.streams_stdin:
                pumps.append(self._pump_stdin)
            for target in pumps:
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)
            _heartbeats().add(self)
        except BaseException:
            self._release()
            raise
        return self

    def _helper_stdin(self) -> bytes | None:
        """The command's whole stdin if it can go to a helper with the command, else None.

        A helper takes no stream of unknown length: that would tie its frame reader to the
        command's reading (see :data:`launcher.HELPER_STDIN_MAX`).
        """
        if self.in_stream is None:
            return b""
        if isinstance(self.in_stream, io.BytesIO):
            view = self.in_stream.getbuffer()
            position = self.in_stream.tell()
            if len(view) - position <= launcher.HELPER_STDIN_MAX:
                data = bytes(view[position:])
                del view
                self.in_stream.seek(0, io.SEEK_END)
                return data
        return None

    def __enter__(self) -> RemoteProcess:
        return self.start() if self.channel is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        """Send frames to the remote side (one sender at a time)."""
        # A memoryview: paramiko's sendall slices what is left after every 32 KiB packet,
        # which copies a 1 MiB frame 32 times over; slicing a view copies nothing.
        with self._send_lock:
            self.channel.sendall(memoryview(data))

    def ended(self) -> bool:
        """Whether the remote command has finished or its connection broke (or it never
        started)."""
        channel = self.channel
        if channel is None:
            return True
        return compat.exit_status_event(channel).is_set() or channel.closed or not self.connected

    def exit_event(self) -> threading.Event:
        """Set when the channel reported its exit status."""
        return compat.exit_status_event(self.channel)

    def broken(self) -> bool:
        """Whether the channel closed or its connection dropped."""
        return self.channel.closed or not self.connected

    def heartbeat(self) -> None:
        """Tell the launcher the caller is alive, unless the channel is busy with data."""
        if self.finished or not self._send_lock.acquire(blocking=False):
            return
        try:
            if self.channel.send_ready():
                self.channel.sendall(launcher.HEARTBEAT_FRAME)
        except Exception:  # the channel is going away; the reader notices
            pass
        finally:
            self._send_lock.release()

    # -- output ------------------------------------------------------------------------
    def _guarded(self, sink: Sink, name: str) -> Sink:
        """``sink`` that records a failed write instead of killing the pump thread."""

        def write(data: bytes) -> None:
            if self.output_error is not None:
                return
            try:
                sink(data)
            except OSError as exc:
                self.output_error = _output_error(name, exc)

        return write

    def _check_output(self, *, running: bool) -> None:
        """Raise the recorded output error. While the command is ``running``, also notice a
        reader that left before our next write (`logs -f | grep -m1` ends when grep does,
        not at the next log line)."""
        if running and self.output_error is None:
            for sink, name in zip(self.sinks, ("stdout", "stderr"), strict=True):
                if reader_gone(sink):
                    self.output_error = _output_error(name, BrokenPipeError(errno.EPIPE, "Broken pipe"))
                    break
        if self.output_error is not None:
            raise self.output_error

    # -- pumps -------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop reading the command's output: the SSH window fills and the command blocks
        on its next write (Ctrl-Z of a keeper's client). Heartbeats go on."""
        self._reading.clear()

    def resume(self) -> None:
        """Read the command's output again after :meth:`pause`."""
        self._reading.set()

    def _pump_stdout(self) -> None:
        head = b""
        while True:
            self._reading.wait()
            data = self.channel.recv(READ_SIZE)
            if not data:
                break
            if len(data) < SMALL_REPLY:
                self.link.nudge()
            if not self.started.is_set():
                head += data
                if len(head) < len(self._prefix):
                    continue
                self.started.set()
                self.strategy.started()
                # A launcher that printed something else cannot happen; pass it all on then.
                cut = len(self._prefix) if head.startswith(self._prefix) else 0
                data, head = head[cut:], b""
                if not data:
                    continue
            if self.strategy.stdout(data):
                break
        self._pump_done()

    def _pump_stderr(self) -> None:
        while True:
            self._reading.wait()
            data = self.channel.recv_stderr(READ_SIZE)
            if not data:
                break
            if len(data) < SMALL_REPLY:
                self.link.nudge()
            if not self.started.is_set():
                # Until the launcher has started, stderr may be the runner hop's own error.
                self._early_stderr += data
                if not self.started.wait(0.05):
                    continue
                data, self._early_stderr = bytes(self._early_stderr), bytearray()
            if self.strategy.stderr(data):
                break
        self._pump_done()

    def _pump_done(self) -> None:
        """Called by each output pump as it ends: at the end marker or at channel EOF."""
        with self._pumps_lock:
            self._pumps_running -= 1
            if not self._pumps_running:
                self.strategy.outputs_ended()

    def emit_stderr(self, data: bytes) -> None:
        """Pass the command's stderr on, holding back a last line that may be the exec
        server's own error for exit 126/127 (see :data:`EXIT_ERROR_LINES`)."""
        data = bytes(self._stderr_tail) + data
        cut = data.rfind(b"\n", 0, len(data) - 1) + 1
        if cut == 0 and not self._stderr_at_line_start:
            cut = len(data)
        last = data[cut:]
        if any(line.startswith(last) for line in EXIT_ERROR_LINES.values()):
            self._stderr_tail, data = bytearray(last), data[:cut]
        else:
            self._stderr_tail = bytearray()
        if data:
            self._stderr_at_line_start = data.endswith(b"\n")
            self.write_stderr(data)

    def _finish_stderr(self, code: int) -> None:
        """Drop the exec server's error line that follows exit 126/127; flush anything else."""
        tail, self._stderr_tail = bytes(self._stderr_tail), bytearray()
        if tail and tail != EXIT_ERROR_LINES.get(code):
            self.write_stderr(tail)

    def _pump_stdin(self) -> None:
        try:
            while True:
                chunk = read_chunk(self.in_stream)
                if not chunk:
                    break
                self.send(launcher.data_frame(chunk))
            self.send(launcher.EOF_FRAME)
        except Exception as exc:  # channel closed under us: the command is ending anyway
            log.debug("stdin pump stopped: %s", exc)

    # -- completion --------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command; its exit code, or a DapError for a broken hop. A strategy
        may run the command once more when it surely never began (:meth:`Strategy.retry`)."""
        while True:
            self._wait_for(self.strategy.done(self.channel), timeout)
            for thread in self._threads[:2]:
                thread.join(30.0)  # EOF follows the exit status; the marker may still be queued
            self._check_output(running=False)
            code = self.strategy.exit_code()
            if code is not None:
                self.finished = self.clean = True
                return code
            code = self.channel.recv_exit_status()  # -1: none came (a signal, a dead hop)
            again = self.strategy.retry(began=self.started.is_set(), connected=self.connected)
            if again is None:
                return self._channel_outcome(code)
            log.debug("idle helper gone (exit %s); starting a new one", code)
            self._start_over(again)

    def _start_over(self, strategy: Strategy) -> None:
        """Give the channel back and run the command again with ``strategy``."""
        self._release()
        self.strategy = strategy
        self._new_attempt()
        self.start()

    @property
    def connected(self) -> bool:
        """Whether the connection the command runs on is up."""
        return self.link is not None and self.link.transport.is_active()

    def _channel_outcome(self, code: int) -> int:
        """The exit code from the channel's exit status ``code``, or the hop that broke."""
        began = self.started.is_set()
        failure = self.strategy.failure(code, began=began, connected=self.connected)
        if failure is not None:
            raise failure
        if code == -1:
            # No exit-status ever came: the channel closed because a hop died under it.
            raise self.link.lost_error()
        if not began:
            cfg = self.config
            raise runner_failure(code, bytes(self._early_stderr), incus=cfg.incus, vm_name=cfg.vm_name)
        if self._early_stderr:
            self.emit_stderr(bytes(self._early_stderr))
            self._early_stderr.clear()
        self._finish_stderr(code)
        self.finished = True
        return code

    def _wait_for(self, event: threading.Event, timeout: float | None) -> None:
        """Wait for ``event``; DapError when the connection breaks or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Poll fast at first and nudge the far side (see Link.nudge): short commands then
        # finish in a few ms instead of waiting out a delayed ACK on the gateway.
        interval = 0.002
        while not event.wait(interval):
            if interval < 0.05:
                self.link.nudge()
            interval = min(interval * 2, 0.1)
            self._check_output(running=True)
            if not self.connected or (
                self.channel.closed and not self.channel.exit_status_ready()
            ):
                raise self.link.lost_error()
            if self.abort is not None and self.abort.is_set():
                raise stopped_with_others()
            if deadline is not None and time.monotonic() > deadline:
                raise command_timed_out(timeout)

    def stop(self) -> None:
        """Kill the remote process tree and wait (bounded) until the launcher has exited."""
        self._reading.set()
        if self.finished or self.channel is None or self.channel.closed:
            return
        try:
            with self._send_lock:
                self.channel.sendall(launcher.QUIT_FRAME)
            compat.exit_status_event(self.channel).wait(QUIT_GRACE)
        except Exception as exc:
            log.debug("stop: %s", exc)

    def close(self) -> None:
        """Stop the command if it still runs and give the channel back."""
        try:
            self.stop()
        finally:
            self._release()

    def _release(self) -> None:
        self.finished = True
        hb = _HEARTBEATS
        if hb is not None:
            hb.discard(self)
        self.strategy.release(clean=self.clean)


def _output_error(name: str, exc: OSError) -> DapError:
    """The error for a failed write to our own ``name`` stream."""
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return OutputClosed(f"{name} was closed by its reader; stopped the remote command")
    return DapError(
        f"cannot write {name}: {exc.strerror or exc}; stopped the remote command",
        hop="laptop",
        hint=f"check where {name} goes (disk full, a closed file)",
    )


