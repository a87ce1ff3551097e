"""Interactive commands get a pty end to end, with the laptop terminal's window size."""

from __future__ import annotations

import fcntl
import os
import pty
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

    test_pty_command_sees_a_terminal_of_the_laptop_size(lab)
    left = run_in_runner(runner_config, "ls /tmp | grep -c '^dapfab-cmd' || true", hide=True)
    assert left.stdout.strip() == "0"
