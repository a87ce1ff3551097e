"""Fan-out's pure parts: naming runners, printing whole prefixed lines, the exit code."""

from __future__ import annotations

import io
import threading

import pytest

from dapfab.config import runner_names
from dapfab.errors import ConfigError, RunnerError
from dapfab.fanout import RunnerOutcome, _LinePrinter, exit_code

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


def test_the_exit_code_is_the_first_failure_in_the_order_given():
    ok = RunnerOutcome("a", None, None, 0.1, 0)
    bad = RunnerOutcome("b", None, None, 0.1, 3)
    hop = RunnerOutcome("c", None, RunnerError("VM c not found"), 0.1)
    assert exit_code({"a": ok}) == 0
    assert exit_code({"a": ok, "c": hop, "b": bad}) == 125
    assert exit_code({"b": bad, "c": hop}) == 3
    assert (hop.failed, ok.succeeded, bad.failed) == (True, True, True)
    assert hop.summary().startswith("[c] exit 125 in 0.10 s: runner: VM c not found")
