"""pytest plugin (entry point ``dapfab_lab``): fixtures for tests that run in the lab.

- ``lab`` (session): brings a :class:`~dapfab.testing.lab.Lab` up once (id from
  ``DAPFAB_LAB_ID``, backend from ``DAPFAB_LAB_BACKEND``) and down at the end, also when
  tests fail. With ``DAPFAB_LAB_REUSE=1`` a lab that is already up is used as it is and left up.
- after every test that used ``lab``, what tests change is restored: links, frozen
  processes, sshd, the runner's state, the incus client (``lab_reset`` does the same, by name).
- ``runner_config``: a ``dapfab.config.RunnerConfig`` for the lab.

Lab tests are skipped only where the lab cannot exist at all: not Linux, or not root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and the network-namespace lab")


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veths, sshd)"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[Any]:
    """The lab, up for the whole session."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    from dapfab.testing.lab import Lab

    the_lab = Lab()
    reuse = os.environ.get("DAPFAB_LAB_REUSE") == "1" and the_lab.status().get("up")
    if not reuse:
        the_lab.up()
    try:
        yield the_lab
    finally:
        if not reuse:
            the_lab.down()


@pytest.fixture(autouse=True)
def _lab_restore(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "lab" in request.fixturenames:
        request.getfixturevalue("lab").reset()


@pytest.fixture
def lab_reset(lab: Any) -> Iterator[Any]:
    """The lab, restored after the test (links, sshd, runner, incus, frozen processes)."""
    yield lab
    lab.reset()


@pytest.fixture
def runner_config(lab: Any) -> Any:
    """A ``dapfab.config.RunnerConfig`` that reaches the lab's runner through its bastion."""
    try:
        from dapfab.config import RunnerConfig
    except ImportError as err:
        pytest.skip(f"dapfab.config.RunnerConfig is not available: {err}")
    return RunnerConfig(
        ssh_host=lab.ssh_host,
        ssh_key=lab.ssh_key,
        vm_name=lab.vm_name,
        gateway=lab.gateway,
        incus=lab.incus,
        known_hosts=lab.known_hosts,
        host_key_policy="reject",
    )
