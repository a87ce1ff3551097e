"""Fan-out without root (issue 23 item 5): the order of outcomes and the exit code, the
bound on runners at once, interrupts, and line printing under concurrent writers, run with
in-process work functions instead of SSH (docs/design.md §13, README "Many runners at once")."""

from __future__ import annotations

import io
import os
import pty
import random
import signal
import threading
import time
import tty
from types import SimpleNamespace

import pytest

from dapfab import fanout
from dapfab.errors import CommandError, DapError, RunnerError, SSHError
from dapfab.fanout import (
    FanOutError,
    RunnerOutcome,
    _LinePrinter,
    escaped,
    exit_code,
    fan_out,
    printers,
)

WAIT = 10  # seconds: a bound on waits that end on an event, never reached when all is well


def chained(order: list[str]):
    """Gates that let runners finish one after another in ``order`` (whatever order they
    started in): each runner waits for its gate and opens the next one when done."""
    gates = {name: threading.Event() for name in order}
    gates[order[0]].set()
    finished: list[str] = []

    def finish(name: str) -> None:
        assert gates[name].wait(WAIT)
        finished.append(name)
        if len(finished) < len(order):
            gates[order[len(finished)]].set()

    return finish, finished


def test_outcomes_come_in_the_order_given_and_the_exit_code_is_the_first_failure_in_it():
    finish, finished = chained(["d", "c", "b", "a"])
    how = {"a": (None, 4), "b": (None, 0), "c": (RunnerError("VM c not found"), 0),
           "d": (SSHError("mgmt unreachable", hint="check the host"), 0)}

    def work(name: str, index: int, abort: threading.Event):
        finish(name)
        error, code = how[name]
        if error is not None:
            raise error
        return f"result {index}", code

    outcomes = fan_out(["a", "b", "c", "d"], work, parallel=4)
    assert finished == ["d", "c", "b", "a"]  # the last to fail first
    assert list(outcomes) == ["a", "b", "c", "d"]
    assert [(o.name, o.result, o.code, o.exited, o.failed) for o in outcomes.values()] == [
        ("a", "result 0", 4, 4, True), ("b", "result 1", 0, 0, False),
        ("c", None, 0, 125, True), ("d", None, 0, 255, True)]
    assert outcomes["c"].error is how["c"][0]
    assert exit_code(outcomes) == 4  # a's, though d failed first
    error = FanOutError(outcomes)
    assert (error.exit_code, error.results) == (4, outcomes)
    assert str(error) == "fan-out: 3 of 4 runners failed (a, c, d)"
    del outcomes["a"]
    assert exit_code(outcomes) == 125
    assert FanOutError(outcomes).exit_code == 125


def test_a_failure_whose_code_is_zero_still_fails_the_run():
    ok = RunnerOutcome("a", None, None, 0.1, 0)
    odd = RunnerOutcome("b", None, DapError("broke", exit_code=0), 0.1)
    assert (odd.failed, odd.exited) == (True, 0)
    assert exit_code({"a": ok, "b": odd}) == 1
    assert FanOutError({"a": ok, "b": odd}).exit_code == 1
    assert exit_code({}) == 0


def test_the_summary_is_one_line_per_runner_in_order_with_remote_text_escaped(capsys):
    from invoke.exceptions import Exit

    from dapfab.tasks.k8s import _finish_fan_out

    outcomes = {
        "prod-us": RunnerOutcome("prod-us", None, RunnerError("VM \x1b[2Jgone\nx", hint="incus list"), 0.5),
        "prod-eu": RunnerOutcome("prod-eu", None, None, 1.204, 0),
        "staging": RunnerOutcome("staging", None, CommandError("exit 3", exit_code=3), 2),
    }
    with pytest.raises(Exit) as caught:
        _finish_fan_out(outcomes)
    assert caught.value.code == 125
    assert capsys.readouterr().err.splitlines() == [
        "dapfab: [prod-us] exit 125 in 0.50 s: runner: VM \\x1b[2Jgone\\nx (incus list)",
        "dapfab: [prod-eu] exit 0 in 1.20 s",
        "dapfab: [staging] exit 3 in 2.00 s: runner: exit 3",
    ]
    _finish_fan_out({"prod-eu": outcomes["prod-eu"]})  # all succeeded: no exit raised


@pytest.mark.parametrize("parallel, peak", [(0, 1), (1, 1), (2, 2), (3, 3), (10, 6)])
def test_parallel_bounds_how_many_runners_run_at_once_and_is_reached(parallel, peak):
    lock, active, seen = threading.Lock(), [0], [0]
    together = threading.Barrier(peak)  # `peak` runners must be running at the same time

    def work(name: str, index: int, abort: threading.Event):
        with lock:
            active[0] += 1
            seen[0] = max(seen[0], active[0])
        together.wait(WAIT)
        time.sleep(0.005)  # time for a runner past the bound to start, if one could
        with lock:
            active[0] -= 1
        return None, 0

    outcomes = fan_out([f"r{i}" for i in range(6)], work, parallel=parallel)
    assert seen[0] == peak
    assert all(outcome.succeeded for outcome in outcomes.values())


