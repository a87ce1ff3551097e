"""Fan-out's pure parts: naming runners, printing whole prefixed lines, the exit code."""

from __future__ import annotations

import io
import os
import pty
import threading

import pytest

from dapfab.config import runner_names
from dapfab.errors import ConfigError, RunnerError
from dapfab.fanout import LINE_BOUND, RunnerOutcome, _LinePrinter, escaped, exit_code, printers

CONFIG = {"dap": {"runners": {"a": {}, "b": {}, "c": {}}, "groups": {"prod": ["b", "c", "a"]}}}


def test_names_groups_and_duplicates_keep_the_first_position():
    assert runner_names(CONFIG, "c,@prod,b,a", environ={}) == ["c", "b", "a"]
    assert runner_names(CONFIG, None, environ={"DAP_RUNNER": "@prod"}) == ["b", "c", "a"]
    assert runner_names(CONFIG, "a", environ={"DAP_RUNNER": "b"}) == ["a"]
    assert runner_names(CONFIG, None, environ={}) is None


@pytest.mark.parametrize("spec, says", [("a,nope", "unknown runner profile 'nope'"),
                                        ("@nope", "unknown runner group 'nope'"),
                                        ("a,,b", "empty runner name"),
                                        ("a,b c", "invalid profile name")])
def test_every_name_is_checked_before_anything_runs(spec, says):
    with pytest.raises(ConfigError, match=says) as caught:
        runner_names(CONFIG, spec, environ={})
    assert caught.value.exit_code == 2


def test_a_group_must_list_profile_names():
    with pytest.raises(ConfigError, match="must be a list"):
        runner_names({"dap": {"runners": {"a": {}}, "groups": {"g": "a"}}}, "@g", environ={})


def test_lines_are_printed_whole_with_the_prefix_and_bytes_unchanged():
    target = io.BytesIO()
    printer = _LinePrinter(b"[eu] ", target, threading.Lock())
    for chunk in (b"one\ntw", b"o\n\xff\xfe raw\nlast without newline"):
        printer.write(chunk)
    assert target.getvalue() == b"[eu] one\n[eu] two\n[eu] \xff\xfe raw\n"
    printer.close()
    assert target.getvalue().endswith(b"[eu] last without newline\n")


def test_a_line_over_the_bound_is_printed_in_pieces_and_never_held_whole():
    target = io.BytesIO()
    printer = _LinePrinter(b"[eu] ", target, threading.Lock(), bound=8)
    line = bytes(range(ord("a"), ord("a") + 26)) * 3  # 78 bytes, no newline yet
    for size in (1, 5, 13, 2, 40, 17):  # chunks of every size, also over the bound
        printer.write(line[:size])
        line = line[size:]
        assert len(printer.pending) <= 8  # memory stays bounded however long the line
    printer.write(b"end\nnext")
    printer.close()
    out = target.getvalue().split(b"\n")
    assert out.pop() == b""
    assert all(piece.startswith(b"[eu] ") and len(piece) <= 5 + 8 for piece in out)
    payload = b"".join(piece[5:] for piece in out)
    assert payload == (bytes(range(ord("a"), ord("a") + 26)) * 3)[:78] + b"end" + b"next"
    assert out[-1] == b"[eu] next"


def test_a_piece_is_cut_between_utf8_characters():
    target = io.BytesIO()
    printer = _LinePrinter(b"", target, threading.Lock(), bound=4)
    printer.write("aé€𝄞b\n".encode())  # 1, 2, 3, 4 and 1 bytes
    assert [piece.decode() for piece in target.getvalue().split(b"\n")[:-1]] == ["aé", "€", "𝄞", "b"]
    printer.write(b"\xff" * 9 + b"\n")  # not UTF-8: cut at the bound
    assert target.getvalue().endswith(b"\n\xff\xff\xff\xff\n\xff\xff\xff\xff\n\xff\n")


def test_the_default_bound_is_one_mib():
    target = io.BytesIO()
    printer = _LinePrinter(b"[a] ", target, threading.Lock())
    printer.write(b"x" * (LINE_BOUND + 5) + b"\n" + b"y" * LINE_BOUND + b"\n")
    assert [len(line) for line in target.getvalue().split(b"\n")] == [4 + LINE_BOUND, 4 + 5, 4 + LINE_BOUND, 0]


FORGED = b"\x1b[2K\x1b[G[prod-eu] deleted\ta\rb \xc2\x9b \x9b \xe2\x80\xae \xff \xc3\xa9"


def test_on_a_terminal_control_characters_after_the_prefix_are_escaped():
    assert escaped(FORGED) == (b"\\x1b[2K\\x1b[G[prod-eu] deleted\ta\\rb \\x9b \\x9b \\u202e \xff \xc3\xa9")
    target = io.BytesIO()
    printer = _LinePrinter(b"[a] ", target, threading.Lock(), escape=True)
    printer.write(FORGED + b"\n\x07")
    printer.close()
    assert target.getvalue() == b"[a] " + escaped(FORGED) + b"\n[a] \\x07\n"


def test_only_a_terminal_gets_escapes():
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "wb", buffering=0) as terminal:
            out, err = printers("a", threading.Lock(), out_stream=terminal, err_stream=io.BytesIO())
            assert out is not None and err is not None
            assert (out.escape, err.escape) == (True, False)
            err.write(FORGED + b"\n")
            assert err.target.getvalue() == b"[a] " + FORGED + b"\n"  # bytes unchanged
    finally:
        os.close(master)


def test_the_exit_code_is_the_first_failure_in_the_order_given():
    ok = RunnerOutcome("a", None, None, 0.1, 0)
    bad = RunnerOutcome("b", None, None, 0.1, 3)
    hop = RunnerOutcome("c", None, RunnerError("VM c not found"), 0.1)
    assert exit_code({"a": ok}) == 0
    assert exit_code({"a": ok, "c": hop, "b": bad}) == 125
    assert exit_code({"b": bad, "c": hop}) == 3
    assert (hop.failed, ok.succeeded, bad.failed) == (True, True, True)
    assert hop.summary().startswith("[c] exit 125 in 0.10 s: runner: VM c not found")
