"""`inv config.init` and `inv config.show` run as real processes in a throw-away project."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from invoke.util import yaml  # the parser Invoke itself reads invoke.yaml with

TASKS_PY = """\
from invoke import Collection
from dapfab.tasks.config import ns as config_ns

ns = Collection(config_ns)
"""


class Project:
    """A directory with a tasks.py importing dapfab's config tasks, and a HOME of its own."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "project"
        self.home = root / "home"
        self.dir.mkdir()
        self.home.mkdir()
        (self.dir / "tasks.py").write_text(TASKS_PY)
        self.yaml = self.dir / "invoke.yaml"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DAP_", "INVOKE_")) and key != "HOME"
        }
        self.env["HOME"] = str(self.home)
        repo = str(Path(__file__).parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, self.env.get("PYTHONPATH")]))

    def inv(
        self, *args: str, cwd: Path | None = None, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=cwd or self.dir,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


def rows(stdout: str) -> dict[str, list[str]]:
    """config.show's table: key -> [value, source words...] (the first line names the profile)."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:]}


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dapfab: config: ")
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr


def test_list_shows_both_tasks_with_their_help(project):
    done = project.inv("--list")
    assert done.returncode == 0, done.stderr
    assert "config.init" in done.stdout and "config.show" in done.stdout
    assert "Show the effective dap settings" in done.stdout


def test_init_help_documents_every_flag(project):
    done = project.inv("--help", "config.init")
    assert done.returncode == 0, done.stderr
    for flag in (
        "--path",
        "--user",
        "--ssh-host",
        "--ssh-key",
        "--vm",
        "--gateway",
        "--persist",
        "--force",
        "--env",
    ):
        line = next(line for line in done.stdout.splitlines() if line.strip().startswith(flag))
        assert len(line.split()) > 1, f"{flag} has no help text"
    short_flags = [
        line
        for line in done.stdout.splitlines()
        if line.lstrip().startswith("-") and not line.lstrip().startswith("--")
    ]
    assert short_flags == [], "automatic short flags must stay off (-h is help)"


def test_init_writes_the_project_file_next_to_tasks_py_from_a_subdirectory(project):
    subdirectory = project.dir / "deep" / "er"
    subdirectory.mkdir(parents=True)
    done = project.inv(
        "config.init", "--ssh-host", "ops@mgmt:2222", "--vm", "lab-vm", cwd=subdirectory
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(project.yaml.read_text()) == {
        "dap": {"runner": {"ssh_host": "ops@mgmt:2222", "vm": "lab-vm"}}
    }
    assert stat.S_IMODE(project.yaml.stat().st_mode) == 0o600
    assert str(project.yaml) in done.stdout
    assert not list(subdirectory.iterdir())


def test_show_names_the_file_each_value_came_from(project):
    project.inv("config.init", "--ssh-host", "ops@mgmt", "--ssh-key", "~/.ssh/ops")
    done = project.inv("config.show", env={"DAP_RUNNER_VM": "env-vm"})
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["dap.runner.ssh_host"] == ["ops@mgmt", str(project.yaml)]
    assert table["dap.runner.ssh_key"] == [f"{project.home}/.ssh/ops", str(project.yaml)]
    assert table["dap.runner.vm"] == ["env-vm", "env", "DAP_RUNNER_VM"]
    assert table["dap.runner.incus"] == ["incus", "default"]
    assert table["dap.ssh.connect_timeout"] == ["10", "default"]
    assert "placeholder" not in done.stderr


def test_show_names_a_runtime_file_and_warns_about_the_placeholder(project, tmp_path):
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text("dap:\n  runner:\n    vm: from-runtime\n")
    done = project.inv("-f", str(runtime), "config.show")
    assert done.returncode == 0, done.stderr
    assert (
        f"from-runtime  {runtime}" in " ".join(done.stdout.split("  "))
        or str(runtime) in done.stdout
    )
    assert "placeholder" in done.stderr and "config.init" in done.stderr


def test_show_with_a_profile_names_the_profile(project):
    project.yaml.write_text(
        "dap:\n  runners:\n    prod:\n      ssh_host: ops@prod\n      kubectl:\n        context: prod-admin\n"
    )
    done = project.inv("config.show", "--runner", "prod")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("profile: prod")
    assert rows(done.stdout)["dap.runner.ssh_host"] == [
        "ops@prod",
        "profile",
        "prod",
        f"({project.yaml})",
    ]
    assert "prod-admin" in done.stdout
    env_profile = project.inv("config.show", env={"DAP_RUNNER": "prod"})
    assert env_profile.stdout == done.stdout


def test_show_refuses_an_unknown_profile_with_exit_2(project):
    project.yaml.write_text("dap:\n  runners:\n    prod: {vm: p}\n    lab: {vm: l}\n")
    assert_one_line_error(
        project.inv("config.show", "--runner", "nope"), 2, "known profiles: lab, prod"
    )


def test_init_writes_persist_as_a_number_and_refuses_a_bad_one(project):
    done = project.inv("config.init", "--persist", "30")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(project.yaml.read_text()) == {"dap": {"ssh": {"persist": 30}}}
    before = project.yaml.read_bytes()
    assert_one_line_error(project.inv("config.init", "--persist", "-1", "--force"), 2,
                          "invalid persist time")
    assert project.yaml.read_bytes() == before
    shown = project.inv("config.show").stdout
    assert any(line.split()[:2] == ["dap.ssh.persist", "30"] for line in shown.splitlines())


def test_init_refuses_a_different_value_and_leaves_the_file_untouched(project):
    project.yaml.write_text("# mine\ndap:\n  runner:\n    vm: keep-me  # really\n")
    before = project.yaml.read_bytes()
    done = project.inv("config.init", "--vm", "other")
    assert_one_line_error(done, 2, "dap.runner.vm to 'keep-me', not 'other'")
    assert project.yaml.read_bytes() == before


def test_init_with_force_overwrites_and_keeps_comments(project):
    project.yaml.write_text("# mine\ndap:\n  runner:\n    vm: keep-me  # really\n")
    done = project.inv("config.init", "--vm", "other", "--force")
    assert done.returncode == 0, done.stderr
    text = project.yaml.read_text()
    assert text.startswith("# mine\n") and "# really" in text
    assert yaml.safe_load(text)["dap"]["runner"]["vm"] == "other"


def test_init_path_and_user_conflict(project):
    assert_one_line_error(
        project.inv("config.init", "--path", "x.yaml", "--user", "--vm", "v"), 2, "conflict"
    )
    assert not (project.dir / "x.yaml").exists()


def test_init_user_writes_the_per_user_file(project):
    done = project.inv("config.init", "--user", "--ssh-host", "me@mgmt")
    assert done.returncode == 0, done.stderr
    user_file = project.home / ".invoke.yaml"
    assert yaml.safe_load(user_file.read_text()) == {"dap": {"runner": {"ssh_host": "me@mgmt"}}}
    assert not project.yaml.exists()


def test_init_path_writes_that_file(project, tmp_path):
    target = tmp_path / "elsewhere.yaml"
    done = project.inv("config.init", "--path", str(target), "--gateway", "jump@bastion")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(target.read_text()) == {"dap": {"runner": {"gateway": "jump@bastion"}}}


def test_init_env_prints_export_lines_and_writes_nothing(project):
    done = project.inv("config.init", "--env", "--ssh-host", "ops@mgmt", "--ssh-key", "/k/it's")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "export DAP_RUNNER_SSH_HOST=ops@mgmt",
        "export DAP_RUNNER_SSH_KEY='/k/it'\"'\"'s'",
    ]
    assert not project.yaml.exists()


def test_init_off_a_terminal_without_flags_asks_for_them(project):
    assert_one_line_error(project.inv("config.init"), 2, "nothing to write")
    assert not project.yaml.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--vm", "a;b"], "invalid VM name 'a;b'"),
        (["--vm", "$(x)"], "invalid VM name"),
        (["--ssh-host", "-oProxyCommand=evil"], "management host"),
        (["--gateway", "host:99999"], "port"),
    ],
)
def test_init_refuses_invalid_values_before_writing(project, flags, fragment):
    assert_one_line_error(project.inv("config.init", *flags), 2, fragment)
    assert not project.yaml.exists()


def test_init_on_a_terminal_asks_with_the_current_values_as_defaults(project):
    project.yaml.write_text("dap:\n  runner:\n    vm: current-vm\n")
    # ssh_host (no default: the placeholder is not offered), ssh_key (keep), vm (keep),
    # gateway (a new one).
    output, code = run_on_terminal(project, ["config.init"], "ops@mgmt\n\n\njump@bastion\n")
    assert code == 0, output
    assert "[current-vm]" in output
    assert "~/.ssh/id_ed25519]" in output
    assert yaml.safe_load(project.yaml.read_text())["dap"]["runner"] == {
        "vm": "current-vm",
        "ssh_host": "ops@mgmt",
        "ssh_key": "~/.ssh/id_ed25519",
        "gateway": "jump@bastion",
    }


def run_on_terminal(project: Project, args: list[str], typed: str) -> tuple[str, int]:
    """Run `inv ARGS` with a pseudo-terminal as stdin/stdout, the answers typed ahead."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=project.dir,
        env=project.env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    try:
        os.write(controller, typed.encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return b"".join(chunks).decode(errors="replace"), code
