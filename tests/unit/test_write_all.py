"""Writing output whole: a reader that leaves in the middle of a large write is an error
(exit 141 at the edge), never a silently short output with exit 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dapfab.streams import write_all

# A body far larger than a pipe holds, written by one call, to a reader that takes one byte.
WRITER = """
import sys
from dapfab.streams import write_all
try:
    write_all(sys.stdout.buffer, b"x" * 300000)
except BrokenPipeError:
    sys.stderr.write("broken pipe")
"""


def test_a_reader_that_leaves_mid_write_raises_broken_pipe():
    reader, writer = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=writer,
                            stderr=subprocess.PIPE)
    os.close(writer)
    assert os.read(reader, 1) == b"x"
    os.close(reader)
    _, stderr = proc.communicate(timeout=30)
    assert stderr == b"broken pipe"


class Trickle:
    """A stream that takes at most three bytes per write, as a pipe may take part of one."""

    def __init__(self) -> None:
        self.data = b""
        self.flushed = False

    def write(self, data: memoryview) -> int:
        self.data += bytes(data[:3])
        return min(3, len(data))

    def flush(self) -> None:
        self.flushed = True


@pytest.mark.parametrize("data", [b"", b"a", b"abcdefghij"])
def test_every_byte_is_written_however_little_each_write_takes(data):
    stream = Trickle()
    write_all(stream, data)  # type: ignore[arg-type]
    assert (stream.data, stream.flushed) == (data, True)
