"""Framing under split reads, without root (issue 23 item 5): the markers the VM prints
(:class:`~dapfab.remote.protocol.MarkerScanner`), the frames the laptop sends (read by the
real ``sh/boot.sh`` and ``sh/helper.sh``) and the keeper's messages
(:mod:`dapfab.keeper.wire`). Each parser gets the same bytes cut at every point, byte by
byte and in seeded random pieces, and must decode the same thing every time."""

from __future__ import annotations

import array
import json
import os
import random
import re
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dapfab.keeper import wire
from dapfab.remote import launcher, protocol, scripts
from dapfab.remote.protocol import MARKER_START, MarkerScanner, last_marker

NONCE = "0123456789abcdef"
OUT_END, ERR_END = launcher.end_markers(NONCE)
SH = Path(scripts.__file__).parent / "sh"


def chunkings(data: bytes, seed: int, rounds: int = 20, largest: int = 16) -> Iterator[list[bytes]]:
    """``data`` whole, cut at every point in two, byte by byte, and in ``rounds`` seeded
    random chunkings (empty reads included) of at most ``largest`` bytes each."""
    yield [data]
    for at in range(len(data) + 1):
        yield [data[:at], data[at:]]
    yield [data[at : at + 1] for at in range(len(data))]
    rng = random.Random(seed)
    for _ in range(rounds):
        chunks, at = [], 0
        while at < len(data):
            size = rng.randint(0, largest)
            chunks.append(data[at : at + size])
            at += size
        yield chunks


# -- markers: MarkerScanner ----------------------------------------------------------------


def pending(fed: bytes, expected: bytes) -> int:
    """How many of ``fed``'s last bytes may still start ``expected``: the longest proper
    prefix of the marker that ``fed`` ends with."""
    return next((k for k in range(len(expected) - 1, 0, -1) if fed.endswith(expected[:k])), 0)


def scan(expected: bytes, chunks: list[bytes], end: int | None) -> tuple[bytes, bytes | None]:
    """Feed ``chunks`` to a scanner for ``expected``; (what reached the sink, ``after``).

    Checks after every read that the marker counts as seen exactly from the read that
    completes it (its last byte is at ``end``; None: never) and, until then, the scanner's
    promise on latency: everything fed has reached the sink but a tail that could still
    be the marker's start.
    """
    out: list[bytes] = []
    scanner = MarkerScanner(expected, out.append)
    fed = b""
    for chunk in chunks:
        fed += chunk
        seen = scanner.feed(chunk)
        assert seen == (end is not None and len(fed) >= end)
        if not seen:
            assert b"".join(out) == fed[: len(fed) - pending(fed, expected)]
    return b"".join(out), scanner.after


# What a command may print before its end marker: fragments of markers that are not it.
DECOYS = [
    b"plain output\n",
    b"\0",  # a NUL alone
    b"a\0dapfab-\0dapfab-en\0\0dapfab-end\n",  # prefixes, then another NUL
    b"\0dapfab-end " + NONCE[:-1].encode() + b"x 2\n",  # another nonce
    b"\0dapfab-end " + NONCE.encode() + b"\n",  # the stderr form on stdout
    b"\0dapfab-end " + NONCE.encode(),  # all but the final space, then the real marker
    b"\xff\xfe\0\0",
]


ENDS = [(OUT_END, b"3\n"), (ERR_END, b""), (ERR_END, b"late stderr\0dapfab-end x\n")]


@pytest.mark.parametrize("before, expected, after", [
    (before, expected, after) for before in DECOYS for expected, after in ENDS
    if expected not in before + expected[:-1]])  # a decoy that is not this very marker
def test_the_end_marker_is_found_at_every_split_and_nothing_else_is_taken(before, expected, after):
    stream = before + expected + after
    assert stream.find(expected) == len(before)
    for chunks in chunkings(stream, seed=len(before)):
        assert scan(expected, chunks, len(before) + len(expected)) == (before, after), chunks


@pytest.mark.parametrize("expected", [launcher.STARTED, launcher.begin_marker(NONCE),
                                      protocol.marker("files", NONCE) + b"\n"])
def test_every_marker_kind_splits_the_same_way(expected):
    before, after = b"x\0" + expected[:-2] + b"\0", b"\0tar bytes\0dapfab-"
    for chunks in chunkings(before + expected + after, seed=7):
        assert scan(expected, chunks, len(before) + len(expected)) == (before, after), chunks


