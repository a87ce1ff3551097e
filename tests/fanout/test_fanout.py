"""Fan-out on the lab: one k8s.kubectl or k8s.curl over several runner profiles at once.

The lab has one runner VM; the profiles here all reach it (each its own name, prefix and
outcome), next to profiles that fail at a hop: a VM that does not exist and a management
host that does not answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

LINES = 10_000
PLUGINS = {
    "kubectl-many_lines": f"#!/bin/bash\nfor ((i=0;i<{LINES};i++)); do echo \"line $i of a runner\"; done\n",
    "kubectl-sha": "#!/bin/bash\nsha256sum | cut -c1-64\n",
    "kubectl-fan_stream": "#!/bin/bash\nwhile :; do echo tick; sleep 0.5; done\n",
    "kubectl-exit_with": "#!/bin/bash\nexit \"$1\"\n",
}
GOOD = ["eu", "us", "asia", "staging"]


@pytest.fixture(scope="module")
def installed(dapfab_lab):
    import dataclasses

    from dapfab.testing.kubectl_plugins import install_kubectl_plugins
    from dapfab.testing.plugin import _config

    install_kubectl_plugins(dataclasses.replace(_config(dapfab_lab), persist=0), PLUGINS)


@pytest.fixture
def project(lab, installed, tmp_path) -> Path:
    """A project whose invoke.yaml defines the profiles (and nothing comes from DAP_*)."""
    import yaml

    def profile(**changes):
        return {"ssh_host": lab.ssh_host, "ssh_key": lab.ssh_key, "gateway": lab.gateway,
                "vm": lab.vm_name, "incus": lab.incus, **changes}

    runners = {name: profile() for name in GOOD}
    runners["novm"] = profile(vm="no-such-vm")
    runners["nohost"] = profile(ssh_host="root@198.51.100.7", ssh={"connect_timeout": 3})
    (tmp_path / "invoke.yaml").write_text(yaml.safe_dump({"dap": {
        "ssh": {"known_hosts": lab.known_hosts, "persist": 0},
        "runners": runners,
        "groups": {"all": GOOD, "mixed": ["eu", "novm", "us", "nohost"]},
    }}))
    (tmp_path / "tasks.py").write_text(
        "from invoke import Collection\nfrom dapfab.tasks import ns as d\n"
        "ns = Collection(d.collections['k8s'], d.collections['config'])\n")
    return tmp_path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}


def inv(project: Path, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=project, env=env(),
                          capture_output=True, timeout=180, **kwargs)


def test_every_line_arrives_whole_with_its_runners_prefix(project):
    done = inv(project, "k8s.kubectl", "--runner", "@all", "--", "many-lines")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split(b"\n")
    assert lines.pop() == b""
    for name in GOOD:
        mine = [line for line in lines if line.startswith(f"[{name}] ".encode())]
        assert mine == [f"[{name}] line {i} of a runner".encode() for i in range(LINES)]
    assert len(lines) == LINES * len(GOOD)  # nothing else, nothing split or mixed
    summary = done.stderr.decode().splitlines()
    assert [line.split(" exit ")[0] for line in summary] == [f"dapfab: [{n}]" for n in GOOD]
    assert all(" exit 0 in " in line for line in summary)


def test_stdin_is_fed_to_every_runner(project):
    blob = os.urandom(3 << 20)
    done = inv(project, "k8s.kubectl", "--runner", "eu,us,asia", "--", "sha", input=blob,
               stdin=None)
    want = hashlib.sha256(blob).hexdigest()
    assert sorted(done.stdout.decode().splitlines()) == sorted(f"[{n}] {want}" for n in ("eu", "us", "asia"))


def test_failed_hops_are_summarised_and_the_others_finish(project):
    done = inv(project, "k8s.kubectl", "--runner", "@mixed", "--", "exit-with", "0")
    summary = dict(line.split(" exit ", 1) for line in done.stderr.decode().splitlines()
                   if line.startswith("dapfab: ["))
    assert list(summary) == ["dapfab: [eu]", "dapfab: [novm]", "dapfab: [us]", "dapfab: [nohost]"]
    assert summary["dapfab: [eu]"].startswith("0 in ") and summary["dapfab: [us]"].startswith("0 in ")
    assert summary["dapfab: [novm]"].startswith("125 in ") and "no-such-vm" in summary["dapfab: [novm]"]
    assert summary["dapfab: [nohost]"].startswith("255 in ") and "198.51.100.7" in summary["dapfab: [nohost]"]
    assert done.returncode == 125  # the first runner, in the order given, that failed


def test_the_exit_code_is_the_first_failure_in_order(project):
    done = inv(project, "k8s.kubectl", "--runner", "eu,us", "--", "exit-with", "0")
    assert done.returncode == 0
    done = inv(project, "k8s.kubectl", "--runner", "eu,us", "--parallel", "1", "--", "exit-with", "4")
    assert done.returncode == 4


@pytest.mark.parametrize("argv, says", [
    (("k8s.kubectl", "--runner", "eu,nope", "--", "version"), "unknown runner profile 'nope'"),
    (("k8s.kubectl", "--runner", "eu,us", "--", "exec", "-it", "web", "--", "sh"), "one runner, not 2"),
    (("k8s.forward", "pod/web", "8080", "--runner", "@all"), "one runner, not 4"),
])
def test_what_cannot_fan_out_is_refused_before_anything_runs(project, lab, argv, says):
    done = inv(project, *argv)
    assert done.returncode == 2 and says in done.stderr.decode(), done.stderr
    assert done.stdout == b""


def test_curl_json_prints_one_object_per_runner(project, lab):
    url = f"http://{lab.cluster_address}:8080/status/404"
    done = inv(project, "k8s.curl", url, "--runner", "eu,us", "--json")
    objects = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert sorted(o["runner"] for o in objects) == ["eu", "us"]
    assert all(list(o)[:2] == ["runner", "status"] and o["status"] == 404 for o in objects)
    assert done.returncode == 22
    plain = inv(project, "k8s.curl", url, "--runner", "eu,us", "--no-fail")
    assert sorted(plain.stdout.decode().splitlines()) == ['[eu] {"status": 404}', '[us] {"status": 404}']
    assert {"[eu] HTTP 404", "[us] HTTP 404"} <= set(plain.stderr.decode().splitlines())
    assert plain.returncode == 0


def test_dry_prints_each_runners_command_with_its_prefix(project):
    done = inv(project, "--dry", "k8s.kubectl", "--runner", "eu,novm", "--", "get", "pods")
    lines = done.stdout.decode().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["[eu]", "[novm]"]
    assert "exec no-such-vm -T -- bash -lc 'kubectl get pods'" in lines[1]


def streaming(lab) -> bool:
    return lab.running("runner", "kubectl-fan_stream")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGKILL, None)])
def test_interrupt_or_kill_with_every_runner_busy_leaves_nothing(project, lab, sig, code):
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "k8s.kubectl", "--runner", "@all",
                             "--", "fan-stream"], cwd=project, env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[bytes] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, b"")), daemon=True).start()
    try:
        wait_until(lambda: {line.split(b"]")[0] for line in seen} >= {f"[{n}".encode() for n in GOOD},
                   what="every runner ticking")
        os.kill(proc.pid, sig)
        returned = proc.wait(30)
        if code is not None:
            assert returned == code
            assert not streaming(lab)  # gone before dapfab returned
        else:
            wait_until(lambda: not streaming(lab), timeout=20, what="every remote command gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_api_results_per_runner(project, lab):
    code = textwrap.dedent(f"""
        import os
        from invoke import Config
        from dapfab.config import RunnerConfig
        from dapfab.fanout import FanOutError, kubectl_in_runners
        config = Config(project_location={str(project)!r}); config.load_project()
        runners = {{n: RunnerConfig.from_invoke_config(config, runner=n) for n in ("eu", "novm")}}
        results = kubectl_in_runners(runners, ["exit-with", "0"], hide=True, warn=True)
        print([(n, r.succeeded, r.failed, r.exited) for n, r in results.items()])
        try:
            kubectl_in_runners(runners, ["exit-with", "0"], hide=True)
        except FanOutError as err:
            print(err.exit_code, sorted(err.results))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env(), capture_output=True,
                          timeout=120)
    assert done.stdout.decode().splitlines() == [
        "[('eu', True, False, 0), ('novm', False, True, 125)]", "125 ['eu', 'novm']"], done.stderr


def test_config_show_and_doctor_take_a_group(project):
    shown = inv(project, "config.show", "--runner", "eu,novm").stdout.decode()
    assert "== runner eu ==" in shown and "== runner novm ==" in shown and "no-such-vm" in shown
    doctor = inv(project, "config.doctor", "--runner", "eu,novm")
    out = doctor.stdout.decode()
    eu, novm = out.split("== runner novm ==")
    assert "== runner eu ==" in eu and "FAIL" not in eu and "OK    curl present" in eu
    assert "FAIL  VM exists and running" in novm
    assert doctor.returncode == 125  # the first failing runner's hop
