"""The keeper on the lab: calls after the first go through it, with the CLI's own streams,
and every lifetime bound of a direct call holds through it (docs/design.md §12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from trust_helpers import REPO, cli_argv, cli_env, sshd_logins, start_cli

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

PERSIST = {"DAP_SSH_PERSIST": "60"}  # calls in these tests use keepers


def keeper(lab) -> int:
    """The one keeper of the lab's connection (waits for it to come up)."""
    (pid,) = wait_until(lambda: lab.keepers(), timeout=20, what="a keeper")
    return pid


def cli(lab, *argv: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv(*argv), cwd=REPO, env=cli_env(lab, {**PERSIST, **(env or {})}),
                          capture_output=True, timeout=120, **kwargs)


def warm(lab) -> int:
    """Leave a keeper: one call with persist on, the keeper it started, and one call
    through that keeper (its connection is open from then on)."""
    for _ in range(2):
        done = cli(lab, "k8s.kubectl", "--", "version", "--client")
        assert done.returncode == 0, done.stderr
        pid = keeper(lab)
    return pid


def python(lab, code: str, **kwargs) -> subprocess.Popen:
    env = cli_env(lab, PERSIST)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                            **kwargs)


def test_a_call_after_the_first_goes_through_the_keeper_without_paramiko(lab):
    warm(lab)
    logins = sshd_logins(lab)
    proc = python(lab, """
        import sys
        from dapfab import run_in_runner
        from dapfab.config import RunnerConfig
        result = run_in_runner(RunnerConfig.from_env(), "echo through; exit 3", hide=True, warn=True)
        loaded = sorted({m.split('.')[0] for m in sys.modules} & {'paramiko', 'fabric'})
        print(repr((result.exited, result.stdout, loaded)))
    """, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert out.decode().strip() == repr((3, "through\n", [])), err
    assert sshd_logins(lab) == logins  # no new SSH connection: the keeper's was used


def test_argv_stdin_and_exit_codes_arrive_exactly_through_the_keeper(lab, plugins):
    warm(lab)
    logins = sshd_logins(lab)
    argv = ["--from-literal=k=$(id) x", "", "a\nb", "'\"\\", "ünï", "-n", "--"]
    done = cli(lab, "k8s.kubectl", "--", "argv-exact", *argv)
    assert (done.returncode, done.stdout) == (0, b"".join(a.encode() + b"\0" for a in argv))
    blob = os.urandom(3 << 20)
    proc = python(lab, """
        import sys
        from dapfab import run_in_runner
        from dapfab.config import RunnerConfig
        sys.exit(run_in_runner(RunnerConfig.from_env(), "sha256sum; exit 5", warn=True).exited)
    """, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(blob, timeout=60)
    import hashlib

    assert (proc.returncode, out.split()[0].decode()) == (5, hashlib.sha256(blob).hexdigest())
    assert sshd_logins(lab) == logins


def stream(lab) -> tuple[subprocess.Popen, list[bytes]]:
    """``k8s.kubectl -- stream`` (a tick every 0.5 s) through the keeper; its lines.

    The client gets a process group of its own in this session, as a shell job does: a
    group whose parent is outside the session (a CI job whose shell has exited) is
    orphaned, and the kernel discards Ctrl-Z's stop there."""
    proc = start_cli(lab, "k8s.kubectl", "--", "stream", env=PERSIST, process_group=0,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[bytes] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")),
                     daemon=True).start()
    wait_until(lambda: len(lines) >= 2, what="ticks")
    return proc, lines


def streaming(lab) -> bool:
    return lab.running("runner", "kubectl-stream")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_client_stops_the_remote_command_first(lab, plugins, sig, code):
    warm(lab)
    proc, _ = stream(lab)
    os.kill(proc.pid, sig)
    assert proc.wait(20) == code
    assert not streaming(lab)  # gone before the client returned
    assert b"interrupted" in proc.stderr.read()


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_killed_or_frozen_client_loses_its_remote_command_within_20_s(lab, plugins, how):
    warm(lab)
    proc, _ = stream(lab)
    try:
        os.kill(proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        wait_until(lambda: not streaming(lab), timeout=20, what="the remote command gone")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_ctrl_z_pauses_the_command_and_fg_resumes_it(lab, plugins):
    warm(lab)
    proc, lines = stream(lab)
    try:
        os.kill(proc.pid, signal.SIGTSTP)
        wait_until(lambda: open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
                   what="the client stopped")
        time.sleep(1)
        seen = len(lines)
        time.sleep(12)  # past the heartbeat bound: a paused client is not a frozen one
        assert len(lines) == seen and streaming(lab)
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: len(lines) > seen + 10, what="the paused ticks, then new ones")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_killed_or_frozen_keeper_fails_its_clients_with_255_and_its_commands_end(
    lab, plugins, how
):
    pid = warm(lab)
    proc, _ = stream(lab)
    try:
        if how == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            lab.freeze(pid)
        assert proc.wait(25) == 255
        err = proc.stderr.read().decode()
        assert err.startswith("dapfab: keeper: the keeper") and str(pid) in err, err
        wait_until(lambda: not streaming(lab), timeout=20, what="the remote command gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_keeper_that_does_not_answer_is_bypassed_and_replaced(lab):
    stuck = warm(lab)
    lab.freeze(stuck)
    started = time.monotonic()
    done = cli(lab, "k8s.kubectl", "--", "get", "pods", "-o", "name")
    assert (done.returncode, done.stdout) == (0, b"pod/web\n"), done.stderr
    assert time.monotonic() - started < 15
    wait_until(lambda: lab.keepers() and stuck not in lab.keepers(), timeout=20,
               what="a new keeper in place of the stuck one")
    again = cli(lab, "k8s.kubectl", "--", "get", "pods", "-o", "name")
    assert again.stdout == b"pod/web\n"


def test_the_keeper_leaves_persist_seconds_after_its_last_call(lab):
    done = cli(lab, "k8s.kubectl", "--", "version", "--client", env={"DAP_SSH_PERSIST": "2"})
    assert done.returncode == 0
    pid = keeper(lab)
    wait_until(lambda: pid not in lab.keepers(), timeout=20, what="the idle keeper gone")
    wait_until(lambda: not lab.running("runner", "dapfab-helper"), timeout=20,
               what="its helper gone with it")


def test_persist_0_starts_no_keeper(lab):
    for _ in range(2):
        assert cli(lab, "k8s.kubectl", "--", "version", "--client",
                   env={"DAP_SSH_PERSIST": "0"}).returncode == 0
    time.sleep(2)
    assert lab.keepers() == []


def test_config_show_and_disconnect(lab):
    assert b"keeper: none" in cli(lab, "config.show").stdout
    pid = warm(lab)
    assert f"keeper: alive (pid {pid})".encode() in cli(lab, "config.show").stdout
    done = cli(lab, "config.disconnect")
    assert done.stdout == f"stopped 1 keeper(s) (pid {pid})\n".encode()
    wait_until(lambda: not lab.keepers(), timeout=10, what="the keeper gone")
    assert b"keeper: none" in cli(lab, "config.show").stdout
    first = warm(lab)
    cli(lab, "k8s.kubectl", "--", "version", "--client", env={"DAP_SSH_CONNECT_TIMEOUT": "9"})
    second = wait_until(lambda: [p for p in lab.keepers() if p != first], timeout=20,
                        what="a keeper of another identity")
    done = cli(lab, "config.disconnect", "--all")
    assert done.stdout.startswith(b"stopped 2 keeper(s)"), done.stdout
    wait_until(lambda: not lab.keepers(), timeout=10, what="both keepers gone")
    assert second


def test_an_edited_known_hosts_never_reaches_the_old_keeper(lab):
    old = warm(lab)
    known = lab.known_hosts
    saved = open(known, "rb").read()
    try:
        with open(known, "ab") as file:
            file.write(b"# edited\n")
        done = cli(lab, "k8s.kubectl", "--", "get", "pods", "-o", "name")
        assert done.returncode == 0
        wait_until(lambda: len(lab.keepers()) == 2, timeout=20, what="a keeper for the new file")
        assert old in lab.keepers()
    finally:
        with open(known, "wb") as file:
            file.write(saved)


def test_fifty_processes_at_once_through_one_keeper(lab):
    """Past MaxSessions (10) the keeper opens a second connection; none of the calls fails."""
    warm(lab)
    logins = sshd_logins(lab)["mgmt"]
    code = "from dapfab import run_in_runner; from dapfab.config import RunnerConfig; import sys; " \
           "r = run_in_runner(RunnerConfig.from_env(), f'sleep 2; echo {sys.argv[1]}', hide=True); " \
           "print(r.stdout, end='')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], cwd=REPO,
                              env=cli_env(lab, PERSIST), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for n in range(50)]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    assert [(out, rc) for (out, _), rc in results] == [(b"%d\n" % n, 0) for n in range(50)], \
        [err for (_, err), _ in results if err][:3]
    assert len(lab.keepers()) == 1
    assert sshd_logins(lab)["mgmt"] > logins


def test_the_keeper_says_nothing_to_another_user(lab):
    """Even with its directory opened up, a keeper answers no process of another uid."""
    from pathlib import Path

    pid = warm(lab)
    (sock,) = [lock.with_suffix(".sock") for lock in Path(lab.runtime_dir(), "dapfab").glob("*.lock")
               if lock.read_text().split() == [str(pid)]]
    opened = (lab.state_dir, lab.runtime_dir(), sock.parent, sock)
    modes = [(p, p.stat().st_mode & 0o777) for p in opened]
    code = (f"import socket, json, struct; s = socket.socket(socket.AF_UNIX); s.connect({str(sock)!r}); "
            "h = json.dumps({'op': 'hello'}).encode(); s.sendall(struct.pack('!II', len(h), 0) + h); "
            "s.settimeout(5)\ntry: print(repr(s.recv(100)))\nexcept ConnectionResetError: print(repr(b''))")
    try:
        for path, _ in modes:
            path.chmod(0o777 if path == sock else 0o711)
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-I", "-c", code], capture_output=True, timeout=30)
    finally:
        for path, mode in modes:
            path.chmod(mode)
    assert done.stdout == b"b''\n", done.stderr  # closed without a word
    assert lab.keepers() == [pid]


def test_two_keepers_never_serve_one_connection(lab, keeper_config):
    """Keepers started at once for one identity: the lock leaves exactly one."""
    from dapfab.keeper import client

    for _ in range(4):
        client.spawn(keeper_config)
    wait_until(lambda: client.status(keeper_config) is not None, timeout=20, what="a keeper")
    time.sleep(2)  # the losers have long exited by now
    assert len(lab.keepers()) == 1
    alive = [pid for pid in (int(x) for x in os.listdir("/proc") if x.isdigit())
             if b"dapfab.keeper" in _read(f"/proc/{pid}/cmdline")
             and lab.runtime_dir().as_posix().encode() in _read(f"/proc/{pid}/environ")]
    assert alive == lab.keepers()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def test_a_keeper_is_a_daemon_that_inherited_nothing(lab):
    pid = warm(lab)
    assert os.getsid(pid) == pid  # its own session: no terminal, no job control signals
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in ("0", "1", "2")} == {"/dev/null"}
    assert not [target for target in held if target.startswith("pipe:")]  # nobody's pipes
    assert [target for target in held if target.endswith(".lock")]
    env = _read(f"/proc/{pid}/environ").split(b"\0")
    assert not [v for v in env if v.startswith((b"PYTEST", b"DAP_RUNNER"))]


def test_a_command_the_client_did_not_confirm_never_runs(lab):
    """The keeper runs a command only after the client's `go`: a client that gives up after
    `accepted` (and would then run it directly) never gets it run twice."""
    import dataclasses
    import socket as socketlib

    from dapfab.config import RunnerConfig
    from dapfab.identity import ConnectionIdentity
    from dapfab.keeper import place, wire

    warm(lab)
    config = RunnerConfig.from_env(cli_env(lab, PERSIST))
    path = place.socket_path(place.directory(), ConnectionIdentity.of(config).digest())
    marker = f"/tmp/dapfab-not-confirmed-{os.getpid()}"
    with socketlib.socket(socketlib.AF_UNIX) as sock:
        sock.connect(path)
        reader = wire.Reader(sock)
        wire.send(sock, {"op": "hello"})
        assert reader.next(5)[0]["op"] == "hello"
        wire.send(sock, {"op": "run", "config": dataclasses.asdict(config),
                         "command": f"touch {marker}", "stdin": None}, fds=[1, 2])
        assert reader.next(5)[0]["op"] == "accepted"
    time.sleep(3)
    check = cli(lab, "k8s.kubectl", "--", "version", "--client")  # the keeper still serves
    assert check.returncode == 0
    from dapfab import run_in_runner

    probe = run_in_runner(dataclasses.replace(config, persist=0), f"test -e {marker}; echo $?",
                          hide=True, in_stream=False)
    assert probe.stdout == "1\n"


def test_a_live_keeper_never_hides_a_broken_path_from_config_doctor(lab):
    warm(lab)
    lab.stop_sshd("mgmt")
    through = cli(lab, "k8s.kubectl", "--", "get", "pods", "-o", "name")
    assert (through.returncode, through.stdout) == (0, b"pod/web\n")  # the keeper's connection
    doctor = cli(lab, "config.doctor")
    assert doctor.returncode == 255, doctor.stdout
    assert b"FAIL  management host" in doctor.stdout


# -- issue 21: what a keeper shows, what it must notice, and the promises of §12 -------------
def run_through(lab, command: str, persist: str = "60") -> subprocess.CompletedProcess:
    """``command`` in the runner from a process of its own (run_in_runner, output not
    hidden, no stdin), with ``dap.ssh.persist`` at ``persist``."""
    code = ("import sys; from dapfab import run_in_runner; from dapfab.config import RunnerConfig; "
            "sys.exit(run_in_runner(RunnerConfig.from_env(), sys.argv[1], in_stream=False, "
            "warn=True).exited)")
    return subprocess.run([sys.executable, "-c", code, command], cwd=REPO, capture_output=True,
                          env=cli_env(lab, {"DAP_SSH_PERSIST": persist}), timeout=120)


def lab_config(lab):
    from dapfab.config import RunnerConfig

    return RunnerConfig.from_env(cli_env(lab, PERSIST))


def answering(config) -> int:
    """The PID of the keeper that answers calls of ``config``'s identity (waits for one)."""
    from dapfab.keeper import client

    return wait_until(lambda: client.status(config), timeout=20, what="a keeper answering")


def test_the_keepers_command_line_and_environment_show_no_config(lab):
    """Every local user reads /proc/PID/cmdline: it names the identity's digest, nothing of
    who the keeper talks to or how."""
    from dapfab.identity import ConnectionIdentity

    pid = warm(lab)
    config = lab_config(lab)
    argv = _read(f"/proc/{pid}/cmdline").split(b"\0")[:-1]
    environ = _read(f"/proc/{pid}/environ")
    assert argv[1:] == [b"-P", b"-m", b"dapfab.keeper", ConnectionIdentity.of(config).digest().encode()]
    secrets = [config.ssh_host, config.ssh_host.split("@")[-1], config.gateway, config.ssh_key,
               config.vm_name, config.known_hosts]
    assert [s for s in secrets if s.encode() in b"\0".join(argv) + environ] == []


@pytest.fixture
def stealthy_revocation(lab):
    """The lab's known_hosts with a comment line that :func:`revoke` turns into an
    ``@revoked`` line for mgmt's key in place: same inode, size and modification time."""
    from pathlib import Path

    known = Path(lab.known_hosts)
    saved = known.read_bytes()
    revoked = f"@revoked {lab.known_hosts_line('mgmt')}".encode()
    known.write_bytes(saved + b"#" + b" " * (len(revoked) - 2) + b"\n")

    def revoke() -> None:
        before = os.stat(known)
        with open(known, "r+b") as file:
            file.seek(len(saved))
            file.write(revoked)
        os.utime(known, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(known)
        assert [(s.st_ino, s.st_size, s.st_mtime_ns) for s in (before, after)] == \
            [(before.st_ino, before.st_size, before.st_mtime_ns)] * 2
        assert known.read_bytes() == saved + revoked

    try:
        yield revoke
    finally:
        known.write_bytes(saved)


def test_a_key_revoked_in_place_is_refused_at_the_next_call_through_the_keeper(
    lab, stealthy_revocation
):
    """The keeper's connection was checked against the file before the edit: the next call
    must not get it (docs/design.md §10)."""
    warm(lab)
    stealthy_revocation()
    done = cli(lab, "k8s.kubectl", "--", "get", "pods", "-o", "name")
    mgmt = lab.address("mgmt")
    assert (done.returncode, done.stdout) == (255, b""), done.stderr
    assert done.stderr.decode().startswith(
        f"dapfab: ssh management host {mgmt}: host key of {mgmt} is REVOKED"), done.stderr


def test_a_key_revoked_in_place_is_refused_at_the_next_call_in_the_process(
    lab, runner_config, stealthy_revocation
):
    """The same for the process's own pool (no keeper): its idle connection is not reused."""
    import dataclasses

    from dapfab import run_in_runner
    from dapfab.errors import HostKeyError

    config = dataclasses.replace(runner_config, persist=0)
    assert run_in_runner(config, "echo warm", hide=True, in_stream=False).stdout == "warm\n"
    stealthy_revocation()
    with pytest.raises(HostKeyError, match="is REVOKED") as refused:
        run_in_runner(config, "echo again", hide=True, in_stream=False)
    assert refused.value.exit_code == 255


def test_a_command_longer_than_the_heartbeat_bound_runs_through_the_keeper(lab):
    """13 s is past the 10 s a silent peer gets: the heartbeats keep the call alive."""
    pid = warm(lab)
    logins = sshd_logins(lab)
    done = run_through(lab, "sleep 13; echo done")
    assert (done.returncode, done.stdout) == (0, b"done\n"), done.stderr
    assert sshd_logins(lab) == logins and lab.keepers() == [pid]  # it went through the keeper


def test_the_keeper_outlives_a_call_longer_than_persist_and_waits_persist_after_it(lab):
    """persist counts from the last client's leaving, and never while a call runs."""
    persist = 4
    assert run_through(lab, "true", str(persist)).returncode == 0  # starts the keeper
    pid = answering(lab_config(lab))
    first = run_through(lab, "echo a", str(persist))
    logins = sshd_logins(lab)
    second = run_through(lab, f"sleep {persist + 2}; echo b", str(persist))
    assert [(d.returncode, d.stdout) for d in (first, second)] == [(0, b"a\n"), (0, b"b\n")], \
        second.stderr
    assert sshd_logins(lab) == logins  # both through the keeper's connection
    time.sleep(persist / 3)
    from dapfab.keeper import client

    assert client.status(lab_config(lab)) == pid  # persist counts from the second call's end


def test_a_captured_call_returns_while_the_keeper_lives_on(lab):
    """``out=$(inv ...)`` waits for every holder of its pipe: the keeper's copy is closed
    when the call ends, not when the keeper exits (60 s later). The keeper is started
    without a captured call, whose wait would hide this one's."""
    from dapfab.keeper import client

    config = lab_config(lab)
    client.spawn(config)
    pid = answering(config)
    script = f"out=$({' '.join(cli_argv('k8s.kubectl', '--', 'get', 'pods', '-o', 'name'))}); echo \"[$out]\""
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=cli_env(lab, PERSIST),
                          capture_output=True, timeout=120)
    took = time.monotonic() - started
    assert done.stdout == b"[pod/web]\n", done.stderr
    assert took < 30, took  # half of persist: the keeper did not hold the pipe to its end
    assert lab.keepers() == [pid], took


def test_the_passed_descriptors_are_closed_before_the_exit_code_is_sent(lab):
    """Ordering, not timing: when the exit code arrives, the keeper holds no copy of the
    stdout/stderr it was passed (the client's socket still open), so a reader of those pipes
    is at their end already."""
    import dataclasses
    import socket as socketlib

    from dapfab.identity import ConnectionIdentity
    from dapfab.keeper import place, wire

    warm(lab)
    config = lab_config(lab)
    path = place.socket_path(place.directory(), ConnectionIdentity.of(config).digest())
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    try:
        with socketlib.socket(socketlib.AF_UNIX) as sock:
            sock.connect(path)
            reader = wire.Reader(sock)
            wire.send(sock, {"op": "hello"})
            assert reader.next(5)[0]["op"] == "hello"
            wire.send(sock, {"op": "run", "config": dataclasses.asdict(config), "stdin": None,
                             "command": "echo out; echo err >&2; exit 4"}, fds=[out_w, err_w])
            os.close(out_w)
            os.close(err_w)
            out_w = err_w = -1
            assert reader.next(5)[0]["op"] == "accepted"
            wire.send(sock, {"op": "go"})
            assert reader.next(30)[0] == {"op": "exit", "code": 4}
            assert [_drain(out_r), _drain(err_r)] == [b"out\n", b"err\n"]
    finally:
        for fd in (out_r, out_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)


def _drain(fd: int) -> bytes:
    """What the pipe holds, asserting its end is reached without waiting for a writer."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            raise AssertionError(f"a writer still holds the pipe after {data!r}") from None
        if not chunk:
            return data
        data += chunk


OWN_AFTER_TWO = """
    import sys, time
    from dapfab import run_in_runner
    from dapfab.config import RunnerConfig
    from dapfab.connection import POOL
    config = RunnerConfig.from_env()
    for _ in range(2):
        run_in_runner(config, "true", hide=True, in_stream=False)
    deadline = time.monotonic() + 30
    while not POOL.connected(config) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("own" if POOL.connected(config) else "none", flush=True)
    sys.stdin.readline()
    print([run_in_runner(config, f"echo {n}", hide=True, in_stream=False).stdout
           for n in range(5)], flush=True)
"""


def test_a_process_that_calls_again_holds_its_own_connection_past_the_keeper(lab):
    """After two calls through the keeper, a process opens its own connection and its
    later calls go direct: a frozen keeper would be bypassed and replaced if they did not."""
    pid = warm(lab)
    logins = sshd_logins(lab)
    proc = python(lab, OWN_AFTER_TWO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    try:
        ready = proc.stdout.readline()
        if ready != b"own\n":
            proc.kill()  # it waits on its stdin: its stderr ends only once it is gone
        assert ready == b"own\n", proc.communicate()[1]
        lab.freeze(pid)
        try:
            out, err = proc.communicate(b"go\n", timeout=60)
        finally:
            lab.thaw(pid)
        assert out.decode().strip() == repr([f"{n}\n" for n in range(5)]), err
        assert lab.keepers() == [pid]  # never asked, so neither bypassed nor replaced
        assert sshd_logins(lab) == {host: count + 1 for host, count in logins.items()}
    finally:
        proc.kill()
        proc.wait()
