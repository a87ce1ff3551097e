"""The caller's streams: which stdin a command gets and reading it in large chunks (the
launcher's stdin frames, fan-out's feed, a keeper call's copier), Invoke's ``hide``
vocabulary, and writing output to a stream as it comes."""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

from dapfab.remote.launcher import MAX_FRAME

# A read this large means the producer is streaming (a pipe holds 64 KiB): gather more of it
# into the same frame, since every frame costs one `head -c` process in the VM.
STREAMING_READ = 1 << 16
GATHER_WAIT = 0.005  # seconds to wait for a streaming producer's next bytes


def read_chunk(stream: Any) -> bytes:
    """Up to one frame from ``stream``, returning as soon as anything is available.

    Small reads (typing, a slow producer) go out at once; after a read that filled a whole
    pipe buffer, reading goes on until the frame is full or input pauses for
    :data:`GATHER_WAIT`.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        data = os.read(fd, MAX_FRAME)
        if len(data) < STREAMING_READ:
            return data
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        parts, size = [data], len(data)
        while size < MAX_FRAME:
            if not poller.poll(GATHER_WAIT * 1000):
                break
            more = os.read(fd, MAX_FRAME - size)
            if not more:  # end of input: the next read returns b"" too
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)
    read1 = getattr(stream, "read1", None)
    data = read1(MAX_FRAME) if read1 else stream.read(MAX_FRAME)
    return data.encode() if isinstance(data, str) else data


Sink = Callable[[bytes], None]


def hide_flags(hide: Any) -> tuple[bool, bool]:
    """Invoke's ``hide`` vocabulary: (hide stdout, hide stderr)."""
    if hide in (None, False):
        return False, False
    if hide in (True, "both"):
        return True, True
    if hide in ("out", "stdout"):
        return True, False
    if hide in ("err", "stderr"):
        return False, True
    raise ValueError(f"hide must be None, True, 'out', 'err' or 'both', not {hide!r}")


def caller_stdin(in_stream: Any) -> Any:
    """The stdin a command gets: ``in_stream``; by default (None) this process's stdin,
    unless that is a terminal or /dev/null (then none); ``False``: none."""
    if in_stream is False:
        return None
    if in_stream is not None:
        return in_stream
    stdin = sys.stdin
    if stdin is None or stdin.closed:
        return None
    try:
        fd = stdin.fileno()
        if os.isatty(fd) or os.path.samestat(os.fstat(fd), os.stat(os.devnull)):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return stdin


class StreamSink:
    """Writes output to one of our own streams (the terminal, a pipe, a file) as it comes."""

    def __init__(self, stream: IO[Any]) -> None:
        self.binary = getattr(stream, "buffer", stream)
        try:
            fd = stream.fileno()
            self.pipe_fd: int | None = fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
        except (AttributeError, OSError, ValueError):
            self.pipe_fd = None

    def __call__(self, data: bytes) -> None:
        write_all(self.binary, data)


def write_all(stream: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` to the binary ``stream`` and flush it. A buffered stream whose
    reader went away in the middle of a large write returns the part it wrote without an
    error; writing the rest raises the BrokenPipeError that a single write() lost."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) or 0:]
    stream.flush()


def reader_gone(sink: Sink) -> bool:
    """Whether ``sink`` writes to a pipe whose reader has closed it (poll says POLLERR)."""
    fd = getattr(sink, "pipe_fd", None)
    if fd is None:
        return False
    poller = select.poll()
    poller.register(fd, 0)
    return any(event & (select.POLLERR | select.POLLNVAL) for _, event in poller.poll(0))


def on_terminal() -> bool:
    """Whether both stdin and stdout are terminals (only then is a pty worth having)."""
    try:
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False
