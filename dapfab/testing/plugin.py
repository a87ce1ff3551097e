"""pytest plugin with fixtures for tests that run in the lab; opt in, as with Fabric's
``fabric.testing.fixtures``, from a ``conftest.py``::

    pytest_plugins = ["dapfab.testing.plugin"]

Nothing is loaded into a project that did not ask, and no fixture here touches a fixture
it did not define.

- ``dapfab_lab`` (session): brings a :class:`~dapfab.testing.lab.Lab` up once (id from
  ``DAPFAB_LAB_ID``, backend from ``DAPFAB_LAB_BACKEND``) and down at the end, also when
  tests fail. With ``DAPFAB_LAB_REUSE=1`` a lab that is already up is used as it is and left up.
- ``lab``: that lab for one test; afterwards what tests change is restored: links, frozen
  processes, sshd, the runner's state, the incus client. ``lab_reset`` is the same fixture.
- ``runner_config``: a ``dapfab.config.RunnerConfig`` for the lab (``dap.ssh.persist``
  from ``DAPFAB_LAB_PERSIST``, default 0: no keeper; keepers live in the lab's own
  runtime directory and are stopped after every test).

Lab tests are skipped only where the lab cannot exist at all: not Linux, or not root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dapfab.config import RunnerConfig
from dapfab.keeper import client
from dapfab.testing.waiting import wait_until


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
def dapfab_lab() -> Iterator[Any]:
    """The lab, up for the whole session."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    from dapfab.testing.lab import Lab  # not for sessions without the lab (no root)

    the_lab = Lab()
    reuse = os.environ.get("DAPFAB_LAB_REUSE") == "1" and the_lab.status().get("up")
    if not reuse:
        the_lab.up()
    # Keepers started by in-process calls live in the lab's directory, stopped with it.
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(the_lab.runtime_dir())
    try:
        yield the_lab
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        the_lab.stop_keepers()
        if not reuse:
            the_lab.down()


@pytest.fixture
def lab(dapfab_lab: Any) -> Iterator[Any]:
    """The session's lab for one test, restored afterwards (links, sshd, runner, incus,
    frozen processes). With ``DAPFAB_LAB_PERSIST`` set, a keeper for the lab's connection
    is up before the test starts, so its first call goes through it already."""
    if dapfab_lab.persist != "0":
        _start_keeper(dapfab_lab)
    yield dapfab_lab
    helpers = sys.modules.get("dapfab.helpers")
    if helpers is not None:  # reset kills what runs in the runner, idle helpers included
        helpers.HELPERS.drop_idle()
    dapfab_lab.reset()


def _start_keeper(lab: Any) -> None:
    config = _config(lab)
    if client.status(config) is None:
        client.spawn(config)
        wait_until(lambda: client.status(config) is not None, timeout=20, what="the lab's keeper")


@pytest.fixture
def lab_reset(lab: Any) -> Any:
    """The same as ``lab`` (kept for tests that name the restore)."""
    return lab


@pytest.fixture
def runner_config(lab: Any) -> Any:
    """A ``dapfab.config.RunnerConfig`` that reaches the lab's runner through its bastion."""
    return _config(lab)


def _config(lab: Any) -> Any:
    return RunnerConfig(
        ssh_host=lab.ssh_host,
        ssh_key=lab.ssh_key,
        vm_name=lab.vm_name,
        gateway=lab.gateway,
        incus=lab.incus,
        known_hosts=lab.known_hosts,
        host_key_policy="reject",
        persist=lab.persist,
    )
