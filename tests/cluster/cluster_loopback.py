"""Helpers: the lab cluster on loopback, driven by the real kubectl."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBECTL = "/usr/bin/kubectl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoopbackCluster:
    """A cluster process on 127.0.0.1 and a private HOME/cache for kubectl."""

    state_dir: Path
    home: Path
    port: int
    pod_address: str
    process: subprocess.Popen[bytes]

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def argv(self, *args: str) -> list[str]:
        return [KUBECTL, "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.home / "cache"), *args]

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; never raises on a non-zero exit."""
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                              env=self.env(), timeout=timeout)

    @contextlib.contextmanager
    def port_forward(self, *args: str, websocket: bool = True
                     ) -> Iterator[tuple[subprocess.Popen[str], list[int], list[str]]]:
        """Run ``kubectl port-forward ARGS`` (over a WebSocket, kubectl's default since 1.31,
        or SPDY/3.1); yield it, its local ports and its output lines."""
        env = {**self.env(), "KUBECTL_PORT_FORWARD_WEBSOCKETS": "true" if websocket else "false"}
        proc = subprocess.Popen(self.argv("port-forward", *args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        output: list[str] = []
        try:
            yield proc, wait_forwarding(proc, sum(1 for a in args if ":" in a), output), output
        finally:
            stop(proc)


def wait_forwarding(proc: subprocess.Popen[str], expected: int, output: list[str],
                    deadline: float = 30) -> list[int]:
    """Read kubectl port-forward's output until it reports ``expected`` IPv4 listeners.

    A thread keeps appending every output line to ``output`` until the process ends.
    """
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    ports: list[int] = []
    seen = []
    end = time.monotonic() + deadline
    while len(ports) < expected and time.monotonic() < end:
        try:
            line = lines.get(timeout=max(0.1, end - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        if m:
            ports.append(int(m.group(1)))
    assert len(ports) == expected, f"port-forward did not start: {''.join(seen)!r}"
    return ports


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> int:
    """SIGTERM the process by PID, SIGKILL it after 10 s; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_cluster(tmp: Path) -> LoopbackCluster:
    """Start ``python3 -m dapfab.testing.cluster`` on loopback and wait for DIR/ready."""
    state, home = tmp / "state", tmp / "home"
    home.mkdir(parents=True)
    port = free_port()
    pod_address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    log = open(tmp / "cluster.out", "wb")  # noqa: SIM115 - kept open for the child
    proc = subprocess.Popen([sys.executable, "-m", "dapfab.testing.cluster", "--state-dir", str(state),
                             "--address", "127.0.0.1", "--port", str(port), "--pod-address", pod_address],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    end = time.monotonic() + 60
    while not (state / "ready").exists():
        if proc.poll() is not None or time.monotonic() > end:
            stop(proc)
            raise RuntimeError("cluster did not start: " + (tmp / "cluster.out").read_text())
        time.sleep(0.1)
    return LoopbackCluster(state, home, port, pod_address, proc)
