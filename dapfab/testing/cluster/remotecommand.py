"""``exec`` and ``attach`` as kubectl 1.32 speaks them, server side.

kubectl first asks for a WebSocket (``v5.channel.k8s.io``): every message is one channel
byte and data; 0 stdin, 1 stdout, 2 stderr, 3 error (a ``metav1.Status`` in JSON when the
command ends), 4 resize (``{"Width": W, "Height": H}``), and 255 closes a channel
(``[255, 0]``: stdin reached its end). The Python ``kubernetes`` client asks for
``v4.channel.k8s.io`` (before 32.0 only for it): the same channels without 255. If the
upgrade is refused kubectl falls back to SPDY/3.1
(``v4.channel.k8s.io``): one SPDY stream per channel, named by its ``streamtype`` header,
stdin's end a FIN, the status written on the error stream. With ``tty=true`` the command
gets a real pty (stdout only; resize events change its window size).

The command of ``exec`` runs as a process of the cluster host in its own session; attach
streams the pod's log from now on (stdin is read and dropped). When the client goes away,
the command is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import spdy, websocket

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
WS_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # kubectl 1.32; the Python client
SPDY_PROTOCOL = "v4.channel.k8s.io"
READ_SIZE = 1 << 16
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STREAM_WAIT = 30.0
FIRST_RESIZE_WAIT = 2.0


def status(code: int, argv: list[str]) -> dict[str, Any]:
    """The ``metav1.Status`` a kubelet reports on the error channel for exit ``code``."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"{argv}, exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


class Channels:
    """What a command sees of its client, whatever the transport: stdin chunks (None at
    the end), resize events, and ``send`` for stdout/stderr."""

    def __init__(self) -> None:
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self.gone = asyncio.Event()  # the client left: stop the command

    def resize(self, data: bytes) -> None:
        for line in data.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                size = json.loads(line)
                self.resizes.put_nowait((int(size["Width"]), int(size["Height"])))

    def left(self) -> None:
        self.stdin.put_nowait(None)
        self.gone.set()

    def send(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def finish(self, result: dict[str, Any]) -> None:
        raise NotImplementedError


# -- WebSocket --------------------------------------------------------------------------------

class WebSocketChannels(Channels):
    """The v5 channel protocol over one WebSocket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    async def read_loop(self) -> None:
        try:
            while (payload := await websocket.read_message(self.reader, self.writer)) is not None:
                if not payload:
                    continue
                channel, data = payload[0], payload[1:]
                if channel == STDIN:
                    self.stdin.put_nowait(data)
                elif channel == RESIZE:
                    self.resize(data)
                elif channel == CLOSE and data[:1] == bytes([STDIN]):
                    self.stdin.put_nowait(None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self.left()

    def send_raw(self, opcode: int, payload: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(websocket.frame(opcode, payload))

    def send(self, channel: int, data: bytes) -> None:
        self.send_raw(0x2, bytes([channel]) + data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def finish(self, result: dict[str, Any]) -> None:
        self.send(ERROR, json.dumps(result).encode())
        self.send_raw(0x8, struct.pack(">H", 1000))
        await self.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), 5)


# -- SPDY -------------------------------------------------------------------------------------

class SpdyChannels(Channels):
    """The v4 channel protocol over SPDY/3.1: one stream per channel."""

    NAMES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 expected: set[str]) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer
        self.codec = spdy.HeaderCodec()
        self.expected = expected
        self.streams: dict[int, int] = {}  # channel -> stream id
        self.ready = asyncio.Event()

    async def read_loop(self) -> None:
        by_id: dict[int, int] = {}
        try:
            while True:
                head = await self.reader.readexactly(8)
                length = spdy.parse_header(head)[3]
                payload = await self.reader.readexactly(length) if length else b""
                frame = spdy.decode(self.codec, head, payload)
                if frame.kind == spdy.SYN_STREAM:
                    channel = self.NAMES.get(frame.header("streamtype"))
                    if channel is None:
                        self._send(spdy.rst_stream(frame.stream_id, spdy.RST_PROTOCOL_ERROR))
                        continue
                    by_id[frame.stream_id] = channel
                    self.streams[channel] = frame.stream_id
                    self._send(spdy.syn_reply(self.codec, frame.stream_id, {}))
                    if {k for k, v in self.NAMES.items() if v in self.streams} >= self.expected:
                        self.ready.set()
                elif frame.kind == 0:
                    channel = by_id.get(frame.stream_id)
                    if channel == STDIN:
                        if frame.data:
                            self.stdin.put_nowait(frame.data)
                        if frame.fin:
                            self.stdin.put_nowait(None)
                    elif channel == RESIZE and frame.data:
                        self.resize(frame.data)
                elif frame.kind == spdy.RST_STREAM and by_id.get(frame.stream_id) == STDIN:
                    self.stdin.put_nowait(None)
                elif frame.kind == spdy.PING:
                    self._send(spdy.ping(frame.status))
                elif frame.kind == spdy.GOAWAY:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError, spdy.ProtocolError):
            pass
        self.left()

    def _send(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    def send(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is None:
            return
        for start in range(0, len(data), spdy.MAX_FRAME_LENGTH):
            self._send(spdy.data_frame(stream, data[start:start + spdy.MAX_FRAME_LENGTH]))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def finish(self, result: dict[str, Any]) -> None:
        for channel in (STDOUT, STDERR):
            if channel in self.streams:
                self._send(spdy.data_frame(self.streams[channel], b"", fin=True))
        if ERROR in self.streams:
            error = b"" if result.get("status") == "Success" else json.dumps(result).encode()
            self._send(spdy.data_frame(self.streams[ERROR], error, fin=True))
        await self.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), 5)


# -- running a command ------------------------------------------------------------------------

async def _feed(io: Channels, write: Callable[[bytes], Awaitable[None] | None],
                close: Callable[[], None]) -> None:
    """Copy stdin chunks from the client to the command until their end."""
    while (data := await io.stdin.get()) is not None:
        with contextlib.suppress(ConnectionError, OSError):
            result = write(data)
            if result is not None:
                await result
    with contextlib.suppress(ConnectionError, OSError):
        close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _exit_code(io: Channels, pid: int, exited: Awaitable[int]) -> int:
    """The exit code of the command ``pid`` leads (128+N when killed by signal N), killed
    when the client leaves first; whatever it left in its session is killed too."""
    waiter = asyncio.ensure_future(exited)
    gone = asyncio.create_task(io.gone.wait())
    await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not waiter.done():
        _kill(pid)
    code = await waiter
    _kill(pid)
    return 128 - code if code < 0 else code


async def run_pipes(io: Channels, argv: list[str], stdin: bool, stderr: bool, cwd: str) -> int:
    """``argv`` with pipes; its exit code (128+N when killed by signal N)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
            cwd=cwd, env={"PATH": ENV_PATH, "HOME": "/root"}, start_new_session=True)
    except OSError as exc:
        io.send(STDERR, f"exec: {argv[0]!r}: {exc.strerror}\n".encode())
        return 127

    async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
        while stream is not None and (data := await stream.read(READ_SIZE)):
            io.send(channel, data)
            await io.drain()

    tasks = [asyncio.create_task(pump(proc.stdout, STDOUT)),
             asyncio.create_task(pump(proc.stderr, STDERR))]
    if stdin and proc.stdin is not None:
        pipe = proc.stdin

        async def write(data: bytes) -> None:
            pipe.write(data)
            await pipe.drain()

        tasks.append(asyncio.create_task(_feed(io, write, pipe.close)))
    code = await _exit_code(io, proc.pid, proc.wait())
    await asyncio.gather(*tasks[:2], return_exceptions=True)
    for task in tasks[2:]:
        task.cancel()
    return code


