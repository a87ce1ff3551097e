"""Every `inv --dry` line is a command a user can paste on the management host.

Each line is run by hand, as a user would: `ssh mgmt '<line>'` with OpenSSH's own client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from dapfab.testing.kubectl_plugins import install_kubectl_plugins
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

WORDS = ["two words", "it's", "$HOME", "`id`", "*", "line\nbreak", "--dash", "", "ünï ✓"]


def _dry(cli, *args: str) -> str:
    done = cli("--dry", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().rstrip("\n")


def _on_mgmt(lab, line: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", lab.ssh_config, "mgmt", line], capture_output=True, timeout=60, **kwargs
    )


def test_the_kubectl_line_delivers_the_same_argv_when_pasted(cli, lab, runner_config):
    install_kubectl_plugins(runner_config, {"kubectl-dump_argv": "#!/bin/bash\nprintf '%s\\0' \"$@\"\n"})
    line = _dry(cli, "k8s.kubectl", "--", "dump-argv", *WORDS)
    done = _on_mgmt(lab, line, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [w.encode() for w in WORDS]


def test_the_curl_line_runs_when_pasted_with_secrets_as_placeholders(cli, lab):
    url = f"http://{lab.cluster_address}:8080/echo"
    line = _dry(cli, "k8s.curl", "--header", "Authorization: Bearer s3cret", "--data", "b0dy", url)
    assert "s3cret" not in line and "b0dy" not in line
    assert "<value of Authorization>" in line and "<request body: 4 bytes>" in line
    done = _on_mgmt(lab, line, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    echoed = json.loads(done.stdout)
    assert echoed["method"] == "POST"
    assert echoed["headers"]["authorization"] == "<value of Authorization>"
    assert done.stderr.decode().endswith("HTTP 200\n")


def _port_forwards(lab) -> list[str]:
    return [
        " ".join(argv)
        for _, argv in lab.processes("runner", nested=True)
        if "port-forward" in argv and "kubectl" in argv[0]
    ]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("how", ["ssh killed", "Ctrl-C"])
def test_the_forward_line_pasted_by_hand_ends_with_its_ssh_session(cli, lab, how):
    line = _dry(cli, "k8s.forward", "pod/web", "8080")
    ssh = subprocess.Popen(
        ["ssh", "-F", lab.ssh_config, "mgmt", line], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert ssh.stdout.readline().startswith(b"Forwarding from 127.0.0.1:")
        assert _port_forwards(lab)
        if how == "ssh killed":
            ssh.kill()
        else:  # what a user's Ctrl-C does on mgmt: incus passes SIGINT on to the command
            # the client only, not the lab's exec server that it forked (same argv)
            found = [pid for pid, argv in lab.processes("mgmt") if "exec" in argv
                     and any("port-forward" in word for word in argv)]
            clients = [pid for pid in found if _parent(pid) not in found]
            assert len(clients) == 1
            os.kill(clients[0], signal.SIGINT)
        started = time.monotonic()
        wait_until(lambda: not _port_forwards(lab), 20, "kubectl port-forward gone in the VM")
        assert time.monotonic() - started < 20
    finally:
        ssh.kill()
        ssh.wait(10)
