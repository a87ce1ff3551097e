"""Trust, round 2: attacks by another user of the VM, the management host or the laptop.

Each test performs the attack in the lab, as an unprivileged user (`nobody`) where the hole
needs one, and asserts the safe outcome. The attackers use python3, which the netns backend's
runner has and the LXD image (minbase) has not: this file runs on the netns backend only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from trust_helpers import REPO, cli_env

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

# Binds 127.0.0.1:PORT as soon as it is free, then logs every byte it is sent.
SQUATTER = r"""
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
while True:
    try:
        s.bind(("127.0.0.1", port)); break
    except OSError:
        time.sleep(0.005)
s.listen(16)
print("bound", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    print("GOT", data.hex(), flush=True)
    c.close()
"""


def _stop_nobody(lab, process: subprocess.Popen) -> None:
    """End an attacker started with ``lab.popen`` (nsenter forks: kill by user in the VM)."""
    lab.run("runner", ["pkill", "-KILL", "-u", "nobody"])
    process.kill()
    process.wait(10)


def _line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The next stdout line of ``proc``, or "" if none comes within ``timeout`` seconds."""
    import select

    if not select.select([proc.stdout], [], [], timeout)[0]:
        return ""
    return proc.stdout.readline().decode()


def _start_forward(lab) -> tuple[subprocess.Popen, int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "k8s.forward", "pod/web", "8080", "--laptop-port", "0"],
        cwd=REPO, env=cli_env(lab), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, bufsize=0,  # unbuffered: _line's select sees every byte
    )
    runner, laptop = _line(proc), _line(proc)
    assert runner.endswith("(runner)\n") and laptop.endswith("(laptop)\n"), (runner, laptop)
    port = lambda line: int(line.split(" -> ")[0].rsplit(":", 1)[1])  # noqa: E731
    return proc, port(runner), port(laptop)


