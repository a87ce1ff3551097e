"""The frames the laptop sends to the VM's programs and the markers they print back
(docs/design.md §9): the one table, with its encoder and an incremental decoder.

Frames (laptop to boot.sh/helper.sh) are one header line, ``<kind> <fields...>\\n``,
followed by as many bytes as the first field says (for the kinds that carry data). Markers
(VM to laptop) are ``\\0dapfab-<name> <fields...>\\n`` on stdout or stderr; a command's own
output can contain the same bytes, so a marker is trusted only where the protocol expects
it (a nonce or a position makes it unambiguous).
"""

from __future__ import annotations

from collections.abc import Callable

# kind -> what the frame means; the shell's `case` arms use the same letters.
FRAMES = {
    b"dapfab1": "the command: <n>, then n bytes of shell code (boot.sh, once, first)",
    b"d": "stdin data: <n>, then n bytes (boot.sh)",
    b"e": "end of the command's stdin (boot.sh)",
    b"h": "heartbeat: the caller is alive (boot.sh, helper.sh)",
    b"q": "the caller is done: kill everything now (boot.sh, helper.sh)",
    b"c": "a request: <n> <m> <nonce>, then n bytes of code and m bytes of stdin (helper.sh)",
}
# name -> which script prints it, and its fields.
MARKERS = {
    "started": ("boot.sh helper.sh", "stdout, first: the launcher runs"),
    "begin": ("helper.sh", "stdout: <nonce>, the command starts"),
    "end": ("helper.sh", "stdout: <nonce> <exit code>; stderr: <nonce>"),
    "listener": ("forward_report.sh", "stdout: <inode> of the forward's listening socket"),
    "curl": ("curl.sh", "stderr: <curl exit code>, then the header dump"),
    "socket": ("api_proxy.sh", "stdout: <path> of kubectl proxy's socket, each time it serves"),
    "files": ("files.sh", "stdout: <nonce>, then a tar of what `kubectl cp POD:PATH LOCAL` wrote"),
}
MARKER_START = b"\0dapfab-"
# Exit codes of the relay scripts (sh/relay.sh, sh/relay_unix.sh), given to them as arguments.
RELAY_REFUSED = 111  # nothing listens on the runner port or socket
RELAY_NOT_OURS = 112  # the runner port is held by a socket other than the forward's kubectl

Sink = Callable[[bytes], None]


def frame(kind: bytes, *fields: int | str, payload: bytes = b"") -> bytes:
    """One frame: the header line (``kind`` and ``fields``), then ``payload``."""
    if kind not in FRAMES:
        raise ValueError(f"unknown frame {kind!r}")
    words = [kind] + [str(field).encode() for field in fields]
    return b" ".join(words) + b"\n" + payload


def marker(name: str, *fields: str) -> bytes:
    """The bytes of marker ``name`` with ``fields`` up to, not including, its newline."""
    if name not in MARKERS:
        raise ValueError(f"unknown marker {name!r}")
    return MARKER_START + " ".join([name, *fields]).encode()


def last_marker(data: bytes, name: str) -> tuple[bytes, list[bytes], bytes] | None:
    """``(before, fields, after)`` around the last complete marker ``name`` in ``data``."""
    start = marker(name)
    at = data.rfind(start)
    while at >= 0:
        line, newline, after = data[at + len(start) :].partition(b"\n")
        if newline and (not line or line.startswith(b" ")):
            return data[:at], line.split(), after
        at = data.rfind(start, 0, at)
    return None


class MarkerScanner:
    """Incremental decoder: passes output on to ``sink`` until ``expected`` (a marker's
    bytes, from :func:`marker`) appears, and keeps what follows it in ``after``.

    Markers start with a NUL, so only a tail that starts with a NUL and with the marker's
    first bytes is held back until the next chunk.
    """

    def __init__(self, expected: bytes, sink: Sink) -> None:
        self.expected = expected
        self.sink = sink
        self.held = b""
        self.after: bytes | None = None

    def feed(self, data: bytes) -> bool:
        """Take the next chunk; True once the marker has been seen."""
        if self.after is not None:
            self.after += data
            return True
        if self.held:
            data, self.held = self.held + data, b""
        at = data.find(self.expected)
        if at >= 0:
            if at:
                self.sink(data[:at])
            self.after = data[at + len(self.expected) :]
            return True
        tail = data.find(b"\0", max(0, len(data) - len(self.expected) + 1))
        while tail >= 0 and not self.expected.startswith(data[tail:]):
            tail = data.find(b"\0", tail + 1)
        if tail >= 0:
            data, self.held = data[:tail], data[tail:]
        if data:
            self.sink(data)
        return False