def test_a_bug_in_one_runner_propagates_and_stops_the_running_others():
    c_started, b_raised = threading.Event(), threading.Event()
    bug = ValueError("not a DapError")
    saw_abort: dict[str, bool] = {}
    ended: list[str] = []

    def work(name: str, index: int, abort: threading.Event):
        if name == "a":
            assert b_raised.wait(WAIT)
        elif name == "b":
            assert c_started.wait(WAIT)
            b_raised.set()
            raise bug
        else:
            c_started.set()
            saw_abort[name] = abort.wait(WAIT)
            time.sleep(0.02)  # stopping its remote command takes a moment
        ended.append(name)
        return None, 0

    with pytest.raises(ValueError) as caught:
        fan_out(["a", "b", "c"], work, parallel=3)
    assert caught.value is bug
    assert saw_abort == {"c": True}
    assert sorted(ended) == ["a", "c"]  # c was done before fan_out raised


def test_an_interrupt_stops_the_running_waits_for_them_and_starts_no_more():
    started: list[str] = []
    ended: list[str] = []
    both = threading.Barrier(3)

    def work(name: str, index: int, abort: threading.Event):
        started.append(name)
        both.wait(WAIT)
        assert abort.wait(WAIT)
        time.sleep(0.05)  # stopping the remote command takes a moment
        ended.append(name)
        return None, 0

    def ctrl_c() -> None:
        both.wait(WAIT)  # both running, the other two queued
        time.sleep(0.02)  # fan_out is waiting on the first outcome
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fan_out(["a", "b", "c", "d"], work, parallel=2)
        at_raise = sorted(ended)
    finally:
        presser.join(WAIT)
        signal.signal(signal.SIGINT, previous)
    assert sorted(started) == ["a", "b"]  # c and d never started
    assert at_raise == ["a", "b"]  # every started runner was done before the interrupt went on


# -- line printing -------------------------------------------------------------------------


