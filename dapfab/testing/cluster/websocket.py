"""The server side of RFC 6455 as the API server needs it: the handshake, frames, messages,
and a tunnel that carries a byte stream (SPDY) in binary messages.

kubectl 1.30+ asks for port-forward as ``SPDY/3.1+portforward.k8s.io`` over a WebSocket
(``PortForwardWebsockets``): the SPDY/3.1 session it would have spoken after an SPDY upgrade,
its bytes cut into binary messages in both directions. :class:`Tunnel` turns such a
WebSocket back into a reader and a writer, so the SPDY port-forward session runs unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BINARY, CLOSE, PING, PONG = 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def handshake(key: str, protocol: str) -> bytes:
    """The 101 answer that accepts subprotocol ``protocol``."""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n").encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    return head + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (one big-integer XOR: fast for big frames)."""
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


async def read_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """The next whole data message; pings answered, a close answered and None returned."""
    parts: list[bytes] = []
    while True:
        b0, b1 = await reader.readexactly(2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        data = await reader.readexactly(n)
        if mask:
            data = unmask(data, mask)
        if op == CLOSE:
            if not writer.is_closing():
                writer.write(frame(CLOSE, data[:2]))
            return None
        if op == PING:
            if not writer.is_closing():
                writer.write(frame(PONG, data))
            continue
        if op == PONG:
            continue
        parts.append(data)
        if b0 & 0x80:
            return b"".join(parts)


class TunnelWriter:
    """What a stream protocol writes, sent as binary messages (the subset of
    ``asyncio.StreamWriter`` the port-forward session uses)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.transport = writer.transport

    def write(self, data: bytes) -> None:
        if data and not self._writer.is_closing():
            self._writer.write(frame(BINARY, data))

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(frame(CLOSE, struct.pack(">H", 1000)))
            self._writer.close()


def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[
        asyncio.StreamReader, TunnelWriter, asyncio.Task[None]]:
    """(reader of the carried bytes, writer of carried bytes, the task that unwraps messages)."""
    inner = asyncio.StreamReader(limit=1 << 20)

    async def unwrap() -> None:
        try:
            while (message := await read_message(reader, writer)) is not None:
                inner.feed_data(message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        inner.feed_eof()

    return inner, TunnelWriter(writer), asyncio.create_task(unwrap())
