"""Reading a caller's stdin: whatever a stream has, in large chunks, with or without a
file descriptor (the launcher's stdin frames, fan-out's feed, a keeper call's copier)."""

from __future__ import annotations

import os
import select
from typing import Any

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
