"""Errors as values: every failure names the hop that broke and how to fix it.

Rendered to one line only at the CLI edge (:func:`render`); the library raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class DapError(Exception):
    """Base of every dapfab error: a hop, what went wrong, a hint, and an exit code."""

    exit_code: int = 1
    hop: str = "dapfab"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        hop: str | None = None,
        exit_code: int | None = None,
        result: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if hop is not None:
            self.hop = hop
        if exit_code is not None:
            self.exit_code = exit_code
        self.result = result

    def __str__(self) -> str:
        text = f"{self.hop}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_wire(self) -> dict[str, Any]:
        """This error as JSON values (class name, message, hop, hint, exit code, and the
        line the CLI prints for it) for :func:`from_wire` across the keeper's socket
        (docs/design.md §12); ``result`` stays here."""
        return {"type": type(self).__name__, "message": self.message, "hop": self.hop,
                "hint": self.hint, "exit_code": self.exit_code, "line": render(self)}


class ConfigError(DapError):
    """Input or configuration that dapfab refuses before sending anything (exit 2)."""

    exit_code = 2
    hop = "config"


class SSHError(DapError):
    """The SSH hop failed: unreachable, timeout, authentication, host key (exit 255)."""

    exit_code = 255
    hop = "ssh"


class HostKeyError(SSHError):
    """A host key is unknown (policy ``reject``) or has changed (exit 255)."""


class RunnerError(DapError):
    """The runner hop failed: incus missing, VM not found or not running (exit 125)."""

    exit_code = 125
    hop = "runner"


class CommandError(DapError):
    """The remote command exited non-zero; ``exit_code`` is its own and ``result`` is kept."""

    hop = "runner"


class DapTimeout(DapError):
    """A time limit of dapfab's own ran out (exit 124)."""

    exit_code = 124


class Interrupted(DapError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143), raised after cleanup."""

    exit_code = 130
    hop = "laptop"


class OutputClosed(DapError, BrokenPipeError):
    """Our stdout or stderr was closed by its reader (``| head``): the remote command was
    stopped. Exit 141, what a shell sees from a pipeline member killed by SIGPIPE; it is also
    a :class:`BrokenPipeError`, so code that handles that keeps working."""

    exit_code = 141
    hop = "laptop"


class CurlError(DapError):
    """curl failed in the runner (its own exit code) or, for ``k8s.curl``, HTTP >= 400 (22)."""

    hop = "curl"


# The classes an error keeps across the keeper's socket; any other name arrives as a plain
# DapError (with the same message, hop, hint and exit code).
WIRE_CLASSES: dict[str, type[DapError]] = {kind.__name__: kind for kind in (
    DapError, ConfigError, SSHError, HostKeyError, RunnerError, CommandError, DapTimeout,
    Interrupted, OutputClosed, CurlError,
)}


def from_wire(fields: Mapping[str, Any]) -> DapError:
    """The error :meth:`DapError.to_wire` gave as ``fields`` (other keys are ignored)."""
    kind = WIRE_CLASSES.get(str(fields.get("type")), DapError)
    return kind(str(fields.get("message")), hint=fields.get("hint"), hop=fields.get("hop"),
                exit_code=fields.get("exit_code"))


def command_timed_out(timeout: float) -> DapTimeout:
    """A command still running after the caller's ``timeout`` seconds (it was stopped)."""
    return DapTimeout(f"command still running after {timeout:g} s; stopped it", hop="runner",
                      hint="raise the timeout")


def stopped_with_others() -> Interrupted:
    """A command stopped by fan-out's abort event (docs/design.md §13)."""
    return Interrupted("stopped with the others", hop="laptop")


# Characters a terminal acts on instead of showing: C0/C1 controls and DEL (Unicode Cc), the
# bidirectional overrides and isolates that reorder what is shown, and C1 as raw bytes that
# are not UTF-8 (decoded with "surrogateescape": an 8-bit terminal acts on them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\udc80-\udc9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code >= 0xDC80:  # a raw byte that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` safe to put in one of dapfab's own messages: control characters (and bidi
    overrides) become visible escapes (``\\n``, ``\\x1b``, ``\\u202e``), so remote text cannot
    drive the terminal or split the line. Command output passes through it only in fan-out to
    a terminal (:func:`dapfab.fanout.escaped`)."""
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)


def render(error: DapError) -> str:
    """The single stderr line the CLI prints for ``error``, control characters escaped."""
    return f"dapfab: {shown(str(error))}"
