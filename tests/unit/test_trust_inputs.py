"""Trust, round 2, the pure parts: what dapfab renders, numbers it accepts, files it makes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dapfab.commands import validate_seconds
from dapfab.config import RunnerConfig
from dapfab.errors import ConfigError, DapError, render, shown


@pytest.mark.parametrize(
    "text,expected",
    [
        ("\x1b]0;pwned\x07\x1b[31mred", "\\x1b]0;pwned\\x07\\x1b[31mred"),
        ("two\nlines\r\tand tab", "two\\nlines\\r\\tand tab"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("plain ünïcødé ✓", "plain ünïcødé ✓"),
    ],
)
def test_control_characters_in_messages_are_shown_escaped(text, expected):
    assert shown(text) == expected


def test_an_error_line_stays_one_line_whatever_its_remote_text():
    line = render(DapError("kubectl said \x1b[2J\nfake line", hint="\x07"))
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line


def test_config_show_escapes_a_path_with_control_characters(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from dapfab.cli import main; main()", "config.show"],
        env={**os.environ, "DAP_RUNNER_SSH_KEY": "/keys/\x1b[31mred\x07"}, cwd=tmp_path,
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert b"\x1b" not in done.stdout and b"/keys/\\x1b[31mred\\x07" in done.stdout


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "-inf", "1e9", "", "x", True, None])
def test_a_number_of_seconds_must_be_finite_positive_and_at_most_a_day(value):
    with pytest.raises(ConfigError) as caught:
        validate_seconds(value, what="--timeout")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("value,seconds", [("30", 30.0), (0.5, 0.5), ("86400", 86400.0), (1, 1.0)])
def test_sensible_seconds_are_taken(value, seconds):
    assert validate_seconds(value, what="--timeout") == seconds


def test_zero_is_allowed_where_documented():
    assert validate_seconds("0", what="x", allow_zero=True) == 0.0


def test_the_connect_timeout_key_is_checked_the_same_way(monkeypatch):
    monkeypatch.setenv("DAP_SSH_CONNECT_TIMEOUT", "nan")
    with pytest.raises(ConfigError, match="connect_timeout"):
        RunnerConfig.from_env()


def test_python_callers_timeouts_are_checked_before_anything_is_sent():
    from dapfab import port_forward, run_in_runner, runner_curl

    config = RunnerConfig(ssh_host="nobody@198.18.255.254")  # never contacted
    with pytest.raises(ConfigError):
        run_in_runner(config, "true", timeout=float("nan"))
    with pytest.raises(ConfigError):
        runner_curl(config, "http://web/", timeout=-5)
    with pytest.raises(ConfigError):
        with port_forward(config, "pod/web", 80, ready_timeout=float("inf")):
            pass


def test_new_known_hosts_directories_are_private(tmp_path):
    import paramiko

    from dapfab.hostkeys import append_known_host

    path = tmp_path / "new" / "ssh" / "known_hosts"
    append_known_host(str(path), "host", paramiko.RSAKey.generate(1024))
    assert oct(os.stat(tmp_path / "new").st_mode & 0o777) == "0o700"
    assert oct(os.stat(tmp_path / "new" / "ssh").st_mode & 0o777) == "0o700"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("option,value", [("namespace", "default\nusers: []"), ("namespace", "A"),
                                          ("context", "-x"), ("context", "a\nb")])
def test_python_callers_namespaces_and_contexts_are_checked_as_the_tasks_check_them(option, value):
    from dapfab.forward import Forward

    with pytest.raises(ConfigError, match=f"invalid (kubectl )?{option}"):
        Forward(RunnerConfig(ssh_host="a@b", vm_name="v"), "pod/web", 80, **{option: value})
