"""The lab's ``incus`` on mgmt behaves like the real client where dapfab depends on it."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from lab_helpers import PYTHON, find, ppid, ssh

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab


def incus(lab, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``incus ARGS`` on mgmt (from its own namespaces, as a login shell would)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return lab.run("mgmt", ["incus", *args], **kwargs)


def start_exec(lab, *command: str) -> subprocess.Popen:
    """An ``incus exec`` client on mgmt in the background; its pid is the client's."""
    return lab.popen("mgmt", ["incus", "exec", lab.vm_name, "--", *command],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_all(lab, host: str, marker: str) -> None:
    for pid, _ in find(lab, host, marker):
        os.kill(pid, signal.SIGKILL)


def exec_clients(lab, marker: str) -> list[int]:
    """The incus exec clients on mgmt running a command with ``marker`` (not their monitors,
    which are their children and carry the same argv)."""
    pids = {pid for pid, argv in find(lab, "mgmt", marker) if "exec" in argv}
    return [pid for pid in pids if ppid(pid) not in pids]


def test_exit_code_is_the_commands(lab):
    assert incus(lab, "exec", lab.vm_name, "--", "sh", "-c", "exit 7").returncode == 7


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(lab):
    assert incus(lab, "exec", lab.vm_name, "--", "sh", "-c", "kill -9 $$").returncode == 137


def test_stdout_and_stderr_stay_separate_without_a_pty(lab):
    done = incus(lab, "exec", lab.vm_name, "--", "sh", "-c", "echo out; echo err >&2")
    assert (done.stdout, done.stderr) == ("out\n", "err\n")


def test_stdin_eof_reaches_the_command(lab):
    done = incus(lab, "exec", lab.vm_name, "--", "cat", input="one\ntwo", stdin=None, timeout=10)
    assert (done.returncode, done.stdout) == (0, "one\ntwo")


def test_disable_stdin_gives_the_command_dev_null(lab):
    done = incus(lab, "exec", "-n", lab.vm_name, "--", "cat", input="x", stdin=None, timeout=10)
    assert (done.returncode, done.stdout) == (0, "")


def test_output_written_before_exit_is_all_delivered(lab):
    done = incus(lab, "exec", lab.vm_name, "--", "head", "-c", "3000000", "/dev/zero")
    assert len(done.stdout) == 3000000


def test_unknown_instance_errors_like_the_real_one(lab):
    done = incus(lab, "exec", "nope", "--", "true")
    assert done.returncode == 1
    assert done.stderr == 'Error: Failed to fetch instance "nope" in project "default": Instance not found\n'


def test_unknown_project_does_not_find_the_instance(lab):
    done = incus(lab, "--project", "other", "exec", lab.vm_name, "--", "true")
    assert done.returncode == 1
    assert done.stderr == (f'Error: Failed to fetch instance "{lab.vm_name}" in project "other": '
                           "Instance not found\n")


def test_project_default_and_the_local_remote_find_the_instance(lab):
    done = incus(lab, "--project", "default", "exec", f"local:{lab.vm_name}", "--", "true")
    assert done.returncode == 0, done.stderr


def test_stopped_instance_errors_like_the_real_one(lab):
    lab.stop_runner()
    done = incus(lab, "exec", lab.vm_name, "--", "true")
    assert (done.returncode, done.stderr) == (1, "Error: Instance is not running\n")


def test_a_started_instance_runs_commands_again(lab):
    lab.stop_runner()
    lab.start_runner()
    assert incus(lab, "exec", lab.vm_name, "--", "true").returncode == 0


def test_stopping_the_runner_kills_everything_in_it(lab, marker):
    proc = lab.popen("runner", ["sh", "-c", f"sleep 1000; : {marker}"])
    wait_until(lambda: find(lab, "runner", marker), what="the command")
    lab.stop_runner()
    assert find(lab, "runner", marker) == []
    proc.wait(timeout=10)


def test_the_command_runs_in_the_runner_as_root_with_its_home_and_env(lab):
    done = incus(lab, "exec", lab.vm_name, "--env", "GREETING=hi there", "--", "sh", "-c",
                 'echo "$(id -u)|$HOME|$PWD|$(hostname)|$GREETING|$USER"; ip -o -4 addr show eth0')
    first, address = done.stdout.splitlines()
    assert first == f"0|/root|/root|{lab.vm_name}|hi there|root"
    assert f" {lab.address('runner')}/" in address


def test_cwd_sets_the_working_directory(lab):
    assert incus(lab, "exec", lab.vm_name, "--cwd", "/tmp", "--", "pwd").stdout == "/tmp\n"


def test_force_interactive_gives_the_command_a_pty(lab):
    done = incus(lab, "exec", "-t", lab.vm_name, "--", "sh", "-c", "tty")
    assert done.returncode == 0
    assert done.stdout.startswith("/dev/pts/")


def test_list_and_info_show_the_instance_running(lab):
    assert incus(lab, "list", lab.vm_name, "--format", "csv", "-c", "ns").stdout == f"{lab.vm_name},RUNNING\n"
    info = incus(lab, "info", lab.vm_name).stdout
    assert f"Name: {lab.vm_name}\nStatus: RUNNING\n" in info


def test_list_shows_a_stopped_instance_as_stopped(lab):
    lab.stop_runner()
    assert incus(lab, "list", lab.vm_name, "--format", "csv", "-c", "ns").stdout == f"{lab.vm_name},STOPPED\n"


def test_without_incus_the_login_shell_says_command_not_found(lab):
    lab.remove_incus()
    done = ssh(lab, "mgmt", "incus list")
    assert done.returncode == 127
    lab.restore_incus()
    assert ssh(lab, "mgmt", "incus list").returncode == 0


SIGNALS = ["TERM", "INT", "QUIT", "USR1", "USR2", "HUP"]

# The top process traps every signal; its child restores the default action for all of
# them (bash makes background children ignore INT and QUIT), so a signal sent to the
# process group would kill the child. The child lets go of stdout and stderr once ready:
# without a pty the client waits until the output's last writer closes it.
TRAPPER = """
for s in TERM INT QUIT USR1 USR2 HUP; do trap "echo got-$s; exit 0" $s; done
{python} -I -c 'import signal, time
for s in "TERM INT QUIT USR1 USR2 HUP".split(): signal.signal(getattr(signal, "SIG" + s), signal.SIG_DFL)
print("ready", flush=True)
import os; null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)
time.sleep(1000)' {marker} &
wait
"""


@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_to_the_client_reaches_the_top_process_only(lab, marker, name):
    client = start_exec(lab, "bash", "-c", TRAPPER.format(python=PYTHON, marker=marker))
    try:
        assert client.stdout.readline() == b"ready\n"
        client.send_signal(getattr(signal, f"SIG{name}"))
        out, _ = client.communicate(timeout=10)
        expected = "TERM" if name == "HUP" else name  # HUP goes on as TERM without a tty
        assert out == f"got-{expected}\n".encode()
        assert client.returncode == 0
        assert find(lab, "runner", marker), "the child in the top process's group was signalled"
    finally:
        client.kill()
        client.wait()
        kill_all(lab, "runner", marker)


def test_when_the_client_dies_only_the_top_process_is_killed(lab, marker):
    client = start_exec(lab, "bash", "-c", f"sleep 1000 & echo ready; wait; : {marker}")
    try:
        assert client.stdout.readline() == b"ready\n"
        # Until `sleep` execs, the forked subshell still carries the marker in its argv.
        wait_until(lambda: len(find(lab, "runner", marker)) == 1
                   and ["sleep", "1000"] in [argv for _, argv in lab.processes("runner")],
                   what="the background sleep to exec")
        [(top, _)] = find(lab, "runner", marker)
        [child] = [p for p, argv in lab.processes("runner") if argv == ["sleep", "1000"] and ppid(p) == top]
        client.kill()
        client.wait()
        wait_until(lambda: not find(lab, "runner", marker), what="the top process to be killed")
        assert child in lab.pids("runner"), "the child of the top process should survive"
        # LXD's exec helper may hold the orphan for a moment before it exits in turn.
        wait_until(lambda: ppid(child) == lab.backend.init_pid(), timeout=5,
                   what="the orphan adopted by the VM's PID 1")
        os.kill(child, signal.SIGKILL)
    finally:
        client.kill()
        kill_all(lab, "runner", marker)


def test_when_the_client_dies_the_exec_server_side_goes_too(lab, marker):
    client = start_exec(lab, "sh", "-c", f"echo ready; sleep 1000; : {marker}")
    assert client.stdout.readline() == b"ready\n"
    [monitor] = [pid for pid, _ in find(lab, "mgmt", marker) if ppid(pid) == client.pid]
    client.kill()
    client.wait()
    wait_until(lambda: not find(lab, "runner", marker), what="the top process to be killed")
    wait_until(lambda: monitor not in lab.pids("mgmt"), what="the exec's monitor to exit")
    assert find(lab, "mgmt", marker) == []


def test_stdin_passes_through_ssh_and_incus_to_its_eof(lab):
    done = ssh(lab, "mgmt", f"incus exec {lab.vm_name} -- cat", input="one\ntwo\n")
    assert (done.returncode, done.stdout) == (0, "one\ntwo\n")


def _ssh_sessions(lab) -> set[int]:
    """PIDs of mgmt's per-connection sshd processes."""
    return {pid for pid, argv in lab.processes("mgmt") if argv[0].startswith("sshd: root@")}


def test_killing_ssh_without_a_pty_leaves_command_and_client_running(lab, marker):
    before = _ssh_sessions(lab)  # other connections to mgmt (this process's pool) stay
    proc = subprocess.Popen(["ssh", "-F", lab.ssh_config, "mgmt",
                             f"incus exec {lab.vm_name} -- sh -c 'echo ready; sleep 1000; : {marker}'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == b"ready\n"
        sessions = _ssh_sessions(lab) - before
        assert sessions, "the connection's sshd session process"
        proc.kill()
        proc.wait()
        # sshd noticed the dead connection and closed the channel once its session is gone
        wait_until(lambda: not sessions & _ssh_sessions(lab), 20, "sshd to close the session")
        assert find(lab, "runner", marker), "the remote command should still run"
        clients = exec_clients(lab, marker)
        assert clients, "the incus exec client on mgmt should still run"
    finally:
        for pid in exec_clients(lab, marker):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not find(lab, "runner", marker), what="the command to be killed")
