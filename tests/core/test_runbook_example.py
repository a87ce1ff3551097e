"""The README's release runbook (tests/example_runbook): ``inv check release verify`` over a
group of two runners of the grown lab, with the real kubectl and curl in the runners and the
lab cluster's Deployment controller, once with both runners up and once with one stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

PROJECT = Path(__file__).resolve().parents[1] / "example_runbook"


@pytest.fixture
def lab_config(lab, tmp_path) -> Iterator[Path]:
    """``inv -f`` config: the group's runners ``eu`` and ``us`` are two runners of the grown
    lab behind mgmt; the health URL is the Service's nodePort on the lab's node."""
    import yaml

    from dapfab.testing import fleet

    fleet.grow(lab)
    profiles = fleet.profiles(lab)
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({
        "dap": {"ssh": {"known_hosts": lab.known_hosts, "persist": 0, "connect_timeout": 5},
                "runners": {"eu": profiles["m1-r1"], "us": profiles["m1-r2"]}},
        "runbook": {"health_url": f"http://{lab.cluster_address}:30090/healthz"},
    }))
    yield path
    # the lab's cluster lives for the whole session: leave it as other tests expect it
    gone = lab.run("runner", ["kubectl", "delete", "deploy,svc", "hello", "--ignore-not-found", "--wait"])
    assert gone.returncode == 0, gone.stderr
    wait_until(lambda: not lab.run("runner", ["kubectl", "get", "rs,pods", "-l", "app=hello", "-o", "name"]).stdout,
               timeout=20, what="the release's ReplicaSets and pods deleted")


def runbook(config: Path, *tasks: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    return subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), *tasks], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)


def summary(stderr: str) -> list[tuple[str, str]]:
    """(runner, exit code) of every summary line, in order."""
    lines = [line for line in stderr.splitlines() if line.startswith("dapfab: [")]
    return [(line.split("]")[0][len("dapfab: ["):], line.split(" exit ")[1].split()[0]) for line in lines]


def test_check_release_verify_rolls_out_on_both_runners(lab_config):
    done = runbook(lab_config, "check", "release", "verify")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    for runner in ("eu", "us"):
        mine = [line.split("] ", 1)[1] for line in out if line.startswith(f"[{runner}] ")]
        assert mine[0] == "yes"  # check: auth can-i
        assert {"deployment.apps/hello serverside-applied", "service/hello serverside-applied"} <= set(mine)
        assert 'deployment "hello" successfully rolled out' in mine
        body = "\n".join(mine[mine.index("{"):])  # verify: k8s.curl of the nodePort, answered by a pod
        health = json.loads(body)
        assert (health["path"], health["pod"].startswith("hello-")) == ("/healthz", True)
    # one summary line per runner for each of the four fan-out calls, all exit 0
    assert summary(done.stderr) == [("eu", "0"), ("us", "0")] * 4
    assert sorted(line for line in done.stderr.splitlines() if "HTTP" in line) == ["[eu] HTTP 200", "[us] HTTP 200"]


def test_a_stopped_runner_fails_the_check_and_nothing_is_released(lab, lab_config):
    from dapfab.testing import fleet

    fleet.stop(lab, "m1-r2")
    done = runbook(lab_config, "check", "release", "verify")
    assert done.returncode == 125, done.stderr[-3000:]
    assert summary(done.stderr) == [("eu", "0"), ("us", "125")]
    failed = next(line for line in done.stderr.splitlines() if line.startswith("dapfab: [us] exit 125"))
    assert "runner-2" in failed and "not running" in failed
    assert done.stdout.splitlines() == ["[eu] yes"]  # the check ran on eu; release never started


def test_rollout_restart_and_undo_after_the_release(lab, lab_config):
    """The operator's next moves on one runner, through the Python API (kubectl in the VM)."""
    from dapfab import RunnerConfig, kubectl_in_runner
    from dapfab.testing import fleet

    assert runbook(lab_config, "release").returncode == 0
    p = fleet.profiles(lab)["m1-r1"]
    config = RunnerConfig(ssh_host=p["ssh_host"], ssh_key=p["ssh_key"], gateway=p["gateway"], vm_name=p["vm"],
                          incus=p["incus"], known_hosts=lab.known_hosts, host_key_policy="reject", persist=0)

    def kubectl(*args: str) -> str:
        return kubectl_in_runner(config, list(args), hide=True, in_stream=False).stdout

    before = kubectl("get", "rs", "-l", "app=hello", "-o", "name").split()
    assert kubectl("rollout", "restart", "deploy/hello").strip() == "deployment.apps/hello restarted"
    kubectl("rollout", "status", "deploy/hello", "--timeout=60s")
    assert len(kubectl("get", "rs", "-l", "app=hello", "-o", "name").split()) == len(before) + 1
    assert kubectl("rollout", "undo", "deploy/hello").strip() == "deployment.apps/hello rolled back"
    kubectl("rollout", "status", "deploy/hello", "--timeout=60s")
    assert "restartedAt" not in kubectl("get", "deploy/hello", "-o", "jsonpath={.spec.template.metadata}")
