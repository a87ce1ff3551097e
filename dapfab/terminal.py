"""Interactive commands (``exec -it``, ``edit``, ``attach``): a pty end to end, window size included.

A pty would mangle the launcher's framed stdin, so the command is first staged through the
ordinary launcher in a private directory in the VM (``mktemp -d``: a fresh 0700 directory,
so no other VM user can plant, read or redirect anything inside it), and the pty session
runs only ``bash -c UNSTAGE dapfab DIR STALE`` (``sh/unstage.sh``, which reads and removes DIR/cmd, then runs it with
``bash -lc``): the management host's process list shows the directory name, never the
command. The pty hangs up the remote side when the channel closes; for a laptop that freezes
or a link that drops silently (no hangup), a companion command on the ordinary launcher
(bounded by dapfab's heartbeat) keeps DIR/alive fresh, and a watcher in the pty session kills
the session once it is :data:`GUARD_STALE` seconds old. The watcher outlives the session
(even a SIGKILLed one) and removes DIR; the laptop removes it too once the session is over.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import select
import shutil
import signal
import sys
import termios
import tty
from typing import TYPE_CHECKING, Any

from dapfab.calls import run_command
from dapfab.connection import POOL
from dapfab.errors import RunnerError
from dapfab.execution import RemoteProcess
from dapfab.quoting import join
from dapfab.remote import scripts
from dapfab.remote.incus import exec_argv
from dapfab.result import Result

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

# How stale DIR/alive may get before the pty session is killed, in seconds.
GUARD_STALE = 5
_STAGED = re.compile(r"/[^\0\n]*/dapfab\.[A-Za-z0-9]{10}")


def run_with_pty(config: RunnerConfig, command: str) -> Result:
    """Run ``command`` in the VM on a pty wired to this process's terminal; its Result
    (whatever the exit code)."""
    config = dataclasses.replace(config, persist=0)  # a pty session keeps its own connection

    staged = run_command(
        config, scripts.program("stage"), hide=True, in_stream=io.BytesIO(command.encode("utf-8", "surrogateescape"))
    ).stdout.strip()
    if not _STAGED.fullmatch(staged):
        raise RunnerError(
            f"could not stage the command in VM {config.vm_name} (mktemp said {staged[:80]!r})",
            hint="the VM needs coreutils and a writable temp directory",
        )
    unstage = ["bash", "-c", scripts.load("unstage").text, "dapfab", staged, str(GUARD_STALE)]
    size = window_size()
    guard = RemoteProcess(
        config,
        scripts.program("keep_guard", staged),
        on_stdout=lambda _: None,
        on_stderr=lambda _: None,
    )
    with guard, POOL.session(config) as (_link, channel):
        channel.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns, height=size.lines)
        channel.exec_command(join(exec_argv(config, unstage, pty=True)))
        code = _pump(channel)
    # The session's watcher removes the directory too, unless something killed it first.
    run_command(config, f"rm -rf {join([staged])}", hide=True, in_stream=False)
    return Result(command, code)


def window_size() -> os.terminal_size:
    """The terminal's own window size (asked of the tty, as ssh does); ``COLUMNS``/``LINES``
    only without a terminal: exported values go stale on the first resize."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            return os.get_terminal_size(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
    return shutil.get_terminal_size()


def _pump(channel: Any) -> int:
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None

    def resize(*_: object) -> None:
        size = window_size()
        channel.resize_pty(width=size.columns, height=size.lines)

    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        if is_tty:
            tty.setraw(stdin_fd)
        stdin_open = True
        while True:
            readable = [channel] + ([stdin_fd] if stdin_open else [])
            ready, _, _ = select.select(readable, [], [], 0.5)
            if channel in ready:
                data = channel.recv(1 << 16)
                if not data:
                    break
                os.write(stdout_fd, data)
            if stdin_fd in ready:
                data = os.read(stdin_fd, 1 << 16)
                if data:
                    channel.sendall(data)
                else:
                    stdin_open = False
                    channel.shutdown_write()
            if channel.exit_status_ready() and not channel.recv_ready():
                break
        return channel.recv_exit_status()
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