def _get(port: int, header: str = "", family: int = socket.AF_INET) -> bytes:
    """One HTTP request through the laptop port; what came back (b"" if closed at once)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(f"GET /status/200 HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n".encode())
        chunks = []
        while True:
            try:
                data = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_a_vm_user_who_takes_the_runner_port_never_gets_a_laptop_connection(lab):
    proc, runner_port, laptop_port = _start_forward(lab)
    squatter = None
    try:
        assert b"200 OK" in _get(laptop_port)
        squatter = lab.popen("runner", [*NOBODY, "/usr/bin/python3", "-I", "-c", SQUATTER, str(runner_port)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(squatter.stdout.fileno(), False)
        out = b""
        for _ in range(50):  # kill kubectl until the squatter wins the port from its restart
            lab.run("runner", ["pkill", "-KILL", "-x", "kubectl"])
            time.sleep(0.3)
            out += squatter.stdout.read() or b""
            if b"bound" in out:
                break
        assert b"bound" in out, "the squatter never got the runner port"
        secret = "Bearer s3cret-" + os.urandom(6).hex()
        replies = [_get(laptop_port, f"Authorization: {secret}\r\n") for _ in range(5)]
        time.sleep(1)
        out += squatter.stdout.read() or b""
        assert b"GOT" not in out, "a laptop connection reached the squatter"
        assert replies == [b""] * 5  # accepted and closed at once, never relayed elsewhere
        _stop_nobody(lab, squatter)
        squatter = None
        # the promised same-port restart still happens once the port is free again
        wait_until(lambda: b"200 OK" in _get(laptop_port), 30, "the forward back on its port")
    finally:
        if squatter is not None:
            _stop_nobody(lab, squatter)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_relay_connects_only_to_the_listener_it_was_given(tmp_path):
    """relay_command under real bash against real sockets: a matching inode is relayed, any
    other listener on the port is refused with RELAY_NOT_OURS."""
    from dapfab.bridge import RELAY_NOT_OURS, relay_command

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    inode = os.fstat(server.fileno()).st_ino
    ours = subprocess.Popen(["bash", "-c", relay_command(port, inode)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    ours.stdin.write(b"hello")
    ours.stdin.close()
    conn, _ = server.accept()
    assert conn.recv(5) == b"hello"
    conn.sendall(b"answer")
    conn.close()
    assert ours.stdout.read() == b"answer" and ours.wait(10) == 0
    other = subprocess.run(["bash", "-c", relay_command(port, inode + 1)], input=b"x",
                           capture_output=True, timeout=10)
    assert other.returncode == RELAY_NOT_OURS
    server.close()


def test_the_laptop_bridge_listens_on_both_loopbacks_and_nowhere_else(lab):
    proc, _, laptop_port = _start_forward(lab)
    try:
        line = _line(proc, 10)
        assert line == f"Forwarding from [::1]:{laptop_port} -> pod/web:8080 (laptop)\n"
        assert b"200 OK" in _get(laptop_port, family=socket.AF_INET6)
        listening = subprocess.run(["ss", "-Hltnp", f"sport = :{laptop_port}"],
                                   capture_output=True, text=True).stdout.split("\n")
        local = sorted(fields.split()[3] for fields in listening if fields.strip())
        assert local == [f"127.0.0.1:{laptop_port}", f"[::1]:{laptop_port}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_laptop_port_taken_on_ipv6_loopback_is_an_error_not_skipped(lab):
    squatter = socket.socket(socket.AF_INET6)
    squatter.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    squatter.bind(("::1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "k8s.forward", "pod/web", "8080", "--laptop-port",
             str(port)], cwd=REPO, env=cli_env(lab), capture_output=True, timeout=60,
        )
        assert done.returncode == 2
        assert done.stderr.decode().strip() == (
            f"dapfab: laptop: laptop port {port} on [::1]: in use "
            "(pick another --laptop-port, or 0 for a free one)"
        )
    finally:
        squatter.close()


# -- hole 2: no secret byte ever touches a file system in the VM -----------------------------
# Watches directories (recursively) with inotify and reads every file created or written in
# them at once; at EOF on stdin prints {"created": [...], "hits": [...]} as JSON.
WATCHER = r"""
import ctypes, json, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
MASK = 0x2 | 0x8 | 0x80 | 0x100  # MODIFY, CLOSE_WRITE, MOVED_TO, CREATE
dirs = {}
def watch(top):
    for here, _, _ in os.walk(top):
        wd = libc.inotify_add_watch(fd, here.encode(), MASK)
        if wd >= 0:
            dirs[wd] = here
secret = sys.argv[1].encode()
for top in sys.argv[2:]:
    watch(top)
created, hits = [], set()
print("ready", flush=True)
while True:
    ready, _, _ = select.select([fd, sys.stdin], [], [], 1)
    if fd in ready:
        data, at = os.read(fd, 1 << 16), 0
        while at < len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16:at + 16 + size].rstrip(b"\0").decode()
            at += 16 + size
            path = os.path.join(dirs.get(wd, "?"), name)
            if mask & 0x100:
                created.append(path)
                if os.path.isdir(path):
                    watch(path)
            try:
                with open(path, "rb") as handle:
                    if secret in handle.read():
                        hits.add(path)
            except OSError:
                pass
    if sys.stdin in ready:
        break
