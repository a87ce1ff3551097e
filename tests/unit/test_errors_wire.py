"""A DapError across the keeper's socket (docs/design.md §12): ``to_wire`` on the keeper's
side, ``from_wire`` on the caller's, the class kept for every class in the table and a
plain DapError for any other, message, hop, hint and exit code unchanged."""

from __future__ import annotations

import inspect
import json
import socket

import pytest

from dapfab import errors
from dapfab.keeper import wire


def _travelled(err: errors.DapError) -> errors.DapError:
    """``err`` sent as the keeper sends an outcome, and read back as the client reads it."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        wire.send(left, {"op": "error", **err.to_wire()})
        got = wire.Reader(right).next(5.0)
    assert got is not None
    return errors.from_wire(got[0])


def test_the_table_holds_every_error_class_of_the_errors_module():
    defined = {name: kind for name, kind in inspect.getmembers(errors, inspect.isclass)
               if issubclass(kind, errors.DapError)}
    assert errors.WIRE_CLASSES == defined


@pytest.mark.parametrize("kind", list(errors.WIRE_CLASSES.values()), ids=list(errors.WIRE_CLASSES))
def test_each_class_in_the_table_comes_back_as_itself(kind):
    sent = kind("it broke \x1b[31m", hint="fix it", hop="somewhere", exit_code=77)
    got = _travelled(sent)
    assert type(got) is kind
    assert (got.message, got.hop, got.hint, got.exit_code) == ("it broke \x1b[31m", "somewhere",
                                                               "fix it", 77)
    assert str(got) == str(sent)


@pytest.mark.parametrize("kind", list(errors.WIRE_CLASSES.values()), ids=list(errors.WIRE_CLASSES))
def test_the_class_defaults_travel_too(kind):
    got = _travelled(kind("no hop given"))
    assert type(got) is kind
    assert (got.hop, got.hint, got.exit_code) == (kind.hop, None, kind.exit_code)


def test_output_closed_is_still_a_broken_pipe_after_the_trip():
    assert isinstance(_travelled(errors.OutputClosed("reader left")), BrokenPipeError)


def test_a_class_not_in_the_table_comes_back_as_a_plain_dap_error():
    class Elsewhere(errors.SSHError):
        hop = "elsewhere"
        exit_code = 9

    fields = Elsewhere("far away", hint="look").to_wire()
    assert fields["type"] == "Elsewhere"
    got = errors.from_wire(json.loads(json.dumps(fields)))
    assert type(got) is errors.DapError
    assert (got.message, got.hop, got.hint, got.exit_code) == ("far away", "elsewhere", "look", 9)


def test_a_name_that_is_no_error_class_is_not_looked_up():
    fields = {"type": "render", "message": "m", "hop": "keeper", "hint": None, "exit_code": 255}
    got = errors.from_wire(fields)
    assert type(got) is errors.DapError and got.exit_code == 255 and got.hop == "keeper"


def test_the_result_does_not_travel():
    sent = errors.CommandError("exit 3", exit_code=3, result=object())
    assert "result" not in sent.to_wire()
    assert _travelled(sent).result is None
