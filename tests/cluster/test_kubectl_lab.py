"""The real kubectl inside the lab's runner against the lab's cluster (``lab`` fixture: root)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from typing import Any

import pytest

from dapfab.testing.cluster import cluster_status, restart_pod

pytestmark = pytest.mark.lab


def kubectl(lab: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return lab.run("runner", ["kubectl", *args], input=stdin)


class RunnerProcess:
    """A long-running command in the runner; ``stop()`` kills it by its PID in the runner."""

    def __init__(self, lab: Any, argv: list[str]) -> None:
        self.lab, self.argv = lab, argv
        self.proc = lab.popen("runner", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put("")

    def readline(self, timeout: float = 30) -> str:
        """The next output line ('' at EOF or after ``timeout`` seconds)."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            line = ""
        self.lines.append(line)
        return line

    def inner_pids(self) -> list[int]:
        return [pid for pid, argv in self.lab.processes("runner") if argv == self.argv]

    def stop(self) -> None:
        for pid in self.inner_pids():
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def forward(lab: Any, *args: str) -> tuple[RunnerProcess, list[int]]:
    """Start ``kubectl port-forward ARGS`` in the runner and read its local ports."""
    pf = RunnerProcess(lab, ["kubectl", "port-forward", *args])
    ports: list[int] = []
    wanted = sum(1 for a in args if ":" in a)
    end = time.monotonic() + 30
    while len(ports) < wanted and time.monotonic() < end:
        line = pf.readline(timeout=max(0.1, end - time.monotonic()))
        if not line:
            break
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        if m:
            ports.append(int(m.group(1)))
    if len(ports) < wanted:
        pf.stop()
        raise AssertionError(f"port-forward did not start: {''.join(pf.lines)!r}")
    return pf, ports


