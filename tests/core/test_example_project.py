"""A separate operations project imports the dapfab collection and chains its tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

PROJECT = Path(__file__).resolve().parents[1] / "example_ops"


def test_runbook_calls_the_python_api_and_the_task_with_its_own_namespace(cli):
    done = cli("release", cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    seen = next(line for line in out.splitlines() if line.startswith("runbook sees:")).split()
    assert {"namespace/default", "namespace/kube-system"} <= set(seen)
    # The project's `dap.kubectl.namespace: kube-system` reached the task's kubectl call,
    # while every other dap setting came from the defaults and the lab's DAP_* variables.
    assert "pod/" in out and "pod/web" not in out


def test_project_override_keeps_every_other_default(cli):
    done = cli("dap.config.show", cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "kube-system" in out
    assert "host_key_policy" in out and "connect_timeout" in out


def test_chained_tasks_run_in_one_invocation(cli):
    done = cli("release", "dap.k8s.kubectl", "--", "get", "ns", "default", "-o", "name",
               cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert out.count("runbook sees:") == 1
    assert out.rstrip().endswith("namespace/default")


def test_remainder_is_not_taken_by_the_runbook(cli):
    """`inv release -- x`: the kubectl call inside release must not pick up `x`."""
    done = cli("release", "--", "delete", "ns", "kube-system", cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    assert b"deleted" not in done.stdout


def test_list_and_help_show_every_task_with_help(cli, tmp_path):
    for program, cwd in (("invoke", Path(__file__).resolve().parents[2]), ("dap", tmp_path)):
        done = cli("--list", program=program, cwd=cwd)
        assert done.returncode == 0, done.stderr
        listing = done.stdout.decode()
        for name in ("k8s.kubectl", "config.init", "config.show"):
            assert name in listing
            line = next(ln for ln in listing.splitlines() if name in ln)
            assert len(line.split(name, 1)[1].strip()) > 10, f"{name} has no help line"
    done = cli("--help", "k8s.kubectl")
    text = done.stdout.decode()
    for flag in ("-n STRING, --namespace", "--context", "--runner"):
        assert flag in text
    assert "-h" not in text.replace("--help", "").split("Options:")[1].split()
