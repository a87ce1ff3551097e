"""Messages between a call and its keeper over a Unix socket: a JSON header and an optional
binary payload, length-prefixed, with file descriptors passed alongside (SCM_RIGHTS), as
OpenSSH's mux passes a client's stdin/stdout/stderr (docs/design.md §12)."""

from __future__ import annotations

import array
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any

HEADER = struct.Struct("!II")  # JSON size, payload size
MAX_JSON = 1 << 20
MAX_PAYLOAD = 1 << 20
MAX_FDS = 3


class Closed(Exception):
    """The other side closed the socket (or sent garbage)."""


def send(sock: socket.socket, message: dict[str, Any], payload: bytes = b"", fds: list[int] = ()) -> None:  # type: ignore[assignment]
    """Send one message; ``fds`` travel with its first byte."""
    head = json.dumps(message, separators=(",", ":")).encode()
    data = HEADER.pack(len(head), len(payload)) + head + payload
    sent = 0
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([data], ancillary)
    if sent < len(data):  # an empty send to a peer that already answered and left is EPIPE
        sock.sendall(data[sent:])


class Reader:
    """Reads messages (and the descriptors that came with them) from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def fill(self) -> None:
        """Receive what the socket has (blocking until something); Closed at its end."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
        self.fds.extend(fds)
        if not data:
            raise Closed("end of stream")
        self.buffer += data

    def ready(self) -> tuple[dict[str, Any], bytes] | None:
        """The next complete message already received, or None."""
        if len(self.buffer) < HEADER.size:
            return None
        size, payload_size = HEADER.unpack_from(self.buffer)
        if size > MAX_JSON or payload_size > MAX_PAYLOAD:
            raise Closed("message too large")
        end = HEADER.size + size + payload_size
        if len(self.buffer) < end:
            return None
        head = self.buffer[HEADER.size : HEADER.size + size]
        payload = self.buffer[HEADER.size + size : end]
        self.buffer = self.buffer[end:]
        try:
            message = json.loads(head)
        except ValueError:
            raise Closed("not a message") from None
        if not isinstance(message, dict):
            raise Closed("not a message")
        return message, payload

    def next(self, timeout: float | None) -> tuple[dict[str, Any], bytes] | None:
        """The next message, or None after ``timeout`` seconds; Closed at end of stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self.ready()
            if message is not None:
                return message
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0 or not select.select([self.sock], [], [], left)[0]:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self.fill()

    def take_fds(self) -> list[int]:
        """The descriptors received so far (the caller now owns them)."""
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        """Close descriptors nobody took."""
        for fd in self.take_fds():
            os.close(fd)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED on Linux,
    LOCAL_PEERCRED on macOS and the BSDs; the latter path is not tested here)."""
    if hasattr(socket, "SO_PEERCRED"):
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return uid
    if sys.platform == "darwin" or "bsd" in sys.platform:  # pragma: no cover - not Linux
        local_peercred, sol_local = 0x001, 0
        raw = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I"))
        return struct.unpack_from("II", raw)[1]
    raise OSError("cannot tell the peer's uid on this platform")


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end (Linux only), or None."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid
