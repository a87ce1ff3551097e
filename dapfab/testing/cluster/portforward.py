"""The pod port-forward protocol (``portforward.k8s.io`` over SPDY/3.1), server side.

kubectl opens, for every local connection, an *error* stream and then a *data* stream,
both with headers ``streamtype``, ``port`` and ``requestid``. We answer each SYN_STREAM
with a SYN_REPLY; for a data stream we first dial the pod's port (kubectl sends data as
soon as it sees the reply). Bytes are copied both ways; when the pod closes, the data
stream gets a FIN and the error stream is closed (empty = success). A failed dial or a
reset pod connection is reported as a message on the error stream, as the kubelet does
(kubectl then prints it and ends the whole forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import spdy

READ_SIZE = 1 << 18
POD_WRITE_HIGH_WATER = 8 << 20

Dialer = Callable[[int], tuple[str, int]]


@dataclass
class _Pair:
    """The two streams of one forwarded connection (one ``requestid``)."""

    request_id: str
    port: int
    error_id: int = 0
    data_id: int = 0
    pod_writer: asyncio.StreamWriter | None = None
    pump: asyncio.Task[None] | None = None
    error_closed: bool = False
    data_closed: bool = False  # we sent FIN or saw RST on the data stream
    done: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class PortForwardSession:
    """One upgraded connection from kubectl. ``target(port)`` gives the (host, port) to dial."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 target: Dialer, log: Callable[[str], None] = lambda _m: None) -> None:
        self.reader, self.writer = reader, writer
        self.target, self.log = target, log
        self.codec = spdy.HeaderCodec()
        self.pairs: dict[str, _Pair] = {}
        self.by_stream: dict[int, _Pair] = {}
        self.bytes_in = self.bytes_out = 0

    # --- sending ---------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    def _fin(self, stream_id: int, data: bytes = b"") -> None:
        self._send(spdy.data_frame(stream_id, data, fin=True))

    # --- the frame loop --------------------------------------------------------------

    async def run(self) -> None:
        """Serve until kubectl goes away; then close every pod connection."""
        try:
            while True:
                try:
                    head = await self.reader.readexactly(8)
                    _c, _k, _f, length = spdy.parse_header(head)
                    payload = await self.reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    return
                frame = spdy.decode(self.codec, head, payload)
                if frame.kind == 0:
                    await self._on_data(frame)
                elif frame.kind == spdy.SYN_STREAM:
                    self._on_syn(frame)
                elif frame.kind == spdy.RST_STREAM:
                    self._on_reset(frame.stream_id)
                elif frame.kind == spdy.PING:
                    self._send(spdy.ping(frame.status))
                elif frame.kind == spdy.GOAWAY:
                    return
                # SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do (spdystream has no flow control)
        except spdy.ProtocolError as exc:
            self.log(f"portforward: protocol error: {exc}")
            self._send(spdy.goaway(0, 1))
        finally:
            for pair in list(self.pairs.values()):
                self._finish(pair, notify=False)
            with contextlib.suppress(Exception):
                self.writer.close()

    def _on_syn(self, frame: spdy.Frame) -> None:
        kind, request_id = frame.header("streamtype"), frame.header("requestid")
        try:
            port = int(frame.header("port"))
        except ValueError:
            self._send(spdy.rst_stream(frame.stream_id, spdy.RST_PROTOCOL_ERROR))
            return
        if kind not in ("error", "data"):
            self._send(spdy.rst_stream(frame.stream_id, spdy.RST_PROTOCOL_ERROR))
            return
        pair = self.pairs.setdefault(request_id, _Pair(request_id, port))
        self.by_stream[frame.stream_id] = pair
        if kind == "error":
            pair.error_id = frame.stream_id
            self._send(spdy.syn_reply(self.codec, frame.stream_id, {}))
        else:
            pair.data_id = frame.stream_id
            pair.tasks.append(asyncio.create_task(self._open(pair)))

    async def _open(self, pair: _Pair) -> None:
        host, port = "pod", pair.port
        try:
            host, port = self.target(pair.port)
            reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE * 2)
        except OSError as exc:
            reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
            self._send(spdy.syn_reply(self.codec, pair.data_id, {}))
            self.log(f"portforward: dial {host}:{port}: {reason}")
            self._fail(pair, f"error forwarding port {pair.port} to pod: dial tcp {host}:{port}: "
                             f"connect: {reason}")
            return
        if pair.done:
            writer.close()
            return
        pair.pod_writer = writer
        self._send(spdy.syn_reply(self.codec, pair.data_id, {}))
        pair.pump = asyncio.create_task(self._pump(pair, reader))

    async def _pump(self, pair: _Pair, reader: asyncio.StreamReader) -> None:
        """Copy pod -> kubectl until the pod closes its side."""
        try:
            while data := await reader.read(READ_SIZE):
                if pair.data_closed:
                    return
                self.bytes_out += len(data)
                self._send(spdy.data_frame(pair.data_id, data))
                await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._fail(pair, f"error forwarding port {pair.port} to pod: read: {exc}")
            return
        if not pair.data_closed:
            pair.data_closed = True
            self._fin(pair.data_id)
        self._finish(pair)

    async def _on_data(self, frame: spdy.Frame) -> None:
        pair = self.by_stream.get(frame.stream_id)
        if pair is None or frame.stream_id != pair.data_id:
            return  # the client's FIN on the error stream, or a stream already gone
        w = pair.pod_writer
        if w is None or w.is_closing():
            return
        try:
            if frame.data:
                self.bytes_in += len(frame.data)
                w.write(frame.data)
                if w.transport.get_write_buffer_size() > POD_WRITE_HIGH_WATER:
                    await w.drain()
            if frame.fin and w.can_write_eof():
                w.write_eof()
        except (ConnectionError, OSError) as exc:
            self._fail(pair, f"error forwarding port {pair.port} to pod: write: {exc}")

    def _on_reset(self, stream_id: int) -> None:
        pair = self.by_stream.get(stream_id)
        if pair is None:
            return
        if stream_id == pair.data_id:
            pair.data_closed = True
            self._finish(pair)
        elif stream_id == pair.error_id:
            pair.error_closed = True

    def _fail(self, pair: _Pair, message: str) -> None:
        """Report ``message`` on the error stream and end the pair."""
        if pair.error_id and not pair.error_closed:
            pair.error_closed = True
            self._fin(pair.error_id, message.encode())
        if not pair.data_closed and pair.data_id:
            pair.data_closed = True
            self._fin(pair.data_id)
        self._finish(pair)

    def _finish(self, pair: _Pair, notify: bool = True) -> None:
        """Close the pod connection and (if still open) the error stream: success."""
        if pair.done:
            return
        pair.done = True
        if notify and pair.error_id and not pair.error_closed:
            pair.error_closed = True
            self._fin(pair.error_id)
        if pair.pod_writer is not None:
            pair.pod_writer.close()
        if pair.pump is not None and pair.pump is not asyncio.current_task():
            pair.pump.cancel()
        self.pairs.pop(pair.request_id, None)
        self.by_stream.pop(pair.error_id, None)
        self.by_stream.pop(pair.data_id, None)
