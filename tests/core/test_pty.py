"""Interactive commands get a pty end to end, with the laptop terminal's window size."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.lab

SCRIPT = """
from dapfab import RunnerConfig, run_in_runner
r = run_in_runner(RunnerConfig.from_env(), 'stty size; test -t 0 && test -t 1 && echo BOTH-TTY; exit 3', pty=True, warn=True)
print('EXIT', r.exited)
"""


def test_pty_command_sees_a_terminal_of_the_laptop_size(lab):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 111, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, **lab.env()}, close_fds=True)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if b"EXIT" in output and output.rstrip().endswith(b"3"):
                break
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert "37 111" in text
    assert "BOTH-TTY" in text
    assert "EXIT 3" in text


def test_the_staged_command_file_is_gone_afterwards(lab, runner_config):
    from dapfab import run_in_runner
    from dapfab.testing.waiting import wait_until

    test_pty_command_sees_a_terminal_of_the_laptop_size(lab)
    # The command file goes at once, its guard file when the session ends.
    wait_until(lambda: run_in_runner(runner_config, "ls -d /tmp/dapfab.* 2>/dev/null | wc -l",
                                     hide=True).stdout.strip() == "0",
               timeout=5, what="no private dapfab directory left in the VM's /tmp")


FROZEN = """
import os, signal
from dapfab import RunnerConfig, run_in_runner
os.write(1, b"GO\\n")
run_in_runner(RunnerConfig.from_env(), 'exec -a dapfab-pty-frozen sleep 1000', pty=True)
"""


def test_a_frozen_laptop_does_not_leave_its_pty_session_running(lab):
    """No hangup reaches the VM when the laptop freezes: the session must still end, within
    the launcher's heartbeat timeout plus the guard's staleness (about 17 s)."""
    from dapfab.testing.waiting import wait_until

    def remote_sleeps() -> list[int]:
        # The session's top process (its command runs in a PID namespace below it).
        return [pid for pid, argv in lab.processes("runner")
                if "dapfab-pty-frozen" in " ".join(argv)]

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", FROZEN], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, **lab.env()}, close_fds=True)
    os.close(slave)
    try:
        wait_until(remote_sleeps, timeout=30, what="the pty command running in the VM")
        proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(lambda: not remote_sleeps(), timeout=30, what="the pty command gone")
        assert time.monotonic() - frozen < 25
        left = [argv for _, argv in lab.processes("runner") if "dapfab-cmd" in " ".join(argv)]
        assert left == []  # the watcher and the guard companion are gone too
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.close(master)
