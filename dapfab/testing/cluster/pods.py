"""Pods that are real processes: start, restart and stop them; their logs are files."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def wait_listening(address: str, port: int, timeout: float = 15.0) -> bool:
    """True once something accepts TCP connections on address:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class PodProcess:
    """One running pod: ``argv`` is re-run on every (re)start; stdout goes to ``log_path``."""

    namespace: str
    name: str
    argv: list[str]
    address: str
    ready_port: int
    log_path: Path
    generation: int = 0
    restarting: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    on_restart: Callable[[PodProcess], None] | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def spawn(self) -> None:
        """Start the process (call from the main thread: it dies with the thread that forked it)."""
        argv = [a.replace("{generation}", str(self.generation)) for a in self.argv]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    async def start(self) -> None:
        """Start the process and wait until its ready port accepts connections."""
        self.spawn()
        if not await asyncio.to_thread(wait_listening, self.address, self.ready_port):
            await asyncio.to_thread(self.stop)
            raise RuntimeError(f"pod {self.namespace}/{self.name} did not listen on "
                               f"{self.address}:{self.ready_port}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def restart(self, gap: float = 0.5) -> None:
        """Stop, stay down for ``gap`` seconds, start a new process (next generation)."""
        async with self.lock:
            self.restarting = True
            try:
                await asyncio.to_thread(self.stop)
                await asyncio.sleep(gap)
                self.generation += 1
                await self.start()
                if self.on_restart is not None:
                    self.on_restart(self)
            finally:
                self.restarting = False

    def exited(self) -> bool:
        """True if the process ended by itself (not during a restart or stop)."""
        return (not self.restarting and self.process is not None
                and self.process.poll() is not None)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def web_pod(namespace: str, name: str, address: str, state_dir: Path) -> PodProcess:
    """The demo web pod (see ``web.py``) listening on ``address``."""
    logs = state_dir / "pods"
    logs.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "dapfab.testing.cluster.web", "--address", address,
            "--name", name, "--generation", "{generation}"]
    return PodProcess(namespace, name, argv, address, 8080, logs / f"{namespace}_{name}.log")


def ensure_address(address: str) -> None:
    """Make ``address`` local if it is a loopback address not yet usable (127/8 always is)."""
    if address.startswith("127."):
        return
    try:
        with socket.socket() as s:
            s.bind((address, 0))
    except OSError:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
