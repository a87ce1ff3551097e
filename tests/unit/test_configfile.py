"""Writing the dap: section: comments and keys kept, no clobbering, atomic, mode 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from invoke.util import yaml  # the parser Invoke itself reads invoke.yaml with

from dapfab import configfile
from dapfab.configfile import export_lines, write_dap_section
from dapfab.errors import ConfigError

EXISTING = """\
# Operations project settings (keep this comment)
run:
    echo: true    # and this one
dap:
    runner:
        vm: prod-runner   # the production runner
    kubectl:
        namespace: ops
tasks:
    dedupe: false
"""


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_missing_file_is_created_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "invoke.yaml"
    assert write_dap_section(path, {"runner": {"ssh_host": "ops@mgmt", "gateway": None}}) == path
    assert yaml.safe_load(path.read_text()) == {"dap": {"runner": {"ssh_host": "ops@mgmt"}}}
    assert mode(path) == 0o600


def test_other_keys_and_comments_are_kept(tmp_path):
    path = tmp_path / "invoke.yaml"
    path.write_text(EXISTING)
    path.chmod(0o644)
    write_dap_section(path, {"runner": {"ssh_host": "ops@mgmt", "vm": "prod-runner"}})
    text = path.read_text()
    for comment in (
        "# Operations project settings (keep this comment)",
        "# and this one",
        "# the production runner",
    ):
        assert comment in text
    assert yaml.safe_load(text) == {
        "run": {"echo": True},
        "dap": {
            "runner": {"vm": "prod-runner", "ssh_host": "ops@mgmt"},
            "kubectl": {"namespace": "ops"},
        },
        "tasks": {"dedupe": False},
    }
    assert "\n        ssh_host: ops@mgmt\n" in text, "the file's own 4-space indentation is kept"
    assert mode(path) == 0o600


def test_a_comments_only_file_keeps_its_comments(tmp_path):
    path = tmp_path / "invoke.yaml"
    path.write_text("# just a comment\n# dap:\n#   runner: {}\n")
    write_dap_section(path, {"runner": {"vm": "v"}})
    text = path.read_text()
    assert text.startswith("# just a comment\n# dap:\n")
    assert yaml.safe_load(text) == {"dap": {"runner": {"vm": "v"}}}


def test_a_different_existing_value_is_refused_and_the_file_left_untouched(tmp_path):
    path = tmp_path / "invoke.yaml"
    path.write_text(EXISTING)
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as caught:
        write_dap_section(path, {"runner": {"ssh_host": "ops@mgmt", "vm": "other"}})
    error = caught.value
    assert error.exit_code == 2
    assert "dap.runner.vm" in error.message
    assert "'prod-runner'" in error.message and "'other'" in error.message
    assert "--force" in error.hint
    assert path.read_bytes() == before
    assert mode(path) == 0o644
    assert os.listdir(tmp_path) == ["invoke.yaml"]


def test_the_same_value_again_is_not_a_conflict(tmp_path):
    path = tmp_path / "invoke.yaml"
    path.write_text(EXISTING)
    write_dap_section(path, {"runner": {"vm": "prod-runner"}})
    assert yaml.safe_load(path.read_text())["dap"]["runner"] == {"vm": "prod-runner"}


def test_force_overwrites_a_different_value_and_keeps_its_comment(tmp_path):
    path = tmp_path / "invoke.yaml"
    path.write_text(EXISTING)
    write_dap_section(path, {"runner": {"vm": "other"}}, force=True)
    text = path.read_text()
    assert yaml.safe_load(text)["dap"]["runner"]["vm"] == "other"
    assert "# the production runner" in text


def test_a_symlinked_file_is_written_through_the_link(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text("run: {echo: true}\n")
    link = tmp_path / "invoke.yaml"
    link.symlink_to(real)
    assert write_dap_section(link, {"runner": {"vm": "v"}}) == real
    assert link.is_symlink()
    assert yaml.safe_load(real.read_text())["dap"] == {"runner": {"vm": "v"}}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("dap: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "does not hold a YAML mapping"),
        ("dap: 5\n", "dap in"),
        ("dap:\n  runner: ops@mgmt\n", "runner is not a mapping"),
    ],
)
def test_files_it_cannot_edit_are_refused_untouched(tmp_path, text, fragment):
    path = tmp_path / "invoke.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        write_dap_section(path, {"runner": {"vm": "v"}})
    assert fragment in caught.value.message
    assert path.read_text() == text


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(
    tmp_path, monkeypatch, failure
):
    path = tmp_path / "invoke.yaml"
    path.write_text(EXISTING)

    def broken_fsync(fd):
        raise failure

    monkeypatch.setattr(configfile.os, "fsync", broken_fsync)
    with pytest.raises(ConfigError if isinstance(failure, OSError) else KeyboardInterrupt):
        write_dap_section(path, {"runner": {"ssh_host": "ops@mgmt"}})
    assert os.listdir(tmp_path) == ["invoke.yaml"]
    assert path.read_text() == EXISTING


def test_export_lines_are_shell_safe(tmp_path):
    values = {
        "runner": {"ssh_host": "ops@mgmt", "ssh_key": "/keys/it's mine", "vm": "v", "gateway": None}
    }
    lines = export_lines(values)
    assert lines == [
        "export DAP_RUNNER_SSH_HOST=ops@mgmt",
        "export DAP_RUNNER_SSH_KEY='/keys/it'\"'\"'s mine'",
        "export DAP_RUNNER_VM=v",
    ]
    script = "\n".join(lines) + '\nprintf "%s|%s" "$DAP_RUNNER_SSH_KEY" "$DAP_RUNNER_VM"'
    done = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout == "/keys/it's mine|v"


# -- another user's links and files (trust, round 2): run as root, `nobody` owns them -------
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def root_only(tmp_path):
    """A file only root may touch, which an attacker would like config.init to rewrite."""
    secret_dir = tmp_path / "root-only"
    secret_dir.mkdir(mode=0o700)
    target = secret_dir / "shadow"
    target.write_text("root's data\n")
    target.chmod(0o400)
    return target


@needs_root
def test_a_symlink_planted_by_another_user_is_refused_and_its_target_untouched(tmp_path, root_only):
    link = tmp_path / "invoke.yaml"
    link.symlink_to(root_only)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        write_dap_section(link, {"runner": {"vm": "v"}})
    assert caught.value.exit_code == 2
    assert "is a symlink owned by another user (uid 65534)" in str(caught.value)
    assert root_only.read_text() == "root's data\n" and mode(root_only) == 0o400


@needs_root
def test_a_directory_link_of_another_user_on_the_way_is_refused(tmp_path, root_only):
    hop = tmp_path / "project"
    hop.symlink_to(root_only.parent)
    os.lchown(hop, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="symlink owned by another user"):
        write_dap_section(hop / "shadow", {"runner": {"vm": "v"}})
    assert root_only.read_text() == "root's data\n"


@needs_root
def test_a_file_owned_by_another_user_is_not_replaced(tmp_path):
    theirs = tmp_path / "invoke.yaml"
    theirs.write_text("run: {echo: true}\n")
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=r"belongs to another user \(uid 65534\)"):
        write_dap_section(theirs, {"runner": {"vm": "v"}})
    assert theirs.read_text() == "run: {echo: true}\n" and theirs.stat().st_uid == NOBODY


def test_a_link_planted_after_the_check_is_replaced_never_followed(tmp_path, root_only):
    target = tmp_path / "invoke.yaml"
    directory = configfile._open_directory(tmp_path)
    try:
        target.symlink_to(root_only)  # planted between the check and the write
        with pytest.raises(ConfigError, match="cannot read"):
            configfile._read_at(directory, target)
        configfile._replace_at(directory, target, "dap: {}\n")
    finally:
        os.close(directory)
    assert not target.is_symlink() and target.read_text() == "dap: {}\n"
    assert root_only.read_text() == "root's data\n" and mode(root_only) == 0o400


@needs_root
def test_config_init_refuses_another_users_link_with_one_line_and_exit_2(tmp_path, root_only):
    link = tmp_path / "ops.yaml"  # not invoke.yaml: dap would read it as its config
    link.symlink_to(root_only)
    os.lchown(link, NOBODY, NOBODY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "from dapfab.cli import main; main()", "config.init", "--path",
         str(link), "--ssh-host", "ops@mgmt"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, cwd=elsewhere,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"dapfab: config: refusing {link}: {link} is a symlink")
    assert len(done.stderr.splitlines()) == 1
    assert root_only.read_text() == "root's data\n"
