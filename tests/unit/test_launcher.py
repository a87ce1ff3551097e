"""The remote launcher run by real bash and util-linux `unshare` on this machine (as the VM would)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from dapfab import launcher

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --pid needs root")


# A VM's clean login environment: this machine's root ~/.bashrc runs `pyenv rehash`, and
# killing a login shell inside it (which these tests do) leaves pyenv's lock behind.
CLEAN_HOME = tempfile.mkdtemp(prefix="dapfab-launcher-home-")
VM_ENV = {"HOME": CLEAN_HOME, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        launcher.vm_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=VM_ENV,
    )
    proc.stdin.write(launcher.command_frame(code))
    proc.stdin.flush()
    return proc


def alive(marker: str) -> bool:
    """Whether any process on this machine has `marker` in its command line."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return bool(out.strip())


def gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(marker):
            return True
        time.sleep(0.2)
    return False


def test_frames_are_length_prefixed():
    assert launcher.command_frame("echo hi") == b"dapfab1 7\necho hi"
    assert launcher.data_frame(b"\0\n") == b"d 2\n\0\n"


def test_launch_command_shows_only_the_incus_invocation():
    line = launcher.launch_command("incus", "vm1", "proj")
    assert line.startswith("incus --project proj exec vm1 -- unshare --pid")
    assert "kubectl" not in line


@needs_root
def test_launcher_runs_the_code_with_stdin_and_exit_code():
    proc = start("cat; echo; echo err >&2; exit 5")
    proc.stdin.write(launcher.data_frame(b"\xffdata"))
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(10) == 5
    assert out == launcher.STARTED + b"\xffdata\n"
    assert err == b"err\n"
    proc.stdin.close()


@needs_root
def test_code_with_trailing_newlines_and_quotes_arrives_exactly():
    code = "printf '%s|' \"$0\" 'a\"b' \"it's\"\n\n"
    proc = start(code)
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    assert proc.stdout.read() == launcher.STARTED + b"bash|a\"b|it's|"
    assert proc.wait(10) == 0


@needs_root
@pytest.mark.parametrize("how", ["quit", "eof", "silence"])
def test_the_whole_tree_is_killed_when_the_caller_goes(how):
    marker = f"dapfab-test-{how}-{os.getpid()}"
    # The marker is $0 of shells that stay parents of their sleep: a tree three deep.
    hold = "bash -c 'sleep 1000; :' {}"
    proc = start(f"{hold.format(marker)} & ({hold.format(marker)}) & {hold.format(marker)}")
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    assert proc.stdout.read(len(launcher.STARTED)) == launcher.STARTED
    deadline = time.monotonic() + 5
    while not alive(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(marker)
    if how == "quit":
        proc.stdin.write(launcher.QUIT_FRAME)
        proc.stdin.flush()
        bound = 5
    elif how == "eof":
        proc.stdin.close()
        bound = 5
    else:  # no heartbeat: a frozen laptop or a dropped link
        bound = launcher.HEARTBEAT_TIMEOUT + 8
    try:
        assert gone_within(marker, bound)
        assert proc.wait(5) != 0
    finally:
        subprocess.run(["pkill", "-9", "-f", marker])
        proc.kill()


@needs_root
def test_heartbeats_keep_a_quiet_command_alive():
    proc = start("sleep 14; echo done")
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        proc.stdin.write(launcher.HEARTBEAT_FRAME)
        proc.stdin.flush()
        time.sleep(launcher.HEARTBEAT_INTERVAL)
    assert proc.stdout.read() == launcher.STARTED + b"done\n"
    assert proc.wait(5) == 0


def test_runner_failure_names_a_missing_vm():
    err = launcher.runner_failure(
        1, b'Error: Failed to fetch instance "nope" in project "default": Instance not found\n',
        incus="incus", vm_name="nope")
    assert err.exit_code == 125 and "not found" in err.message and "incus list" in err.hint


def test_runner_failure_names_a_stopped_vm():
    err = launcher.runner_failure(1, b"Error: Instance is not running\n", incus="incus",
                                  vm_name="vm")
    assert err.exit_code == 125 and "not running" in err.message and "incus start vm" in err.hint


def test_runner_failure_names_a_missing_incus_client():
    err = launcher.runner_failure(127, b"bash: line 1: incus: command not found\n",
                                  incus="incus", vm_name="vm")
    assert err.exit_code == 125 and "not installed" in err.message

