"""Helpers for the forward and bridge tests: processes per lab host, `inv` as a child."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def leftovers(lab: Any) -> dict[str, list[list[str]]]:
    """kubectl processes in the runner and exec clients on mgmt (what must never leak)."""
    everything = lab.processes("runner", nested=True)
    runner = [a for _, a in everything if any("kubectl" in w for w in a)]
    runner += [a for _, a in everything if a[0] == "unshare" and a[-3:-2] == ["dapfab"]]
    mgmt = [a for _, a in lab.processes("mgmt") if "exec" in a and lab.vm_name in a]
    return {k: v for k, v in (("runner", runner), ("mgmt", mgmt)) if v}


def wait_clean(lab: Any, within: float) -> float:
    """Seconds until nothing is left over; fails the test after ``within`` seconds."""
    start = time.monotonic()
    while True:
        left = leftovers(lab)
        elapsed = time.monotonic() - start
        if not left:
            return elapsed
        if elapsed > within:
            pytest.fail(f"still running after {within:g} s: {left}")
        time.sleep(0.2)


@pytest.fixture
def clean(lab: Any) -> Callable[[float], float]:
    """``clean(within)``: assert nothing is left over; the lab starts clean too."""
    wait_clean(lab, 20.0)
    return lambda within=2.0: wait_clean(lab, within)


def _default_sigint() -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Inv:
    """``inv -f <lab config> ARGS`` as a child process, stdout read line by line."""

    def __init__(self, lab: Any, *args: str) -> None:
        inv = shutil.which("inv") or f"{sys.executable} -m invoke"
        self.proc = subprocess.Popen(
            [*inv.split(), "-f", lab.runtime_config, *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_default_sigint,
            bufsize=0,  # unbuffered: line()'s select must see every byte not yet read
        )

    def line(self, timeout: float = 30.0) -> str:
        """The next stdout line (fails the test after ``timeout`` s)."""
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.kill()
            pytest.fail(f"no output within {timeout} s: {self.proc.stderr.read().decode()}")
        return self.proc.stdout.readline().decode()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Exit code and stderr once it has exited (the rest of stdout in :attr:`out`)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.out = out.decode()
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        """SIGKILL (and SIGCONT, in case it is frozen) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
            os.kill(self.proc.pid, signal.SIGCONT) if self.proc.poll() is None else None
        self.proc.wait(10)


@pytest.fixture
def inv(lab: Any) -> Any:
    """Start ``inv`` children; every one still running is killed after the test."""
    started: list[Inv] = []

    def start(*args: str) -> Inv:
        child = Inv(lab, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
