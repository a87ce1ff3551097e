"""Fixtures of the trust tests (the lab fixtures come from the dapfab_lab plugin)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trust_helpers import PLUGINS, REPO, TIMINGS, Done, cli_argv, cli_env, wait_no_leftovers


@pytest.fixture
def cli(lab):
    """Run ``inv`` (the repo's tasks.py) or ``dap`` against the lab; returns :class:`Done`."""

    def run(*argv: str, program: str = "invoke", cwd: Path = REPO, env: dict | None = None,
            drop: tuple[str, ...] = (), input: bytes | None = None, timeout: float = 120) -> Done:
        start = time.monotonic()
        done = subprocess.run(cli_argv(*argv, program=program), cwd=cwd,
                              env=cli_env(lab, env, drop), input=input, capture_output=True,
                              timeout=timeout)
        return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - start)

    return run


@pytest.fixture
def plugins(lab, runner_config) -> Iterator[None]:
    """Install the kubectl plugins of these tests in the runner user's ~/bin."""
    from dapfab.connection import POOL
    from dapfab.testing.kubectl_plugins import install_kubectl_plugins

    install_kubectl_plugins(runner_config, PLUGINS)
    POOL.close_all()  # no connection of this process may look like a leftover
    yield


@pytest.fixture
def clean_lab(lab) -> Iterator:
    """The lab with nothing of an earlier command running on mgmt or in the runner."""
    from dapfab.connection import POOL

    POOL.close_all()
    left = wait_no_leftovers(lab, 30)
    assert left == {"mgmt": [], "runner": []}, f"an earlier test left {left}"
    yield lab


def pytest_terminal_summary(terminalreporter) -> None:
    """A report, not a test: how long each fault of the matrix took to be answered."""
    if TIMINGS:
        terminalreporter.section("dapfab fault matrix: seconds until the one-line answer")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"  {name:45} {seconds:6.2f} s")