print(json.dumps({"created": created, "hits": sorted(hits)}), flush=True)
"""
WATCHED = ("/tmp", "/var/tmp", "/dev/shm", "/root")


def _curl_in_vm(lab) -> bool:
    return any(argv[:1] == ["curl"] for _, argv in lab.processes("runner", nested=True))


@pytest.mark.parametrize("ending", ["finished", "Ctrl-C", "SIGKILL", "frozen"])
def test_no_secret_ever_touches_a_file_in_the_vm_however_the_call_ends(lab, tmp_path, ending):
    import json

    secret = "s3cret-" + os.urandom(8).hex()
    body = tmp_path / "body"
    body.write_bytes(b"x" * 100000 + secret.encode())  # past the helper's stdin limit too
    watcher = lab.popen("runner", ["/usr/bin/python3", "-I", "-c", WATCHER, secret, *WATCHED],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watcher.stdout.readline() == b"ready\n"
        path = "/echo" if ending == "finished" else "/slow/60"  # ends only by dapfab
        url = f"http://{lab.cluster_address}:8080{path}"
        laptop = subprocess.Popen(
            [sys.executable, "-m", "invoke", "k8s.curl", "--timeout", "90", "--header",
             f"Authorization: Bearer {secret}", "--header", f"X-Reflect: {secret}", "--data",
             f"@{body}", "--json", url], cwd=REPO, env=cli_env(lab), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        if ending == "finished":
            out, _ = laptop.communicate(timeout=60)
            reply = json.loads(out)
            assert reply["headers"]["x-reflected"] == [secret]  # it did travel, both ways
        else:
            wait_until(lambda: _curl_in_vm(lab), 20, "curl running in the VM")
            laptop.send_signal({"Ctrl-C": signal.SIGINT, "SIGKILL": signal.SIGKILL,
                                "frozen": signal.SIGSTOP}[ending])
            wait_until(lambda: not _curl_in_vm(lab), 25, "curl gone in the VM")
            laptop.kill()
            laptop.wait(10)
        watcher.stdin.close()
        seen = json.loads(watcher.stdout.readline())
    finally:
        watcher.kill()
        watcher.wait(10)
    assert seen["hits"] == [], f"files that held the secret: {seen['hits']}"
    temporary = [path for path in seen["created"] if not path.startswith("/root/")]
    assert temporary == [], f"files dapfab created in the VM's temp directories: {temporary}"


# -- hole 3: dapfab's files in the VM cannot be redirected by another VM user ----------------
# As `nobody`: for every name created in /tmp, plant NAME.alive and NAME/alive as symlinks
# into TARGET (a root-only directory), as fast as inotify reports the name.
PLANTER = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
libc.inotify_add_watch(fd, b"/tmp", 0x100)  # CREATE
target = sys.argv[1]
print("ready", flush=True)
while True:
    data, at = os.read(fd, 1 << 16), 0
    while at < len(data):
        _, _, _, size = struct.unpack_from("iIII", data, at)
        name = data[at + 16:at + 16 + size].rstrip(b"\0").decode()
        at += 16 + size
        if name.endswith(".alive"):  # one of ours
            continue
        for link in (f"/tmp/{name}.alive", f"/tmp/{name}/alive", f"/tmp/{name}/cmd"):
            try:
                os.symlink(f"{target}/planted-{len(name)}", link)
                print("planted", link, flush=True)
            except OSError:
                pass
"""

PTY_SESSION = """
from dapfab import RunnerConfig, run_in_runner
print('EXIT', run_in_runner(RunnerConfig.from_env(), 'echo hi; exit 3', pty=True, warn=True).exited)
"""


@pytest.fixture
def symlinks_unprotected():
    """fs.protected_symlinks=0 (Debian's default is 1; this machine has 0) for the test."""
    knob = "/proc/sys/fs/protected_symlinks"
    with open(knob) as handle:
        saved = handle.read().strip()
    with open(knob, "w") as handle:
        handle.write("0")
    yield
    with open(knob, "w") as handle:
        handle.write(saved)


def _pty_session(lab) -> bytes:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", PTY_SESSION], stdin=slave, stdout=slave,
                            stderr=slave, env=cli_env(lab), close_fds=True)
    os.close(slave)
    output = b""
    try:
        while b"EXIT" not in output or not output.rstrip().endswith(b"3"):
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(60) == 0, output
    finally:
        proc.kill()
        os.close(master)
    return output


