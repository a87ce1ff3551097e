"""SPDY/3.1 framing as kubectl's port-forward speaks it (pure codec, no I/O).

Only what a port-forward server needs: SYN_STREAM / SYN_REPLY / RST_STREAM / PING /
GOAWAY / WINDOW_UPDATE / SETTINGS control frames and DATA frames. Header blocks are
zlib-compressed with the SPDY/3 dictionary, one compression context per direction for the
whole connection, each block ended with ``Z_SYNC_FLUSH``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01

# RST_STREAM status codes
RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_CANCEL = 5
RST_INTERNAL_ERROR = 6

MAX_FRAME_LENGTH = 0xFFFFFF


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1)."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status"
    ).split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    prefix = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept "
        "Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,"
        "image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    return prefix + tail.encode()


DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3."""


@dataclass
class Frame:
    """One decoded frame. ``kind`` is a control type, or 0 for DATA."""

    kind: int
    flags: int
    stream_id: int = 0
    data: bytes = b""
    headers: dict[str, list[str]] = field(default_factory=dict)
    status: int = 0  # RST_STREAM / GOAWAY status, WINDOW_UPDATE delta, PING id

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)

    def header(self, name: str) -> str:
        """The first value of header ``name`` ('' if absent)."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""


class HeaderCodec:
    """Both zlib contexts of one connection: ``encode`` for frames we send, ``decode`` for theirs."""

    def __init__(self) -> None:
        self._compress = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                          zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._decompress = zlib.decompressobj(15, zdict=DICTIONARY)

    def encode(self, headers: dict[str, str]) -> bytes:
        parts = [struct.pack(">I", len(headers))]
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            parts += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        raw = b"".join(parts)
        return self._compress.compress(raw) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._decompress.decompress(block)
        except zlib.error as exc:
            raise ProtocolError(f"header block: {exc}") from None
        try:
            (count,) = struct.unpack_from(">I", raw, 0)
            pos = 4
            headers: dict[str, list[str]] = {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + n].decode("latin-1").lower()
                pos += 4 + n
                (n,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + n].decode("latin-1")
                pos += 4 + n
                headers.setdefault(name, []).extend(value.split("\x00"))
        except struct.error:
            raise ProtocolError("truncated header block") from None
        return headers


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    """Frame bytes for a control frame."""
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    """Frame bytes for one DATA frame (``data`` at most MAX_FRAME_LENGTH bytes)."""
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


def syn_reply(codec: HeaderCodec, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
    """A SYN_REPLY accepting ``stream_id``."""
    payload = struct.pack(">I", stream_id) + codec.encode(headers)
    return control_frame(SYN_REPLY, FLAG_FIN if fin else 0, payload)


def rst_stream(stream_id: int, status: int) -> bytes:
    """A RST_STREAM frame."""
    return control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    """A PING frame (used to answer the peer's PING with the same id)."""
    return control_frame(PING, 0, struct.pack(">I", ping_id))


def goaway(last_stream_id: int, status: int = 0) -> bytes:
    """A GOAWAY frame."""
    return control_frame(GOAWAY, 0, struct.pack(">II", last_stream_id, status))


def parse_header(head: bytes) -> tuple[bool, int, int, int]:
    """Split the 8-byte frame header: (is_control, type_or_stream_id, flags, length)."""
    first, second = struct.unpack(">II", head)
    flags, length = second >> 24, second & 0xFFFFFF
    if first & 0x80000000:
        version = (first >> 16) & 0x7FFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}")
        return True, first & 0xFFFF, flags, length
    return False, first & 0x7FFFFFFF, flags, length


def decode(codec: HeaderCodec, head: bytes, payload: bytes) -> Frame:
    """Decode one frame from its 8-byte header and its payload."""
    control, kind, flags, _length = parse_header(head)
    if not control:
        return Frame(0, flags, stream_id=kind, data=payload)
    if kind in (SYN_STREAM, SYN_REPLY, HEADERS):
        offset = 10 if kind == SYN_STREAM else 4
        if len(payload) < offset:
            raise ProtocolError("short control frame")
        (sid,) = struct.unpack_from(">I", payload, 0)
        return Frame(kind, flags, stream_id=sid & 0x7FFFFFFF,
                     headers=codec.decode(payload[offset:]))
    if kind in (RST_STREAM, WINDOW_UPDATE, GOAWAY):
        if len(payload) < 8:
            raise ProtocolError("short control frame")
        sid, status = struct.unpack_from(">II", payload, 0)
        return Frame(kind, flags, stream_id=sid & 0x7FFFFFFF, status=status & 0x7FFFFFFF)
    if kind == PING:
        if len(payload) < 4:
            raise ProtocolError("short PING")
        return Frame(kind, flags, status=struct.unpack_from(">I", payload, 0)[0])
    return Frame(kind, flags, data=payload)  # SETTINGS and unknown types: ignored


def encode_syn_stream(codec: HeaderCodec, stream_id: int, headers: dict[str, str],
                      fin: bool = False) -> bytes:
    """A SYN_STREAM frame (what a client sends; used by tests)."""
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + codec.encode(headers)
    return control_frame(SYN_STREAM, FLAG_FIN if fin else 0, payload)
