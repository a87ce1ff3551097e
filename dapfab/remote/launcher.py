"""How a command is laid out on the far side: the launcher and helper command lines and the
frames the laptop sends them (docs/design.md §9).

Every command dapfab runs in the VM goes through a fixed program (``sh/boot.sh``), started
as::

    incus [--project P] exec VM -T -- unshare --pid --mount-proc --fork --kill-child -- \\
        bash -c BOOT dapfab TIMEOUT INLINE

Only that line appears on the management host's process list; the user's command and its
stdin travel on the channel's stdin as frames (:mod:`dapfab.remote.protocol`). Commands
whose whole stdin is known up front (none, or at most :data:`HELPER_STDIN_MAX` bytes) run on
a reusable helper instead (``sh/helper.sh``), started the same way, which saves one
``incus exec`` per command.
"""

from __future__ import annotations

from typing import Any

from dapfab.quoting import join
from dapfab.remote import protocol, scripts
from dapfab.remote.incus import exec_argv

STARTED = protocol.marker("started") + b"\n"
HEARTBEAT_INTERVAL = 2.0  # seconds between the laptop's heartbeats
HEARTBEAT_TIMEOUT = 10  # seconds without a frame after which the VM side kills everything
# Frames of stdin data are at most this large: one `head -c` in the VM per frame.
MAX_FRAME = 1 << 20
# Longer commands (in characters; at most 4 bytes each) do not go to `bash -lc` as one
# argument, which the kernel caps at 128 KiB (MAX_ARG_STRLEN): they are sourced from a pipe.
INLINE_MAX = 30000
HELPER_STDIN_MAX = 48 << 10  # stdin sent with a helper request; fits an empty pipe

EOF_FRAME = protocol.frame(b"e")
HEARTBEAT_FRAME = protocol.frame(b"h")
QUIT_FRAME = protocol.frame(b"q")


def boot_argv(*, helper: bool = False, heartbeat_timeout: float = HEARTBEAT_TIMEOUT) -> list[str]:
    """The argv ``incus exec`` runs in the VM: the launcher (or, with ``helper``, the
    helper) as PID 1 of a fresh PID namespace, killing everything after
    ``heartbeat_timeout`` seconds without a frame."""
    script = scripts.load("helper" if helper else "boot")
    name = "dapfab-helper" if helper else "dapfab"
    return [
        "unshare", "--pid", "--mount-proc", "--fork", "--kill-child", "--",
        "bash", "-c", script.text, name, f"{heartbeat_timeout:g}", str(INLINE_MAX),
    ]


def launch_command(
    runner: Any, *, helper: bool = False, heartbeat_timeout: float = HEARTBEAT_TIMEOUT
) -> str:
    """The command line sent to the management host: the incus invocation and nothing else."""
    return join(exec_argv(runner, boot_argv(helper=helper, heartbeat_timeout=heartbeat_timeout)))


def _code(code: str) -> bytes:
    return code.encode("utf-8", "surrogateescape")


def command_frame(code: str) -> bytes:
    """The first frame: the shell code the VM runs with ``bash -lc``."""
    data = _code(code)
    return protocol.frame(b"dapfab1", len(data), payload=data)


def data_frame(chunk: bytes) -> bytes:
    """One frame of stdin data for the command."""
    return protocol.frame(b"d", len(chunk), payload=chunk)


def request_frame(code: str, stdin: bytes, nonce: str) -> bytes:
    """A helper request: run ``code`` with ``stdin`` (at most :data:`HELPER_STDIN_MAX` bytes)."""
    data = _code(code)
    return protocol.frame(b"c", len(data), len(stdin), nonce, payload=data + stdin)


def begin_marker(nonce: str) -> bytes:
    """What the helper prints on stdout just before it starts a command."""
    return protocol.marker("begin", nonce) + b"\n"


def end_markers(nonce: str) -> tuple[bytes, bytes]:
    """What the helper prints after a command: on stdout (followed by the exit code and a
    newline) and on stderr (complete)."""
    mark = protocol.marker("end", nonce)
    return mark + b" ", mark + b"\n"