class Interleaving(io.RawIOBase):
    """A target whose writes go in eight-byte pieces, letting other threads in between:
    writers that do not hold the lock mix their lines."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        for at in range(0, len(data), 8):
            self.parts.append(data[at : at + 8])
            time.sleep(0)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def runner_output(name: str, seed: int) -> tuple[bytes, list[bytes]]:
    """Some output of runner ``name`` and the random pieces it arrives in."""
    rng = random.Random(seed)
    lines = [f"{name} line {i} ".encode() + bytes(rng.choices(b"xyz\xc3\xa9\t\0", k=rng.randint(0, 90)))
             for i in range(60)]
    data = b"\n".join(lines) + b"\n" + name.encode() + b" tail"  # the last line has no newline
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice([1, 2, 7, 50, 300])
        chunks.append(data[at : at + size])
        at += size
    return data, chunks


def printed(prefix: bytes, chunks: list[bytes], bound: int) -> bytes:
    """What one printer alone writes for ``chunks``: the reference."""
    target = io.BytesIO()
    printer = _LinePrinter(prefix, target, threading.Lock(), bound=bound)
    for chunk in chunks:
        printer.write(chunk)
    printer.close()
    return target.getvalue()


def test_lines_of_runners_writing_at_once_never_mix():
    names = [f"r{i}" for i in range(6)]
    target, lock = Interleaving(), threading.Lock()
    start = threading.Barrier(len(names))
    outputs = {name: runner_output(name, seed) for seed, name in enumerate(names)}

    def write(name: str) -> None:
        printer = _LinePrinter(f"[{name}] ".encode(), target, lock, bound=64)
        start.wait(WAIT)
        for chunk in outputs[name][1]:
            printer.write(chunk)
        printer.close()

    threads = [threading.Thread(target=write, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    lines = target.getvalue().split(b"\n")
    assert lines.pop() == b""
    for name in names:
        prefix = f"[{name}] ".encode()
        mine = [line for line in lines if line.startswith(prefix)]
        assert b"\n".join(mine) + b"\n" == printed(prefix, outputs[name][1], 64)
    assert sum(len(printed(f"[{n}] ".encode(), outputs[n][1], 64)) for n in names) == len(target.getvalue())


def test_printing_does_not_depend_on_how_the_output_was_cut():
    data = b"a\nbb\r\n\n\0\xff\xfe\n" + "é€𝄞".encode() * 9 + b"\n" + b"x" * 40 + b"\ntail\xe2\x82"
    whole = printed(b"[a] ", [data], 16)
    for at in range(len(data) + 1):
        assert printed(b"[a] ", [data[:at], data[at:]], 16) == whole
    target = io.BytesIO()
    printer = _LinePrinter(b"[a] ", target, threading.Lock(), bound=16)
    for at in range(len(data)):
        printer.write(data[at : at + 1])
        assert len(printer.pending) <= 16
    printer.close()
    assert target.getvalue() == whole
    assert whole.endswith(b"\n[a] tail\xe2\x82\n")  # the last, partial line printed whole at the end


@pytest.mark.parametrize("seed", range(6))
def test_pieces_of_long_lines_are_cut_between_utf8_characters(seed):
    rng = random.Random(seed)
    alphabet = "aé€𝄞\t"  # characters of 1, 2, 3 and 4 bytes
    lines = ["".join(rng.choices(alphabet, k=rng.randint(0, 60))).encode() for _ in range(40)]
    bound = rng.randint(4, 24)
    data = b"\n".join(lines) + b"\n"
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1, 3 * bound)
        chunks.append(data[at : at + size])
        at += size
    pieces = printed(b"", chunks, bound).split(b"\n")[:-1]
    for line in lines:  # each line comes out as consecutive pieces, none splitting a character
        got = b""
        while True:
            piece = pieces.pop(0)
            assert len(piece) <= bound
            piece.decode("utf-8")  # raises if a character was cut
            got += piece
            if got == line:
                break
            assert len(piece) > bound - 4  # cut no earlier than the last character start
    assert pieces == []


def test_a_run_prints_each_runners_last_partial_line_even_when_it_fails(monkeypatch):
    def run_command(config, code, *, hide, in_stream, timeout, out_stream, err_stream, abort):
        out_stream.write(f"{code} first\n{code} second, no newline".encode())
        err_stream.write(b"warn")
        if config == "broken":
            raise RunnerError("VM gone")
        return SimpleNamespace(exited=3 if config == "exits-3" else 0)

    monkeypatch.setattr(fanout, "run_command", run_command)
    out, err = io.BytesIO(), io.BytesIO()
    runners = {"a": "exits-3", "b": "broken", "c": "fine"}
    with pytest.raises(FanOutError) as caught:
        fanout.run_in_runners(runners, {"a": "A", "b": "B", "c": "C"}, in_stream=False,
                              out_stream=out, err_stream=err)
    assert caught.value.exit_code == 3
    assert list(caught.value.results) == ["a", "b", "c"]
    lines = out.getvalue().splitlines(keepends=True)
    for name in runners:
        mine = [line for line in lines if line.startswith(f"[{name}] ".encode())]
        code = name.upper()
        assert mine == [f"[{name}] {code} first\n".encode(), f"[{name}] {code} second, no newline\n".encode()]
    assert sorted(err.getvalue().splitlines()) == [b"[a] warn", b"[b] warn", b"[c] warn"]
    outcomes = fanout.run_in_runners({"c": "fine"}, "C", in_stream=False, out_stream=out, err_stream=err)
    assert outcomes["c"].succeeded


def test_stdin_goes_to_every_runner_at_once_and_one_that_stops_reading_is_dropped(monkeypatch):
    data = random.Random(1).randbytes(3 << 20)  # far more than a pipe holds
    all_running = threading.Barrier(3)
    got: dict[str, bytes] = {}

    def run_command(config, code, *, hide, in_stream, timeout, out_stream, err_stream, abort):
        all_running.wait(WAIT)  # with stdin, every runner starts at once, whatever --parallel
        if config == "head":
            got[code] = in_stream.read(10)
            in_stream.close()
        else:
            got[code] = b"".join(iter(lambda: in_stream.read(1 << 16), b""))
        return SimpleNamespace(exited=0)

    monkeypatch.setattr(fanout, "run_command", run_command)
    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    feeder.start()
    try:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            outcomes = fanout.run_in_runners({"a": "cat", "b": "head", "c": "cat"},
                                             {"a": "a", "b": "b", "c": "c"},
                                             parallel=1, in_stream=source, hide=True)
    finally:
        feeder.join(WAIT)
    assert all(outcome.succeeded for outcome in outcomes.values())
    assert got["a"] == got["c"] == data
    assert 0 < len(got["b"]) <= 10 and data.startswith(got["b"])


def test_only_a_terminal_gets_escapes_and_hide_drops_a_stream():
    master, slave = pty.openpty()
    tty.setraw(slave)  # no newline translation: the bytes as written
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(slave, "wb", buffering=0) as terminal, os.fdopen(write_end, "wb", buffering=0) as pipe:
            out, err = printers("eu", threading.Lock(), out_stream=terminal, err_stream=pipe)
            line = b"\x1b[2K[us] forged\r\xe2\x80\xae \xc3\xa9\tx"
            out.write(line + b"\n")
            err.write(line + b"\n")
        assert os.read(master, 1000) == b"[eu] " + escaped(line) + b"\n"
        assert escaped(line) == b"\\x1b[2K[us] forged\\r\\u202e \xc3\xa9\tx"
        assert os.read(read_end, 1000) == b"[eu] " + line + b"\n"  # a pipe: bytes unchanged
    finally:
        os.close(master)
        os.close(read_end)
    closed = io.BytesIO()
    closed.close()
    for stream in (io.BytesIO(), closed, SimpleNamespace(write=len)):
        assert not fanout._is_terminal(stream)
    lock = threading.Lock()
    assert [tuple(p is None for p in printers("a", lock, hide)) for hide in (None, "out", "err", "both", True)] == [
        (False, False), (True, False), (False, True), (True, True), (True, True)]
    with pytest.raises(ValueError, match="hide must be"):
        printers("a", lock, "all")
