"""The real kubectl's exec and attach against the lab cluster on 127.0.0.1: WebSocket v5 (what
kubectl 1.32 asks for first) and SPDY/3.1 (its fallback), pipes and a pty."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import termios
import time

import pytest
from cluster_loopback import LoopbackCluster, stop

from dapfab.testing.waiting import wait_until

TRANSPORTS = {"websocket": "true", "spdy": "false"}


def env(cluster: LoopbackCluster, transport: str) -> dict[str, str]:
    return {**cluster.env(), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": TRANSPORTS[transport]}


def transports_used(cluster: LoopbackCluster) -> list[str]:
    events = [json.loads(line).get("event", "") for line in
              (cluster.state_dir / "requests.log").read_text().splitlines()]
    return [e.rsplit("(", 1)[1].split(")")[0] for e in events if e.startswith(("exec ", "attach "))]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_exec_with_stdin_separate_streams_and_the_exit_code(cluster: LoopbackCluster, transport):
    done = subprocess.run(cluster.argv("exec", "-i", "web", "--", "sh", "-c",
                                       "wc -c; echo to-stderr >&2; exit 3"),
                          input=b"x" * 100_000, capture_output=True, env=env(cluster, transport),
                          timeout=60)
    assert done.stdout.split() == [b"100000"]
    assert done.stderr.decode().splitlines() == ["to-stderr", "command terminated with exit code 3"]
    assert done.returncode == 3
    assert transports_used(cluster)[-1] == {"websocket": "websocket v5.channel.k8s.io", "spdy": "spdy/3.1"}[transport]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_exec_without_stdin_succeeds_and_a_missing_command_fails(cluster: LoopbackCluster, transport):
    ok = subprocess.run(cluster.argv("exec", "web", "--", "echo", "a b"), capture_output=True,
                        env=env(cluster, transport), timeout=60)
    assert (ok.returncode, ok.stdout) == (0, b"a b\n"), ok.stderr
    missing = subprocess.run(cluster.argv("exec", "web", "--", "no-such-command"),
                             capture_output=True, env=env(cluster, transport), timeout=60)
    assert missing.returncode == 127 and b"no-such-command" in missing.stderr


def test_exec_on_a_missing_pod_is_not_found(cluster: LoopbackCluster):
    done = cluster.kubectl("exec", "nope", "--", "true")
    assert done.returncode == 1 and 'pods "nope" not found' in done.stderr


def _on_a_terminal(cluster: LoopbackCluster, transport: str, args: list[str], rows: int, cols: int,
                   resize_to: tuple[int, int] | None = None) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(cluster.argv(*args), stdin=slave, stdout=slave, stderr=slave,
                            env=env(cluster, transport), start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    output = b""
    resized = resize_to is None
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
            if not resized and b"READY" in output:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *resize_to, 0, 0))
                os.killpg(proc.pid, signal.SIGWINCH)
                resized = True
        code = proc.wait(30)
    finally:
        stop(proc)
        os.close(master)
    return code, output.decode(errors="replace")


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_exec_it_gets_a_pty_of_the_callers_size_and_follows_resizes(cluster: LoopbackCluster, transport):
    script = "stty size; test -t 0 && test -t 1 && echo BOTH-TTY; echo READY; sleep 2; stty size; exit 5"
    code, text = _on_a_terminal(cluster, transport, ["exec", "-it", "web", "--", "sh", "-c", script],
                                37, 111, resize_to=(40, 120))
    assert code == 5, text
    assert "37 111" in text and "BOTH-TTY" in text and "40 120" in text


def test_attach_streams_the_pods_output_from_now_on(cluster: LoopbackCluster):
    proc = subprocess.Popen(cluster.argv("attach", "web"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cluster.env())
    try:
        assert proc.stdout is not None
        ticks = [proc.stdout.readline() for _ in range(2)]
        assert all(t.startswith(b"tick ") for t in ticks), ticks
    finally:
        stop(proc)


def _commands_running(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_a_client_that_goes_away_ends_the_command(cluster: LoopbackCluster, transport):
    marker = f"dapfab-exec-{transport}-{os.getpid()}"
    proc = subprocess.Popen(cluster.argv("exec", "web", "--", "sh", "-c", f"sleep 1000; : {marker}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(cluster, transport))
    try:
        wait_until(lambda: _commands_running(marker), timeout=30, what="the command to start")
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not _commands_running(marker), timeout=20, what="the command to end")