def runner_curl(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run("runner", ["curl", "-sS", "--max-time", "30", *args])


def test_get_pods_json_jsonpath_and_svc_in_the_runner(lab: Any) -> None:
    table = kubectl(lab, "get", "pods")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table.stdout.splitlines()[1].split()[:3] == ["web", "1/1", "Running"]
    doc = json.loads(kubectl(lab, "get", "pods", "-o", "json").stdout)
    assert [p["status"]["phase"] for p in doc["items"]] == ["Running"]
    ip = kubectl(lab, "get", "pod", "web", "-o", "jsonpath={.status.podIP}").stdout
    assert ip == lab.cluster_address
    svc = kubectl(lab, "get", "svc", "web")
    assert svc.stdout.splitlines()[1].split()[0:2] == ["web", "ClusterIP"]


def test_not_found_exits_1_in_the_runner(lab: Any) -> None:
    r = kubectl(lab, "get", "pod", "nope")
    assert r.returncode == 1
    assert 'pods "nope" not found' in r.stderr


def test_logs_and_logs_follow_in_the_runner(lab: Any) -> None:
    logs = kubectl(lab, "logs", "web")
    assert logs.returncode == 0 and "listening on" in logs.stdout
    follow = RunnerProcess(lab, ["kubectl", "logs", "-f", "web", "--tail=0"])
    try:
        assert [follow.readline().split()[0] for _ in range(2)] == ["tick", "tick"]
        assert follow.proc.poll() is None
    finally:
        follow.stop()


def test_apply_twice_then_server_side_in_the_runner(lab: Any) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lab-applied\ndata:\n  colour: {}\n"
    assert kubectl(lab, "apply", "-f", "-", stdin=doc.format("red")).stdout.strip() == \
        "configmap/lab-applied created"
    assert kubectl(lab, "apply", "-f", "-", stdin=doc.format("teal")).stdout.strip() == \
        "configmap/lab-applied configured"
    ssa = kubectl(lab, "apply", "--server-side", "-f", "-", stdin=doc.format("gold"))
    assert ssa.stdout.strip() == "configmap/lab-applied serverside-applied", ssa.stderr
    got = kubectl(lab, "get", "cm", "lab-applied", "-o", "jsonpath={.data.colour}")
    assert got.stdout == "gold"


@pytest.mark.parametrize(("target", "spec", "expected"), [
    ("pod/web", "8080:8080", 8080), ("pod/web", ":8080", None),
    ("svc/web", "8080:80", 8080), ("svc/web", ":80", None),
])
def test_port_forward_and_curl_in_the_runner(lab: Any, target: str, spec: str,
                                             expected: int | None) -> None:
    pf, (port,) = forward(lab, target, spec)
    try:
        if expected is not None:
            assert port == expected
        r = runner_curl(lab, "--data-binary", "from the runner", f"http://127.0.0.1:{port}/lab/{target}")
        code = runner_curl(lab, "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://127.0.0.1:{port}/status/418")
    finally:
        pf.stop()
    echo = json.loads(r.stdout)
    assert (echo["path"], echo["body"]) == (f"/lab/{target}", "from the runner")
    assert code.stdout == "418"


def test_kubectl_in_the_runner_sends_the_bearer_token(lab: Any) -> None:
    assert kubectl(lab, "get", "ns").returncode == 0
    log = lab.state_dir / "cluster" / "requests.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    by_kubectl = [e for e in entries if e.get("user_agent", "").startswith("kubectl")]
    assert by_kubectl and {e["token"] for e in by_kubectl} == {"valid"}


@pytest.mark.parametrize("host", ["laptop", "mgmt", "bastion"])
def test_only_the_runner_reaches_the_api_server(lab: Any, host: str) -> None:
    url = f"https://{lab.cluster_address}:6443/version"
    probe = ["curl", "-sk", "--connect-timeout", "3", "--max-time", "5", url]
    assert lab.run("runner", probe).returncode == 0
    r = lab.run(host, probe)
    assert r.returncode in (7, 28), (r.returncode, r.stdout)  # cannot connect / timed out


def test_a_restarted_pod_serves_new_forwards(lab: Any) -> None:
    state = lab.state_dir / "cluster"
    before = cluster_status(state)["pods"]["default/web"]["generation"]
    generation = restart_pod(state, "web")
    assert generation == before + 1
    pf, (port,) = forward(lab, "svc/web", ":80")
    try:
        echo = json.loads(runner_curl(lab, f"http://127.0.0.1:{port}/").stdout)
    finally:
        pf.stop()
    assert echo["generation"] == generation


def test_hundreds_of_mib_cross_one_forward_both_ways(lab: Any) -> None:
    import hashlib

    from dapfab.testing.cluster.web import pattern_bytes

    size = 256 << 20
    want = hashlib.sha256()
    for off in range(0, size, 1 << 20):
        want.update(pattern_bytes(1 << 20, off))
    pf, (http, discard) = forward(lab, "pod/web", ":8080", ":9001")
    try:
        down = lab.run("runner", ["sh", "-c", f"curl -sS --max-time 120 http://127.0.0.1:{http}/bytes/{size}"
                                  " | sha256sum"], timeout=150)
        upload = ("import socket\n"
                  f"s = socket.create_connection(('127.0.0.1', {discard}))\n"
                  f"for _ in range({size >> 20}): s.sendall(bytes(1 << 20))\n"
                  "s.shutdown(socket.SHUT_WR)\nassert s.recv(1) == b''\n")
        up = lab.run("runner", ["python3", "-c", upload], timeout=150)
    finally:
        pf.stop()
    assert down.stdout.split()[0] == want.hexdigest()
    assert up.returncode == 0, up.stderr
    logs = kubectl(lab, "logs", "web").stdout
    assert f"discard: {size} bytes" in logs


def test_kubectl_create_sends_protobuf_and_the_lab_accepts_it(lab: Any) -> None:
    literal = "multi=line one\nline two"
    done = kubectl(lab, "create", "configmap", "from-literal", "--from-literal=a=b",
                   f"--from-literal={literal}", "--from-literal=u=ünï ✓")
    assert done.returncode == 0, done.stderr
    data = json.loads(kubectl(lab, "get", "configmap", "from-literal", "-o", "json").stdout)["data"]
    assert data == {"a": "b", "multi": "line one\nline two", "u": "ünï ✓"}
    assert kubectl(lab, "create", "namespace", "from-proto").returncode == 0
    assert kubectl(lab, "create", "service", "clusterip", "from-proto", "--tcp=80:8080").returncode == 0
    ports = json.loads(kubectl(lab, "get", "service", "from-proto", "-o", "json").stdout)["spec"]["ports"]
    assert (ports[0]["port"], ports[0]["targetPort"]) == (80, 8080)
    for kind, name in (("configmap", "from-literal"), ("service", "from-proto"), ("namespace", "from-proto")):
        kubectl(lab, "delete", kind, name)
