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


@pytest.mark.parametrize("transport", ["true", "false"], ids=["websocket", "spdy"])
def test_kubectl_exec_it_works_end_to_end_on_a_terminal(lab, transport):
    """The README's ``inv k8s.kubectl -- exec -it web -- sh``: a pty from the laptop's terminal
    through the runner's kubectl to a pty in the pod, with the laptop's window size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
    argv = [sys.executable, "-m", "invoke", "-f", lab.runtime_config, "k8s.kubectl", "--", "exec",
            "-it", "web", "--", "sh", "-c", "stty size; test -t 0 && echo POD-TTY; read -r line; "
            'echo "got $line"; exit 3']
    # The runner's kubectl picks WebSocket or SPDY from its login environment.
    lab.run("runner", f"echo 'export KUBECTL_REMOTE_COMMAND_WEBSOCKETS={transport}' > ~/.bash_profile",
            check=True)
    # COLUMNS/LINES exported by a shell go stale on a resize: the terminal's own size wins.
    env = {**os.environ, "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0), env=env)
    os.close(slave)
    output, sent = b"", False
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
            if b"POD-TTY" in output and not sent:
                os.write(master, b"typed on the laptop\r")
                sent = True
        code = proc.wait(30)
    finally:
        lab.run("runner", "rm -f ~/.bash_profile")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert "33 99" in text and "POD-TTY" in text and "got typed on the laptop" in text, text
    assert code == 3, text