def _controlling_tty() -> None:  # in the child: its own session, the pty as its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def run_pty(io: Channels, argv: list[str], cwd: str) -> int:
    """``argv`` on a new pty (stdout only, as with a tty every stream is one)."""
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    with contextlib.suppress(TimeoutError):  # kubectl sends the size as soon as it is connected
        width, height = await asyncio.wait_for(io.resizes.get(), FIRST_RESIZE_WAIT)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                env={"PATH": ENV_PATH, "HOME": "/root", "TERM": "xterm"},
                                start_new_session=True, preexec_fn=_controlling_tty)
    except OSError as exc:
        os.close(master)
        io.send(STDOUT, f"exec: {argv[0]!r}: {exc.strerror}\r\n".encode())
        return 127
    finally:
        os.close(slave)
    output_done = asyncio.Event()

    def readable() -> None:
        try:
            data = os.read(master, READ_SIZE)
        except OSError:
            data = b""
        if data:
            io.send(STDOUT, data)
        else:
            loop.remove_reader(master)
            output_done.set()

    loop.add_reader(master, readable)

    async def resize() -> None:
        while True:
            width, height = await io.resizes.get()
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    feeder = asyncio.create_task(_feed(io, lambda data: os.write(master, data), lambda: None))
    resizer = asyncio.create_task(resize())
    code = await _exit_code(io, proc.pid, asyncio.to_thread(proc.wait))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(output_done.wait(), 2)
    loop.remove_reader(master)
    os.close(master)
    for task in (feeder, resizer):
        task.cancel()
    return code


async def follow(io: Channels, log_path: Path | None, line: Callable[[str], str]) -> int:
    """attach: the pod's output from now on (each log line through ``line``, which drops the
    log's timestamp), until the client leaves; stdin dropped."""

    async def drop() -> None:
        while await io.stdin.get() is not None:
            pass

    dropper = asyncio.create_task(drop())
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "rb")) if log_path and log_path.exists() else None
        if log is not None:
            log.seek(0, 2)
        pending = b""
        while not io.gone.is_set():
            data = log.read(READ_SIZE) if log is not None else b""
            if data:
                *lines, pending = (pending + data).split(b"\n")
                text = "".join(line(x.decode(errors="replace") + "\n") for x in lines)
                io.send(STDOUT, text.encode())
                await io.drain()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(io.gone.wait(), 0.2)
    dropper.cancel()
    return 0


def expected_streams(query: dict[str, str]) -> set[str]:
    """The SPDY streams kubectl opens for these ``stdin``/``stdout``/``stderr``/``tty`` flags."""
    tty = query.get("tty") == "true"
    wanted = {"error"}
    wanted |= {"stdin"} if query.get("stdin") == "true" else set()
    wanted |= {"stdout"} if query.get("stdout") == "true" else set()
    wanted |= {"stderr"} if query.get("stderr") == "true" and not tty else set()
    wanted |= {"resize"} if tty else set()
    return wanted
