"""The API proxy's gate on the laptop (docs/design.md §14): every HTTP request a local tool
sends through ``k8s.proxy``'s laptop port must carry the proxy's bearer token and a
loopback ``Host``; the token is taken out before the request goes on to the runner.

The gate reads the client's side of one connection as HTTP/1.1 (request head, then a body
of ``Content-Length`` bytes or chunks) and passes the bytes on unchanged but for the
``Authorization`` line of each head. After a request that asks for an upgrade (exec,
attach and port-forward over WebSocket or SPDY) the rest of the connection is that
protocol's and passes untouched. Anything it cannot frame exactly (a folded header line,
two lengths, a transfer coding other than ``chunked``) is refused rather than guessed at,
so the runner never reads a request the gate did not check.
"""

from __future__ import annotations

import hmac
import re

HEAD_MAX = 64 << 10  # bytes of one request head
LINE_MAX = 4096  # bytes of one chunk-size line
LOOPBACK_HOST = re.compile(rb"(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")


class Refused(Exception):
    """A request the gate does not pass on: ``status`` and a reason for the client."""

    REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
               431: "Request Header Fields Too Large", 501: "Not Implemented"}

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> bytes:
        """The HTTP answer that ends the connection."""
        body = f"dapfab k8s.proxy: {self.reason}\n".encode()
        extra = b"WWW-Authenticate: Bearer\r\n" if self.status == 401 else b""
        return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n%s\r\n%s"
                % (self.status, self.REASONS[self.status].encode(), len(body), extra, body))


def loopback_host(value: bytes) -> bool:
    """Whether a ``Host`` value names this machine's loopback (``localhost``, ``127.0.0.1``
    or ``[::1]``, with an optional port): a browser led here by DNS rebinding sends its
    own name (``evil.example:PORT``), and ``127.0.0.1.evil`` or ``xlocalhost`` are foreign."""
    return LOOPBACK_HOST.fullmatch(value) is not None


class RequestGate:
    """One connection's client side: :meth:`feed` it what the client sent, relay what it
    returns; it raises :class:`Refused` at the first request that fails a check."""

    def __init__(self, token: str) -> None:
        self._expected = b"Bearer " + token.encode("ascii")
        self._buffer = b""
        self._state = "head"  # head | body | chunk-size | chunk-data | chunk-end | trailer | raw
        self._left = 0  # bytes of the body or chunk still to pass
        self._upgrade = False
        self.requests = 0

    def feed(self, data: bytes) -> bytes:
        """The bytes to relay for ``data`` (possibly none yet: a head is still incomplete)."""
        if self._state == "raw":
            return data
        self._buffer += data
        out: list[bytes] = []
        while self._buffer:
            before = len(self._buffer)
            out.append(self._step())
            if self._state == "raw":
                out.append(self._buffer)
                self._buffer = b""
            elif len(self._buffer) == before and not out[-1]:
                break  # needs more bytes
        return b"".join(out)

    def _step(self) -> bytes:
        if self._state == "head":
            return self._head()
        if self._state in ("body", "chunk-data"):
            part, self._buffer = self._buffer[: self._left], self._buffer[self._left :]
            self._left -= len(part)
            if not self._left:
                self._state = "chunk-end" if self._state == "chunk-data" else self._after_body()
            return part
        line = self._line()
        if line is None:
            return b""
        if self._state == "chunk-size":
            size = line[:-2].split(b";", 1)[0].strip()
            if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                raise Refused(400, "a malformed chunk size")
            self._left = int(size, 16)
            self._state = "chunk-data" if self._left else "trailer"
        elif self._state == "chunk-end":
            if line != b"\r\n":
                raise Refused(400, "chunk data longer than its size")
            self._state = "chunk-size"
        elif line == b"\r\n":  # the end of the (empty) trailer section: the request is complete
            self._state = self._after_body()
        else:
            raise Refused(400, "a trailer field (no client of a kubeconfig sends one)")
        return line

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > LINE_MAX:
                raise Refused(400, "a chunk line too long")
            return None
        line, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
        return line

    def _after_body(self) -> str:
        return "raw" if self._upgrade else "head"

    def _head(self) -> bytes:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > HEAD_MAX:
                raise Refused(431, "a request head over 64 KiB")
            return b""
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        kept, length, chunked = self._check(head)
        self.requests += 1
        if chunked:
            self._state = "chunk-size"
        elif length:
            self._state, self._left = "body", length
        else:
            self._state = self._after_body()
        return b"\r\n".join(kept) + b"\r\n\r\n"

    def _check(self, head: bytes) -> tuple[list[bytes], int, bool]:
        """The head's lines without ``Authorization``, the body's length and whether it is
        chunked; Refused if the request is not one to pass on."""
        request, *lines = head.split(b"\r\n")
        words = request.split(b" ")
        if (len(words) != 3 or not _TOKEN.fullmatch(words[0]) or not words[1].startswith(b"/")
                or not _VERSION.fullmatch(words[2])
                or any(b"\r" in line or b"\n" in line for line in lines + [request])):
            raise Refused(400, "not an HTTP/1.1 request for a path on this server")
        fields: dict[bytes, list[bytes]] = {}
        kept = [request]
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise Refused(400, "a malformed header line")
            fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
            if name.lower() != b"authorization":
                kept.append(line)
        hosts = fields.get(b"host", [])
        if len(hosts) != 1 or not loopback_host(hosts[0]):
            raise Refused(403, "the Host header must name the loopback (localhost, 127.0.0.1, [::1])")
        auth = fields.get(b"authorization", [])
        if len(auth) != 1 or not hmac.compare_digest(_bearer(auth[0]), self._expected):
            raise Refused(401, "no valid token: use the kubeconfig k8s.proxy printed")
        lengths = fields.get(b"content-length", [])
        codings = fields.get(b"transfer-encoding", [])
        if codings and (lengths or len(codings) != 1 or codings[0].lower() != b"chunked"):
            raise Refused(501, "a transfer coding other than chunked alone")
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            raise Refused(400, "a malformed Content-Length")
        connection = b",".join(fields.get(b"connection", [])).lower()
        self._upgrade = bool(fields.get(b"upgrade")) and b"upgrade" in [
            word.strip() for word in connection.split(b",")]
        return kept, int(lengths[0]) if lengths else 0, bool(codings)


def _bearer(value: bytes) -> bytes:
    """``Bearer TOKEN`` with the scheme's case normalised (RFC 9110: case-insensitive)."""
    scheme, _, credentials = value.partition(b" ")
    return (b"Bearer " if scheme.lower() == b"bearer" else scheme + b" ") + credentials.strip()


__all__ = ["RequestGate", "Refused", "loopback_host"]
