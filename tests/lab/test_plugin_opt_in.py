"""The lab's pytest plugin loads only into projects that opt in, and then works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dapfab.testing.plugin import lab_unavailable

OWN_LAB = '''
import pytest

class Lab:  # a project's own "lab", with no reset()
    pass

@pytest.fixture
def lab():
    return Lab()

def test_uses_its_own_lab(lab):
    assert isinstance(lab, Lab)
'''

OPTED_IN = '''
pytest_plugins = ["dapfab.testing.plugin"]
'''

USES_THE_LAB = '''
from dapfab import run_in_runner

def test_runs_in_the_runner(runner_config):
    result = run_in_runner(runner_config, "echo from-the-lab", hide=True, in_stream=False)
    assert result.stdout == "from-the-lab\\n"
'''


def _pytest(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DAPFAB_", "DAP_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project, env={**full, **env}, capture_output=True, text=True, timeout=300,
    )


def test_a_project_with_its_own_lab_fixture_is_unaffected(tmp_path):
    (tmp_path / "test_own.py").write_text(OWN_LAB)
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "error" not in done.stdout.lower()


def test_dapfab_registers_no_pytest_plugin_by_itself():
    from importlib.metadata import entry_points

    assert not [e for e in entry_points(group="pytest11") if e.value.startswith("dapfab")]


@pytest.mark.lab
@pytest.mark.skipif(lab_unavailable() is not None, reason="the lab needs Linux and root")
def test_a_project_that_opts_in_gets_a_working_lab(tmp_path):
    (tmp_path / "conftest.py").write_text(OPTED_IN)
    (tmp_path / "test_lab.py").write_text(USES_THE_LAB)
    done = _pytest(tmp_path, DAPFAB_LAB_ID="14")  # its own lab, not this session's
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
