"""Connections are shared: chained tasks and sequential library calls open ONE SSH connection.

Counted on the server side: every accepted connection is an ``Accepted publickey`` line in
the lab's sshd logs (mgmt, and bastion for the gateway hop).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture
def runner_config(runner_config):
    """These tests count this process's own pooled connections and helpers: no keeper
    (dap.ssh.persist 0), whatever DAPFAB_LAB_PERSIST says."""
    import dataclasses

    return dataclasses.replace(runner_config, persist=0)

TASKS = "from invoke import Collection\n\nfrom dapfab.tasks import config_ns, k8s_ns\n\nns = Collection(k8s_ns, config_ns)\n"


def accepted(lab: Any, host: str) -> int:
    """How many connections ``host``'s sshd has accepted so far."""
    log = Path(lab.state_dir) / host / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey")


def counted(lab: Any, action: Any) -> tuple[int, int, Any]:
    """Run ``action``; the new connections to (mgmt, bastion) it made, and its result."""
    before = accepted(lab, "mgmt"), accepted(lab, "bastion")
    result = action()
    return accepted(lab, "mgmt") - before[0], accepted(lab, "bastion") - before[1], result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


def inv(lab: Any, project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    env.update(lab.env(), DAP_SSH_PERSIST="0")  # counts this process's connections: no keeper
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chained_tasks_open_one_connection(lab: Any, project: Path) -> None:
    url = f"http://{lab.cluster_address}:8080/status/200"
    mgmt, bastion, done = counted(
        lab, lambda: inv(lab, project, "k8s.curl", url, "k8s.kubectl", "--", "get", "pods")
    )
    assert done.returncode == 0, done.stderr
    assert "HTTP 200" in done.stderr  # curl ran ...
    assert "web" in done.stdout  # ... and so did kubectl, after it
    assert (mgmt, bastion) == (1, 1)


def test_separate_processes_each_open_their_own(lab: Any, project: Path) -> None:
    """The counter can see more than one: two processes are two connections."""

    def twice() -> list[subprocess.CompletedProcess]:
        return [inv(lab, project, "k8s.kubectl", "--", "get", "pods") for _ in range(2)]

    mgmt, bastion, runs = counted(lab, twice)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert (mgmt, bastion) == (2, 2)


def test_sequential_library_calls_share_one_connection(lab: Any, runner_config: Any) -> None:
    from dapfab.connection import POOL
    from dapfab.curl import runner_curl
    from dapfab.run import kubectl_in_runner, run_in_runner

    POOL.close_all()
    url = f"http://{lab.cluster_address}:8080/status/200"

    def calls() -> list[Any]:
        return [
            run_in_runner(runner_config, "echo one", hide=True, in_stream=False).stdout,
            runner_curl(runner_config, url).status,
            kubectl_in_runner(runner_config, ["get", "pods"], hide=True, in_stream=False).stdout,
            run_in_runner(runner_config, "echo two", hide=True, in_stream=False).stdout,
        ]

    try:
        mgmt, bastion, out = counted(lab, calls)
    finally:
        POOL.close_all()
    assert out[0] == "one\n" and out[1] == 200 and "web" in out[2] and out[3] == "two\n"
    assert (mgmt, bastion) == (1, 1)


def in_threads(calls: list[Any]) -> list[Any]:
    """Run every call at once, each in its own thread; their results (or exceptions)."""
    import threading

    results: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported by the caller's assert
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_a_burst_of_short_calls_queues_for_helpers_on_one_connection(lab: Any, runner_config: Any) -> None:
    """25 calls at once: more than MAX_SESSIONS, yet one connection, each helper reused."""
    from dapfab.connection import MAX_SESSIONS, POOL
    from dapfab.run import run_in_runner

    POOL.close_all()
    calls = [lambda n=n: run_in_runner(runner_config, f"echo {n}", hide=True).stdout
             for n in range(MAX_SESSIONS * 2 + 5)]
    try:
        mgmt, bastion, out = counted(lab, lambda: in_threads(calls))
    finally:
        POOL.close_all()
    assert out == [f"{n}\n" for n in range(len(calls))]
    assert (mgmt, bastion) == (1, 1)


def test_a_call_behind_long_running_ones_gets_another_connection(lab: Any, runner_config: Any) -> None:
    """Every session busy with a long command: the next call waits a bounded time, then
    opens a second connection instead of waiting for them."""
    import time

    from dapfab.connection import MAX_SESSIONS, POOL
    from dapfab.helpers import SESSION_WAIT_MIN
    from dapfab.run import run_in_runner

    POOL.close_all()
    long = [lambda: run_in_runner(runner_config, "sleep 20", hide=True) for _ in range(MAX_SESSIONS)]

    def late() -> tuple[str, float]:
        time.sleep(3)  # the long ones hold every session by now
        start = time.monotonic()
        out = run_in_runner(runner_config, "echo late", hide=True).stdout
        return out, time.monotonic() - start

    try:
        mgmt, _, results = counted(lab, lambda: in_threads([*long, late]))
    finally:
        POOL.close_all()
    out, took = results[-1]
    assert out == "late\n"
    assert SESSION_WAIT_MIN <= took < 12, took  # well before the long ones end (20 s)
    assert mgmt == 2
