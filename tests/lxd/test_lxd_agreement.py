"""The lab's own ``incus`` and the real ``lxc exec`` (LXD) agree where dapfab depends on them.

Every test runs on both lab backends: ``netns`` (the lab's model of the client and the VM)
and ``lxd`` (an LXD container and the real client). A difference is a bug in the model.
One lab is up at a time (the lab id from ``DAPFAB_LAB_ID``); the LXD one needs ``apt-get
install lxd debootstrap`` and a cached image (built on first use, about a minute).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from dapfab.remote.incus import EXIT_ERROR_LINES
from dapfab.testing import waiting
from dapfab.testing.plugin import lab_unavailable

pytestmark = pytest.mark.lab

BACKENDS = ["netns", "lxd"]


@pytest.fixture(scope="module", params=BACKENDS)
def runner_lab(request: pytest.FixtureRequest) -> Iterator[object]:
    """A lab of the given backend, up for this module's tests of that backend."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    from dapfab.testing.lab import Lab

    lab = Lab(backend=request.param)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def lab(runner_lab) -> Iterator[object]:
    """The module's lab, restored after each test."""
    yield runner_lab
    runner_lab.reset()


@pytest.fixture
def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def client(lab, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the lab's client (``incus`` or ``lxc``) on mgmt."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return lab.run("mgmt", [lab.incus, *args], **kwargs)


def start_exec(lab, *command: str) -> subprocess.Popen:
    """``<client> exec VM -- COMMAND`` on mgmt in the background."""
    return lab.popen("mgmt", [lab.incus, "exec", lab.vm_name, "--", *command],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ssh(lab, command: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(["ssh", "-F", lab.ssh_config, "mgmt", command], **kwargs)


wait_until = functools.partial(waiting.wait_until, timeout=15.0)


def find(lab, host: str, marker: str) -> list[tuple[int, list[str]]]:
    return [(pid, argv) for pid, argv in lab.processes(host) if any(marker in a for a in argv)]


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def duration(marker: str) -> str:
    """A `sleep` argument unique to the test: its processes are found by argv."""
    return f"1000.{int(marker[1:], 16) % 10**6}"


def host_pids(argv: list[str]) -> list[int]:
    """Every process on this machine with exactly ``argv`` (nested PID namespaces too)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] == [a.encode() for a in argv]:
                    found.append(int(name))
        except (OSError, ValueError):
            pass
    return found


def kill_all(lab, host: str, marker: str) -> None:
    for pid, _ in find(lab, host, marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- exit codes, streams, stdin --------------------------------------------------------------


@pytest.mark.parametrize(("script", "code"), [("exit 7", 7), ("kill -9 $$", 137), ("exit 0", 0)])
def test_exit_code_is_the_top_processs(lab, script, code):
    done = client(lab, "exec", lab.vm_name, "--", "sh", "-c", script)
    assert (done.returncode, done.stderr) == (code, "")


@pytest.mark.parametrize("code", [127, 126])
def test_exit_127_and_126_add_the_servers_error_line_after_the_output(lab, code):
    done = client(lab, "exec", lab.vm_name, "--", "sh", "-c", f"echo out; echo err >&2; exit {code}")
    assert (done.returncode, done.stdout) == (code, "out\n")
    assert done.stderr == "err\n" + EXIT_ERROR_LINES[code].decode()


def test_a_missing_command_is_command_not_found(lab):
    done = client(lab, "exec", lab.vm_name, "--", "no-such-command-here")
    assert (done.returncode, done.stdout, done.stderr) == (127, "", "Error: Command not found\n")


def test_stdout_and_stderr_stay_separate_without_a_pty(lab):
    done = client(lab, "exec", lab.vm_name, "--", "sh", "-c", "echo out; echo err >&2")
    assert (done.stdout, done.stderr) == ("out\n", "err\n")


def test_stdin_eof_reaches_the_command(lab):
    done = client(lab, "exec", lab.vm_name, "--", "cat", input="one\ntwo", stdin=None, timeout=20)
    assert (done.returncode, done.stdout) == (0, "one\ntwo")


def test_disable_stdin_gives_the_command_dev_null(lab):
    done = client(lab, "exec", "-n", lab.vm_name, "--", "cat", input="x", stdin=None, timeout=20)
    assert (done.returncode, done.stdout) == (0, "")


def test_output_written_before_exit_is_all_delivered(lab):
    done = client(lab, "exec", lab.vm_name, "--", "head", "-c", "3000000", "/dev/zero")
    assert len(done.stdout) == 3000000


def test_the_command_runs_as_root_in_root_home_with_cwd_and_env(lab):
    done = client(lab, "exec", lab.vm_name, "--env", "GREETING=hi there", "--", "sh", "-c",
                  'echo "$(id -u)|$HOME|$PWD|$GREETING|$USER"')
    assert done.stdout == "0|/root|/root|hi there|root\n"
    assert client(lab, "exec", lab.vm_name, "--cwd", "/tmp", "--", "pwd").stdout == "/tmp\n"


def test_force_interactive_gives_a_pty_and_merges_the_streams(lab):
    proc = lab.popen("mgmt", [lab.incus, "exec", "-t", lab.vm_name, "--", "sh", "-c",
                              # The pause lets the pty drain: real LXD drops what a
                              # command writes to a pty just before it exits.
                              "tty; echo err >&2; sleep 0.5"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = proc.stdout.read()
        proc.stdin.close()
        assert proc.wait(20) == 0
        lines = out.decode().split("\r\n")
        assert lines[0].startswith("/dev/pts/") and lines[1] == "err"
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()


def test_without_a_pty_the_client_waits_for_whoever_holds_the_output(lab):
    done = client(lab, "exec", lab.vm_name, "--", "sh", "-c", "(sleep 1; echo late) & echo early")
    assert (done.returncode, done.stdout) == (0, "early\nlate\n")


# -- instance state ----------------------------------------------------------------------


def test_unknown_instance_is_not_found_with_exit_1(lab):
    done = client(lab, "exec", "nope", "--", "true")
    assert done.returncode == 1
    # Incus: 'Error: Failed to fetch instance "nope" in project "default": Instance not found';
    # LXD 5.0: 'Error: Instance not found'. dapfab matches the stable fragment.
    assert done.stderr.startswith("Error: ") and done.stderr.endswith("Instance not found\n")


def test_a_stopped_instance_is_not_running_and_starts_again(lab):
    lab.stop_runner()
    done = client(lab, "exec", lab.vm_name, "--", "true")
    assert (done.returncode, done.stderr) == (1, "Error: Instance is not running\n")
    assert client(lab, "list", "--format", "csv", "-c", "ns").stdout == f"{lab.vm_name},STOPPED\n"
    lab.start_runner()
    assert client(lab, "exec", lab.vm_name, "--", "true").returncode == 0
    assert client(lab, "list", "--format", "csv", "-c", "ns").stdout == f"{lab.vm_name},RUNNING\n"


def test_stopping_the_instance_kills_everything_in_it(lab, marker):
    proc = lab.popen("runner", ["sh", "-c", f"sleep 1000; : {marker}"])
    wait_until(lambda: find(lab, "runner", marker), what="the command")
    lab.stop_runner()
    assert find(lab, "runner", marker) == []
    proc.wait(timeout=20)


def test_without_the_client_the_login_shell_says_command_not_found(lab):
    lab.remove_incus()
    assert ssh(lab, f"{lab.incus} list").returncode == 127
    lab.restore_incus()
    assert ssh(lab, f"{lab.incus} list").returncode == 0


# -- lifetimes -------------------------------------------------------------------------


# The top process traps every forwarded signal; its child restores the default action for
# all of them (bash makes background children ignore INT and QUIT), so a signal sent to the
# process group would kill the child.
TRAPPER = """
for s in TERM INT QUIT HUP; do trap "echo got-$s; exit 0" $s; done
env --default-signal sleep {duration} >/dev/null 2>&1 &
echo ready
wait
"""


@pytest.mark.parametrize("name", ["TERM", "INT", "QUIT", "HUP"])
def test_a_signal_to_the_client_reaches_the_top_process_only(lab, marker, name):
    child = ["sleep", duration(marker)]
    proc = start_exec(lab, "bash", "-c", TRAPPER.format(duration=child[1]))
    try:
        assert proc.stdout.readline() == b"ready\n"
        wait_until(lambda: child in [a for _, a in lab.processes("runner")], what="the child")
        proc.send_signal(getattr(signal, f"SIG{name}"))
        out, _ = proc.communicate(timeout=20)
        expected = "TERM" if name == "HUP" else name  # HUP goes on as TERM without a tty
        assert out == f"got-{expected}\n".encode()
        assert proc.returncode == 0
        assert child in [a for _, a in lab.processes("runner")], \
            "the child in the top process's group was signalled"
    finally:
        proc.kill()
        proc.wait()
        kill_all(lab, "runner", child[1])


def test_when_the_client_dies_only_the_top_process_is_killed(lab, marker):
    proc = start_exec(lab, "bash", "-c", f"sleep 1000 & echo ready; wait; : {marker}")
    try:
        assert proc.stdout.readline() == b"ready\n"
        wait_until(lambda: len(find(lab, "runner", marker)) == 1
                   and ["sleep", "1000"] in [argv for _, argv in lab.processes("runner")],
                   what="the background sleep to exec")
        [(top, _)] = find(lab, "runner", marker)
        [child] = [p for p, argv in lab.processes("runner") if argv == ["sleep", "1000"] and ppid(p) == top]
        proc.kill()
        proc.wait()
        wait_until(lambda: not find(lab, "runner", marker), what="the top process to be killed")
        assert child in lab.pids("runner"), "the child of the top process should survive"
        # LXD's exec helper may hold the orphan for a moment before it exits in turn.
        wait_until(lambda: ppid(child) == lab.backend.init_pid(), timeout=5,
                   what="the orphan adopted by the VM's PID 1")
        os.kill(child, signal.SIGKILL)
    finally:
        proc.kill()
        kill_all(lab, "runner", marker)


def test_bash_lc_execs_a_simple_command_so_it_dies_with_the_client(lab, marker):
    command = ["sleep", duration(marker)]
    proc = start_exec(lab, "bash", "-lc", " ".join(command))
    try:
        wait_until(lambda: command in [a for _, a in lab.processes("runner")], what="the command")
        proc.kill()
        proc.wait()
        wait_until(lambda: command not in [a for _, a in lab.processes("runner")],
                   what="the command to be killed")
    finally:
        proc.kill()
        kill_all(lab, "runner", command[1])


def test_stdin_passes_through_ssh_and_the_client_to_its_eof(lab):
    done = ssh(lab, f"{lab.incus} exec {lab.vm_name} -- cat", input="one\ntwo\n")
    assert (done.returncode, done.stdout) == (0, "one\ntwo\n")


def test_killing_ssh_without_a_pty_leaves_command_and_client_running(lab, marker):
    proc = subprocess.Popen(["ssh", "-F", lab.ssh_config, "mgmt",
                             f"{lab.incus} exec {lab.vm_name} -- sh -c 'echo ready; sleep 1000; : {marker}'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def clients() -> list[int]:
        pids = {pid for pid, argv in find(lab, "mgmt", marker) if "exec" in argv}
        return [pid for pid in pids if ppid(pid) not in pids]

    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.kill()
        proc.wait()
        time.sleep(1.5)  # give sshd time to notice the dead connection and close the channel
        assert find(lab, "runner", marker), "the remote command should still run"
        assert clients(), "the exec client on mgmt should still run"
    finally:
        for pid in clients():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not find(lab, "runner", marker), what="the command to be killed")


def test_unshare_kill_child_tears_the_whole_tree_down_when_the_client_dies(lab, marker):
    child = ["sleep", duration(marker)]
    proc = start_exec(lab, "unshare", "--pid", "--mount-proc", "--fork", "--kill-child", "--",
                      "bash", "-c", f"{child[1]} & {child[1]} & echo ready; wait".replace(
                          child[1], " ".join(child)))
    try:
        assert proc.stdout.readline() == b"ready\n"
        wait_until(lambda: len(host_pids(child)) == 2, what="both children")
        proc.kill()
        proc.wait()
        wait_until(lambda: not host_pids(child), what="the whole tree to go")
    finally:
        proc.kill()
        for pid in host_pids(child):
            os.kill(pid, signal.SIGKILL)