def test_output_without_the_marker_is_passed_on_but_a_possible_start():
    stream = b"out\0dapfab-end\0" + OUT_END[:-1]  # the real marker but its last byte
    for chunks in chunkings(stream, seed=3):
        assert scan(OUT_END, chunks, None) == (b"out\0dapfab-end\0", None), chunks


def test_a_large_output_with_nuls_and_marker_fragments_splits_the_same_way():
    rng = random.Random(23)
    pieces = [rng.randbytes(rng.randint(0, 3000)) for _ in range(600)]
    fragments = [OUT_END[:k] for k in range(1, len(OUT_END))] + [ERR_END, b"\0"]
    before = b"".join(piece + rng.choice(fragments) for piece in pieces)
    assert len(before) > 800_000 and OUT_END not in before
    after = b"7\n" + rng.randbytes(5000)
    stream = before + OUT_END + after
    for seed in range(4):
        chunk_rng = random.Random(seed)
        chunks, at = [], 0
        while at < len(stream):
            size = chunk_rng.choice([1, 2, len(OUT_END) - 1, 4096, 65536, chunk_rng.randint(1, 100_000)])
            chunks.append(stream[at : at + size])
            at += size
        out: list[bytes] = []
        scanner = MarkerScanner(OUT_END, out.append)
        for chunk in chunks:
            scanner.feed(chunk)
        assert b"".join(out) == before and scanner.after == after


def test_last_marker_takes_the_last_complete_one_of_that_name():
    data = (b"x\0dapfab-curl 7\nheaders\0dapfab-curl 0 1\nH2\0dapfab-curlx 5\n"
            b"\0dapfab-curl\nH3 \0dapfab-curl 9")  # the last has no newline yet: not complete
    assert last_marker(data, "curl") == (data[: data.index(b"\0dapfab-curl\nH3")], [], b"H3 \0dapfab-curl 9")
    assert last_marker(data[: data.index(b"\0dapfab-curl\n")], "curl") == (
        b"x\0dapfab-curl 7\nheaders", [b"0", b"1"], b"H2\0dapfab-curlx 5\n")
    assert last_marker(b"\0dapfab-curlx 5\n\0dapfab-curl 5", "curl") is None


def test_the_marker_table_is_what_the_scripts_print():
    """Every marker in the table is printed by the scripts it names, and every marker a
    script prints is in the table: the decoder and the VM agree on one list."""
    printed: dict[str, set[str]] = {}
    for path in SH.glob("*.sh"):
        for name in re.findall(r"\\0dapfab-([a-z]+)[ \\]", path.read_text()):
            printed.setdefault(name, set()).add(path.name)
    assert set(printed) == set(protocol.MARKERS)
    for name, (where, _what) in protocol.MARKERS.items():
        assert set(where.split()) == printed[name], name
    assert protocol.marker("end", NONCE, "3") == MARKER_START + b"end " + NONCE.encode() + b" 3"
    with pytest.raises(ValueError, match="unknown marker"):
        protocol.marker("ended")
    with pytest.raises(ValueError, match="unknown frame"):
        protocol.frame(b"x")


# -- frames: the real boot.sh and helper.sh, fed odd pieces --------------------------------

# The scripts end with `kill -KILL -1`, safe only as PID 1 of their own PID namespace
# (which needs root): here it would hit every process of this user. These definitions,
# put before the script's own text, replace what needs a namespace, and nothing else.
NO_NAMESPACE = """kill() { :; }
unshare() { while [ "$1" != -- ]; do shift; done; shift; "$@"; }
"""
SILENCE = "30"  # seconds without a frame: longer than any test


