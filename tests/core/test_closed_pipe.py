"""A reader that goes away (`| head`, `| grep -m1`) ends dapfab and the remote command.

dapfab exits 141, silently, as a pipeline member killed by SIGPIPE; the Python API raises
OutputClosed (a BrokenPipeError). Run on both lab backends (CI's LXD tier lists this file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dapfab.testing.kubectl_plugins import install_kubectl_plugins
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

BIG = 256 << 20  # far more than any pipe holds: the writer must notice its reader left
PLUGINS = {
    # `kubectl flood N`: N bytes of 'x' on stdout, then stays (so only dapfab can end it).
    "kubectl-flood": "#!/bin/bash\nhead -c \"$1\" /dev/zero | tr '\\0' x\nexec sleep 300\n",
}


@pytest.fixture
def flood(runner_config):
    install_kubectl_plugins(runner_config, PLUGINS)


def _pipeline(lab, writer: list[str], reader: str) -> tuple[int, int, bytes, bytes]:
    """Run `WRITER | READER` in bash: both exit codes, the reader's output, WRITER's stderr."""
    env = {**os.environ, **lab.env()}
    env.pop("DAP_RUNNER", None)
    script = '"$@" 2>"$ERR" | ' + reader + '; printf "\\n%s %s" "${PIPESTATUS[@]}"'
    errfile = f"/tmp/dapfab-test-pipe-{os.getpid()}.err"
    try:
        done = subprocess.run(
            ["bash", "-c", script, "pipeline", *writer], cwd=REPO,
            env={**env, "ERR": errfile}, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=90,
        )
        with open(errfile, "rb") as handle:
            writer_stderr = handle.read()
    finally:
        if os.path.exists(errfile):
            os.unlink(errfile)
    out, _, codes = done.stdout.rpartition(b"\n")
    writer_code, reader_code = (int(word) for word in codes.split())
    return writer_code, reader_code, out, writer_stderr


INV = [sys.executable, "-m", "invoke"]
REPO = Path(__file__).resolve().parents[2]


def test_logs_follow_into_grep_m1_exits_when_grep_does_and_stops_kubectl(lab):
    started = time.monotonic()
    code, grep_code, out, err = _pipeline(
        lab, [*INV, "k8s.kubectl", "--", "logs", "-f", "web"], "grep -m1 listening"
    )
    assert time.monotonic() - started < 30, "dapfab did not exit after grep left"
    assert b"listening" in out and grep_code == 0, out
    assert (code, err) == (141, b"")  # silent, as a pipeline member killed by SIGPIPE
    wait_until(lambda: not lab.running("runner", "logs -f"), 20, "kubectl logs -f gone in the VM")


def test_head_c_20_of_256_mib_gets_its_bytes_and_stops_the_writer(lab, flood):
    code, _, out, err = _pipeline(
        lab, [*INV, "k8s.kubectl", "--", "flood", str(BIG)], "head -c 20"
    )
    assert out == b"x" * 20
    assert (code, err) == (141, b"")
    wait_until(lambda: not lab.running("runner", "sleep 300"), 20, "the plugin gone in the VM")


def test_closed_stderr_ends_dapfab_too(lab, flood):
    env = {**os.environ, **lab.env()}
    env.pop("DAP_RUNNER", None)
    # kubectl writes its error to stderr, which is a pipe whose reader has already left.
    script = '"$@" 2>&1 >/dev/null | true; echo "${PIPESTATUS[0]}"'
    done = subprocess.run(
        ["bash", "-c", script, "p", *INV, "k8s.kubectl", "--", "flood", str(BIG)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=90,
    )
    assert done.stdout.strip() == b"141"
    wait_until(lambda: not lab.running("runner", "sleep 300"), 20, "the plugin gone in the VM")


def test_python_caller_whose_stdout_is_a_closed_pipe_gets_output_closed(lab, flood):
    program = (
        "import sys\n"
        "from dapfab import RunnerConfig, kubectl_in_runner\n"
        "from dapfab.errors import OutputClosed\n"
        "try:\n"
        f"    kubectl_in_runner(RunnerConfig.from_env(), ['flood', '{BIG}'], in_stream=False)\n"
        "except OutputClosed as err:\n"
        "    assert isinstance(err, BrokenPipeError) and err.exit_code == 141\n"
        "    sys.stderr.write('raised OutputClosed\\n')\n"
    )
    code, _, out, err = _pipeline(lab, [sys.executable, "-c", program], "head -c 20")
    assert out == b"x" * 20
    assert b"raised OutputClosed" in err, err
    wait_until(lambda: not lab.running("runner", "sleep 300"), 20, "the plugin gone in the VM")
