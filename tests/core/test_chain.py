"""inv k8s.kubectl and run_in_runner through the whole lab chain (laptop -> bastion -> mgmt -> VM)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys

import pytest

from dapfab import run_in_runner
from dapfab.errors import CommandError, ConfigError, HostKeyError
from dapfab.quoting import join
from dapfab.testing.kubectl_plugins import install_kubectl_plugins

pytestmark = pytest.mark.lab

NASTY = [
    "plain",
    "",
    "two words",
    "it's",
    'double "quotes"',
    "$HOME",
    "$(touch /tmp/dapfab-pwned)",
    "`id`",
    "back\\slash",
    "*",
    "?",
    "line\nbreak",
    "--leading-dash",
    "-n",
    "--from-literal=k=$(id) x",
    "tab\there",
    "ünïcødé ✓ 日本",
    "; rm -rf /",
    "a|b&c>d<e",
    "'",
    "\\",
    "~",
    "{a,b}",
]

# A kubectl plugin in the runner: `kubectl dump-argv ARGS` prints ARGS NUL-terminated.
PLUGINS = {
    "kubectl-dump_argv": "#!/bin/bash\nprintf '%s\\0' \"$@\"\n",
    "kubectl-exit_with": "#!/bin/bash\nexit \"$1\"\n",
    "kubectl-sha_stdin": "#!/bin/bash\nsha256sum | cut -d' ' -f1\n",
    # The hash is computed before the data is sent: a `>(sha256sum)` is not waited for
    # and dies with the launcher's PID namespace when the command exits.
    "kubectl-emit": (
        "#!/bin/bash\nf=$(mktemp)\nhead -c \"$1\" /dev/urandom >\"$f\"\n"
        "sha256sum <\"$f\" | cut -d' ' -f1 >&2\ncat \"$f\"\nrm -f \"$f\"\n"
    ),
}


@pytest.fixture
def plugins(lab, runner_config):
    """Install the test's kubectl plugins in the runner user's ~/bin, put on its login PATH."""
    install_kubectl_plugins(runner_config, PLUGINS)
    path = run_in_runner(runner_config, "command -v kubectl-dump_argv", hide=True).stdout
    assert path.strip().endswith("/bin/kubectl-dump_argv")


def test_run_in_runner_delivers_exact_argv(runner_config):
    result = run_in_runner(runner_config, join(["printf", "%s\\0", *NASTY]), hide=True)
    assert result.stdout_bytes.split(b"\0")[:-1] == [a.encode() for a in NASTY]


def test_kubectl_task_delivers_exact_argv_from_the_command_line(cli, plugins):
    done = cli("k8s.kubectl", "--", "dump-argv", *NASTY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [a.encode() for a in NASTY]


def test_dap_program_delivers_exact_argv_too(cli, plugins, tmp_path):
    done = cli("k8s.kubectl", "--", "dump-argv", *NASTY, program="dap", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [a.encode() for a in NASTY]


@pytest.mark.parametrize("code", [0, 1, 3, 42, 127, 254])
def test_kubectl_exit_code_passes_through(cli, plugins, code):
    done = cli("k8s.kubectl", "--", "exit-with", str(code))
    assert done.returncode == code
    assert done.stderr == b""


def test_fifty_mib_of_stdin_arrives_intact(cli, plugins):
    data = bytes(range(256)) * (50 * 4096)
    done = cli("k8s.kubectl", "--", "sha-stdin", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == hashlib.sha256(data).hexdigest()


def test_fifty_mib_of_stdout_arrives_byte_for_byte(cli, plugins):
    done = cli("k8s.kubectl", "--", "emit", str(50 << 20))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == 50 << 20
    assert hashlib.sha256(done.stdout).hexdigest() == done.stderr.decode().strip()


def test_library_captures_binary_output_and_passes_stdin(runner_config):
    blob = bytes(range(256)) * 64
    result = run_in_runner(runner_config, "cat; printf '\\377' >&2", hide=True,
                           in_stream=io.BytesIO(blob))
    assert result.stdout_bytes == blob
    assert result.stderr_bytes == b"\xff"


def test_nonzero_exit_raises_with_the_result_unless_warn(runner_config):
    with pytest.raises(CommandError) as caught:
        run_in_runner(runner_config, "echo out; exit 9", hide=True)
    assert caught.value.exit_code == 9
    assert caught.value.result.stdout == "out\n"
    assert run_in_runner(runner_config, "exit 9", hide=True, warn=True).exited == 9


def test_dry_run_prints_the_reference_command_and_runs_nothing(cli, lab):
    done = cli("--dry", "k8s.kubectl", "-n", "kube-system", "--", "get", "pods", "a b")
    assert done.returncode == 0, done.stderr
    line = done.stdout.decode().strip()
    assert line.startswith(f"{lab.incus} exec {lab.vm_name} ")
    assert "bash -lc" in line and "--namespace kube-system get pods" in line


def test_unknown_host_key_is_refused_with_exit_255(cli, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    done = cli("k8s.kubectl", "--", "version", env={"DAP_SSH_KNOWN_HOSTS": str(empty)})
    assert done.returncode == 255
    err = done.stderr.decode()
    assert "host key" in err and "unknown" in err and "SHA256:" in err
    assert empty.read_text() == ""


def test_unknown_host_key_raises_host_key_error_in_the_library(runner_config, tmp_path):
    import dataclasses

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = dataclasses.replace(runner_config, known_hosts=str(empty))
    with pytest.raises(HostKeyError):
        run_in_runner(config, "true", hide=True)


def test_accept_new_appends_the_unknown_keys_and_connects(runner_config, tmp_path):
    import dataclasses

    fresh = tmp_path / "known_hosts"
    fresh.write_text("@cert-authority *.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKv\n")
    config = dataclasses.replace(
        runner_config, known_hosts=str(fresh), host_key_policy="accept-new"
    )
    assert run_in_runner(config, "echo ok", hide=True).stdout == "ok\n"
    lines = fresh.read_text().splitlines()
    assert lines[0].startswith("@cert-authority")
    assert len(lines) == 1 + (2 if runner_config.gateway else 1)


def test_placeholder_host_is_never_contacted(tmp_path):
    """With no network at all, the placeholder host still gives the config error (exit 2)."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", "from dapfab.cli import main; main()",
         "k8s.kubectl", "--", "get", "pods"],
        cwd=tmp_path, env=env, capture_output=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert b"config.init" in done.stderr


