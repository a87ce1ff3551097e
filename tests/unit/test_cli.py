"""The CLI edge: the argv after `--`, the -n short flag, pty detection, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from invoke import Collection, Program, task

from dapfab.commands import wants_pty
from dapfab.errors import ConfigError
from dapfab.tasks.edge import DapTask, cli_edge, command_line_remainder

seen: list = []


@task
def probe(c):
    seen.append(command_line_remainder(probe))


@task
def release(c):
    probe(c)


@task(klass=DapTask, auto_shortflags=False)
def flags(c, namespace=None, context=None):
    seen.append((namespace, context))


@task
def broken(c):
    with cli_edge():
        raise ConfigError("bad VM name 'a;b'", hint="use letters, digits and dashes")


@task
def interrupted(c):
    with cli_edge():
        raise KeyboardInterrupt


def run(*argv: str) -> int:
    seen.clear()
    program = Program(
        namespace=Collection(probe, release, flags, broken, interrupted), name="t", binary="t"
    )
    try:
        program.run(["t", *argv])
    except SystemExit as exit:
        return exit.code or 0
    return 0


def test_remainder_keeps_every_word_exactly():
    run("probe", "--", "a b", "", "$x", "'q'", "-n")
    assert seen == [["a b", "", "$x", "'q'", "-n"]]


def test_remainder_is_not_read_by_a_task_called_from_python():
    run("release", "--", "x")
    assert seen == [None]


def test_remainder_goes_only_to_the_last_task_named():
    run("probe", "release", "--", "x")
    assert seen == [None, None]
    run("release", "probe", "--", "x")
    assert seen == [None, ["x"]]


def test_only_namespace_gets_a_short_flag():
    assert run("flags", "-n", "kube-system", "--context", "prod") == 0
    assert seen == [("kube-system", "prod")]
    assert run("flags", "-c", "prod") == 1


def test_dap_errors_become_one_line_and_their_exit_code(capsys):
    assert run("broken") == 2
    err = capsys.readouterr().err
    assert err == "dapfab: config: bad VM name 'a;b' (use letters, digits and dashes)\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["exec", "-it", "web", "--", "sh"], True),
        (["exec", "-ti", "web", "--", "sh"], True),
        (["exec", "--tty", "-i", "web", "--", "sh"], True),
        (["exec", "web", "--", "ls", "-t"], False),
        (["edit", "deploy/web"], True),
        (["attach", "-t", "web"], True),
        (["get", "pods", "-t"], False),
        (["logs", "-f", "web"], False),
        (["-n", "x", "exec", "-it", "web"], True),
    ],
)
def test_wants_pty_only_for_interactive_commands(args, expected):
    assert wants_pty(args) is expected


def _dap(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", "from dapfab.cli import main; main()", *argv],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_dap_says_kubectls_arguments_go_after_the_double_dash_when_it_is_forgotten():
    done = _dap("k8s.kubectl", "get", "pods")
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        "No idea what 'get' is! (kubectl's arguments go after `--`: dap k8s.kubectl -- get pods)"
    )


def test_kubectl_help_says_args_is_for_python_callers_and_arguments_follow_the_dashes():
    text = _dap("-h", "k8s.kubectl").stdout.decode()
    assert "--args" in text and "for Python callers only" in text
    assert "kubectl's arguments go after `--`" in text


def test_ctrl_c_inside_a_task_body_exits_130_with_one_line(capsys):
    assert run("interrupted") == 130
    assert capsys.readouterr().err == "dapfab: laptop: interrupted by Ctrl-C\n"


def test_the_namespace_flag_beats_the_configured_and_environment_namespace():
    import os

    done = subprocess.run(
        [sys.executable, "-c", "from dapfab.cli import main; main()", "--dry", "k8s.kubectl",
         "-n", "from-flag", "--", "get", "pods"],
        env={**os.environ, "DAP_KUBECTL_NAMESPACE": "from-env"}, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "kubectl --namespace from-flag get pods" in done.stdout and "from-env" not in done.stdout