def start_script(name: str, tmp_path: Path, inline: int = launcher.INLINE_MAX) -> subprocess.Popen:
    text = scripts.load(name).text
    assert "builtin" not in text and "command kill" not in text  # the stand-ins are what runs
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    return subprocess.Popen(["bash", "-c", NO_NAMESPACE + text, f"dapfab-{name}", SILENCE, str(inline)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)


def write_split(proc: subprocess.Popen, chunks: list[bytes]) -> None:
    """Write each piece alone, pausing so that the script's reads end where the pieces do."""
    fd = proc.stdin.fileno()
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        time.sleep(0.001)


def odd_pieces(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice([1, 2, 3, 5, 9, rng.randint(1, 70_000)])
        chunks.append(data[at : at + size])
        at += size
    return chunks


CODE = "printf '%s|' \"$0\" 'é€' \"it's\"; cat; echo err >&2; exit 7\n\n"  # trailing newlines kept
DATA = [b"d 3\n", b"\0\n\xff", b"", b"h\n", b"dapfab1 9\n"]  # data that looks like frames


@pytest.mark.parametrize("inline", [launcher.INLINE_MAX, 1])  # the code as an argument, or sourced
@pytest.mark.parametrize("how", ["bytes", "odd"])
def test_boot_reads_the_same_frames_however_they_are_cut(tmp_path, inline, how):
    # With odd pieces, a large data frame too: `head -c` across many reads.
    data = DATA + ([random.Random(5).randbytes(300_000)] if how == "odd" else [])
    frames = (launcher.command_frame(CODE) + launcher.HEARTBEAT_FRAME
              + b"".join(launcher.data_frame(chunk) + launcher.HEARTBEAT_FRAME for chunk in data)
              + launcher.EOF_FRAME)
    chunks = [frames[at : at + 1] for at in range(len(frames))] if how == "bytes" else odd_pieces(frames, 11)
    proc = start_script("boot", tmp_path, inline)
    try:
        writer = threading.Thread(target=write_split, args=(proc, chunks))
        writer.start()
        err = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))
        reader.start()
        out = proc.stdout.read()
        writer.join(20)
        proc.stdin.close()
        reader.join(20)
        assert proc.wait(20) == 7
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert out == launcher.STARTED + "bash|é€|it's|".encode() + b"".join(data)
    assert err == [b"err\n"]


class HelperDriver:
    """The real helper.sh, sent one request at a time as the laptop does, each cut in pieces."""

    def __init__(self, tmp_path: Path) -> None:
        self.proc = start_script("helper", tmp_path)
        self.got = {self.proc.stdout: b"", self.proc.stderr: b""}

    def read_until(self, done) -> None:
        with selectors.DefaultSelector() as sel:
            for stream in self.got:
                sel.register(stream, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            while not done() and time.monotonic() < deadline:
                for key, _ in sel.select(1):
                    chunk = os.read(key.fd, 65536)
                    assert chunk, self.got
                    self.got[key.fileobj] += chunk
        assert done(), self.got

    def run(self, chunks: list[bytes], nonce: str) -> tuple[bytes, bytes]:
        """Send ``chunks`` (one request); its stdout (with markers) and stderr."""
        out_end, err_end = launcher.end_markers(nonce)
        write_split(self.proc, chunks)

        def ended() -> bool:
            out = self.got[self.proc.stdout]
            return self.got[self.proc.stderr].endswith(err_end) and out_end in out and out.endswith(b"\n")

        self.read_until(ended)
        out, err = self.got[self.proc.stdout], self.got[self.proc.stderr]
        self.got = {self.proc.stdout: b"", self.proc.stderr: b""}
        return out, err


REQUESTS = [  # (code, stdin, nonce, exit code, stdout, stderr)
    ("printf 'é'; cat; exit 3", b"c 1 1 x\n\0\xff", "n1", 3, "é".encode() + b"c 1 1 x\n\0\xff", b""),
    ("true", b"q\nc 5 0 zz\n", "n2", 0, b"", b""),  # stdin left unread: drained, not framed
    ("echo err >&2; printf '%s' \"$0\"\n\n", b"", "n3", 0, b"bash", b"err\n"),
]


@pytest.mark.parametrize("how", ["bytes", "odd"])
def test_helper_reads_the_same_requests_however_they_are_cut(tmp_path, how):
    helper = HelperDriver(tmp_path)
    try:
        helper.read_until(lambda: helper.got[helper.proc.stdout] == launcher.STARTED)
        helper.got[helper.proc.stdout] = b""
        for index, (code, stdin, nonce, exited, stdout, stderr) in enumerate(REQUESTS):
            frames = launcher.HEARTBEAT_FRAME + launcher.request_frame(code, stdin, nonce)
            chunks = ([frames[at : at + 1] for at in range(len(frames))] if how == "bytes"
                      else odd_pieces(frames, index))
            out, err = helper.run(chunks, nonce)
            out_end, err_end = launcher.end_markers(nonce)
            assert out == launcher.begin_marker(nonce) + stdout + out_end + b"%d\n" % exited
            assert err == stderr + err_end
        write_split(helper.proc, [launcher.QUIT_FRAME[:1], launcher.QUIT_FRAME[1:]])
        assert helper.proc.wait(20) == 0
    finally:
        helper.proc.kill()
        helper.proc.wait()
        for stream in (helper.proc.stdin, helper.proc.stdout, helper.proc.stderr):
            stream.close()


# -- keeper messages: wire -----------------------------------------------------------------

MESSAGES = [({"op": "hello"}, b""), ({"op": "run", "argv": ["é", "\0"], "n": 1}, b"\0payload\n\xff"),
            ({"op": "h"}, b""), ({"op": "exit", "code": 3}, b"x" * 300)]


def encoded(messages: list[tuple[dict, bytes]]) -> bytes:
    """The bytes :func:`wire.send` puts on the socket for ``messages``."""
    left, right = socket.socketpair()
    with left, right:
        for message, payload in messages:
            wire.send(left, message, payload)
        left.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := right.recv(1 << 16):
            data += chunk
    return data


def drain(reader: wire.Reader) -> list[tuple[dict, bytes]]:
    got = []
    while (message := reader.ready()) is not None:
        got.append(message)
    return got


def test_messages_decode_the_same_at_every_split():
    stream = encoded(MESSAGES)
    assert stream[: wire.HEADER.size] == wire.HEADER.pack(len(b'{"op":"hello"}'), 0)
    for chunks in chunkings(stream, seed=1, largest=64):
        left, right = socket.socketpair()
        with left, right:
            reader, got = wire.Reader(right), []
            for chunk in chunks:
                if chunk:  # one send, then one read: the reader sees exactly this piece
                    left.sendall(chunk)
                    reader.fill()
                got += drain(reader)
            assert got == MESSAGES
            assert reader.buffer == b""


def test_descriptors_arrive_with_a_message_cut_in_pieces():
    read_end, write_end = os.pipe()
    left, right = socket.socketpair()
    try:
        stream = encoded(MESSAGES[1:2])
        for cut in (1, wire.HEADER.size, len(stream) - 1):
            # As wire.send does: the descriptors ride on the first byte.
            left.sendmsg([stream[:cut]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))])
            reader = wire.Reader(right)
            assert reader.next(0.05) is None  # incomplete: no message, no error
            left.sendall(stream[cut:])
            assert reader.next(5) == MESSAGES[1]
            (passed,) = reader.take_fds()
            os.write(passed, b"%d" % cut)
            os.close(passed)
            assert os.read(read_end, 10) == b"%d" % cut
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        left.close()
        right.close()


