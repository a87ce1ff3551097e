"""Fixtures of the keeper tests: the CLI against the lab with dap.ssh.persist on."""

from __future__ import annotations

import pytest
from trust_helpers import PLUGINS


@pytest.fixture
def plugins(lab, runner_config):
    """The trust tests' kubectl plugins (argv-exact, stream...) in the runner."""
    import dataclasses

    from dapfab.testing.kubectl_plugins import install_kubectl_plugins

    install_kubectl_plugins(dataclasses.replace(runner_config, persist=0), PLUGINS)


@pytest.fixture
def keeper_config(runner_config):
    """The lab's RunnerConfig with a keeper (persist 60 s)."""
    import dataclasses

    return dataclasses.replace(runner_config, persist=60)