def test_a_vm_user_cannot_redirect_the_pty_sessions_files(lab, symlinks_unprotected):
    target = "/var/tmp/dapfab-root-only"
    lab.run("runner", ["sh", "-c", f"rm -rf {target} && mkdir -m 700 {target}"], check=True)
    planter = lab.popen("runner", [*NOBODY, "/usr/bin/python3", "-I", "-c", PLANTER, target],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert planter.stdout.readline() == b"ready\n"
        for _ in range(3):
            assert b"EXIT 3" in _pty_session(lab)
        entries = lab.run("runner", ["ls", "-A", target], check=True).stdout.split()
        assert entries == [], f"root wrote through a planted symlink: {entries}"
        leftovers = lab.run("runner", ["find", "/tmp", "-maxdepth", "1", "-type", "d", "-user", "root",
                                       "-name", "dapfab.*"]).stdout
        assert leftovers == ""  # each session's private directory is removed
    finally:
        _stop_nobody(lab, planter)
        lab.run("runner", ["sh", "-c", "find /tmp -maxdepth 2 -user nobody -delete; rm -rf " + target])


# -- hole 8: remote text cannot drive the terminal through dapfab's own messages ------------
EVIL_PHASE = "\x1b]0;pwned\x07\x1b[31mPending"


def test_terminal_escapes_in_a_pods_status_are_shown_escaped_in_dapfabs_error(lab):
    import json

    manifest = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: evil\nspec:\n  containers:\n  - {name: c, image: x}\n"
    inv = [sys.executable, "-m", "invoke"]
    run = lambda *args, **kw: subprocess.run([*inv, *args], cwd=REPO, env=cli_env(lab),  # noqa: E731
                                             capture_output=True, timeout=60, **kw)
    assert run("k8s.kubectl", "--", "apply", "-f", "-", input=manifest).returncode == 0
    try:
        patch = json.dumps({"status": {"phase": EVIL_PHASE}})
        assert run("k8s.kubectl", "--", "patch", "pod", "evil", "--subresource=status",
                   "--type=merge", "-p", patch, stdin=subprocess.DEVNULL).returncode == 0
        done = run("k8s.forward", "pod/evil", "80", stdin=subprocess.DEVNULL)
        assert done.returncode != 0
        assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr
        assert b"status=\\x1b]0;pwned\\x07\\x1b[31mPending" in done.stderr
        assert len(done.stderr.splitlines()) == 1
        # command output is the user's data: it passes unchanged
        out = run("k8s.kubectl", "--", "get", "pod", "evil", "-o", "jsonpath={.status.phase}",
                  stdin=subprocess.DEVNULL)
        assert out.stdout == EVIL_PHASE.encode()
    finally:
        run("k8s.kubectl", "--", "delete", "pod", "evil", stdin=subprocess.DEVNULL)


# -- hole 10: the user's command does not inherit the launcher's frame stream ---------------
@pytest.mark.parametrize("path", ["helper", "stream"])
def test_the_users_command_does_not_inherit_the_frame_stream(lab, runner_config, path):
    from dapfab import run_in_runner

    stdin = False
    if path == "stream":  # a pipe, as a stream: the one-shot launcher
        read, write = os.pipe()
        os.close(write)
        stdin = os.fdopen(read, "rb")
    # `; true` keeps the shell from exec'ing ls, whose own directory handle would be fd 3
    result = run_in_runner(runner_config, "ls /proc/$$/fd; true", hide=True, in_stream=stdin)
    fds = result.stdout.split()
    assert {"0", "1", "2"} <= set(fds) and "3" not in fds, fds


# -- hole 5: a token need not be typed on the laptop's command line --------------------------
CMDLINES = r"""
import os
seen = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            seen.append(handle.read())
    except OSError:
        pass
print(b"\n".join(seen).hex())
"""


def test_another_laptop_user_cannot_read_a_header_file_token_from_the_process_list(lab, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    headers = tmp_path / "headers"
    headers.write_text(f"Authorization: Bearer {token}\n")
    headers.chmod(0o600)
    url = f"http://{lab.cluster_address}:8080/slow/3"
    laptop = subprocess.Popen(
        [sys.executable, "-m", "invoke", "k8s.curl", "--header", f"@{headers}", url],
        cwd=REPO, env=cli_env(lab), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _curl_in_vm(lab), 20, "curl running in the VM")
        spy = subprocess.run([*NOBODY, "/usr/bin/python3", "-I", "-c", CMDLINES], cwd="/",
                             capture_output=True, text=True, timeout=30)
        cmdlines = bytes.fromhex(spy.stdout.strip())
        assert b"k8s.curl" in cmdlines  # the spy does see the call
        assert token.encode() not in cmdlines
        out, _ = laptop.communicate(timeout=60)
        assert f"Bearer {token}" in out.decode()
    finally:
        laptop.kill()
        laptop.wait(10)