def test_placeholder_host_raises_config_error_in_the_library():
    from dapfab import RunnerConfig

    with pytest.raises(ConfigError):
        run_in_runner(RunnerConfig.from_env({}), "true")


def test_runner_hop_failure_is_reported_even_when_the_channel_closed_before_the_command_was_sent(
    lab, runner_config, monkeypatch
):
    """incus missing on mgmt: the exec ends at once, sometimes before the command frame
    leaves the laptop. Hold the frame until the channel is closed, so the race always goes
    that way: the caller must still get the runner hop's error, not a socket traceback."""
    from dapfab.errors import RunnerError
    from dapfab.execution import RemoteProcess
    from dapfab.testing.waiting import wait_until

    real_send = RemoteProcess.send

    def late_send(self, data):
        wait_until(lambda: self.channel.closed, timeout=10, what="the channel to close")
        real_send(self, data)

    monkeypatch.setattr(RemoteProcess, "send", late_send)
    direct = dataclasses.replace(runner_config, persist=0)  # this process's own channel
    lab.remove_incus()
    try:
        with pytest.raises(RunnerError) as caught:
            run_in_runner(direct, "true", hide=True)
    finally:
        lab.restore_incus()
    assert "not installed" in str(caught.value)


def test_kubectl_exec_in_a_pod_passes_stdin_output_and_the_exit_code(cli):
    """The lab's pods answer exec as a cluster does: the pod command's exit code is kubectl's,
    and so dapfab's."""
    done = cli("k8s.kubectl", "--", "exec", "-i", "web", "--", "sh", "-c",
               'read -r line; echo "pod got $line"; echo oops >&2; exit 3', input=b"hello\n")
    assert done.stdout == b"pod got hello\n"
    assert done.stderr == b"oops\ncommand terminated with exit code 3\n"
    assert done.returncode == 3