def test_a_peer_that_closes_mid_message_is_closed_at_every_cut():
    stream = encoded(MESSAGES)
    ends, at = [], 0
    for message in MESSAGES:  # where each whole message ends
        at += len(encoded([message]))
        ends.append(at)
    for cut in range(len(stream)):
        left, right = socket.socketpair()
        with left, right:
            left.sendall(stream[:cut])
            left.close()
            reader = wire.Reader(right)
            whole = sum(1 for end in ends if end <= cut)
            for message in MESSAGES[:whole]:
                assert reader.next(5) == message
            started = time.monotonic()
            with pytest.raises(wire.Closed):
                reader.next(5)  # never None (a timeout), never a half message
            assert time.monotonic() - started < 4, "waited for the timeout instead of the close"


def test_payloads_up_to_the_bound_arrive_whole_through_many_reads():
    payload = random.Random(2).randbytes(wire.MAX_PAYLOAD)
    head = {"op": "run", "pad": "x" * (wire.MAX_JSON - 30)}
    head["pad"] += "x" * (wire.MAX_JSON - len(json.dumps(head, separators=(",", ":"))))
    assert len(json.dumps(head, separators=(",", ":"))) == wire.MAX_JSON
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=lambda: (wire.send(left, head, payload), wire.send(left, {"op": "h"})))
        sender.start()
        reader = wire.Reader(right)
        got = reader.next(10)
        assert got is not None and got[0] == head and got[1] == payload
        assert reader.next(10) == ({"op": "h"}, b"")
        sender.join(10)


@pytest.mark.parametrize("sizes", [(wire.MAX_JSON + 1, 0), (10, wire.MAX_PAYLOAD + 1), (2**32 - 1, 2**32 - 1)])
def test_a_header_announcing_too_much_is_refused_at_once(sizes):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(wire.HEADER.pack(*sizes))  # nothing follows, and the peer stays
        started = time.monotonic()
        with pytest.raises(wire.Closed, match="too large"):
            wire.Reader(right).next(5)
        assert time.monotonic() - started < 4


@pytest.mark.parametrize("head", [b"[1, 2]", b'"op"', b"{bad", b'{"op": "\xff"}', b""])
def test_a_body_that_is_not_a_json_object_is_closed(head):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(wire.HEADER.pack(len(head), 1) + head + b"p")
        with pytest.raises(wire.Closed, match="not a message"):
            wire.Reader(right).next(5)
