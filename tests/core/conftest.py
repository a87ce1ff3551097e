"""Helpers for the core integration tests: run `inv` / `dap` as real subprocesses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from trust_helpers import cli_argv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(lab):
    """Run the CLI (`inv` with the repo's tasks.py by default) against the lab."""

    def run(*argv: str, program: str = "invoke", cwd: Path = REPO, env: dict | None = None,
            input: bytes | None = None, timeout: float = 120, **kwargs):
        full_env = {**os.environ, **lab.env(), **(env or {})}
        full_env.pop("DAP_RUNNER", None)
        return subprocess.run(
            cli_argv(*argv, program=program), cwd=cwd, env=full_env, input=input,
            capture_output=True, timeout=timeout, **kwargs,
        )

    return run
