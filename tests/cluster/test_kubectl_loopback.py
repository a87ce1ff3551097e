"""The real kubectl against the lab cluster on 127.0.0.1 (no lab namespaces needed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from cluster_loopback import LoopbackCluster, free_port, start_cluster, stop

from dapfab.testing.cluster import cluster_status, restart_pod
from dapfab.testing.cluster.web import pattern_bytes
from dapfab.testing.waiting import wait_until


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 10)


def requests_log(c: LoopbackCluster) -> list[dict]:
    return [json.loads(line) for line in (c.state_dir / "requests.log").read_text().splitlines()]


def test_get_pods_prints_a_table_with_the_running_web_pod(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "pods")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[0].split()[:3] == ["web", "1/1", "Running"]


def test_get_pods_all_namespaces_shows_kube_system(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "pods", "-A")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["NAMESPACE", "NAME"]
    namespaces = {line.split()[0] for line in r.stdout.splitlines()[1:]}
    assert namespaces == {"default", "kube-system"}


def test_get_pods_json_is_a_list_with_phase_running(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "pods", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "List"
    (web,) = [p for p in doc["items"] if p["metadata"]["name"] == "web"]
    assert web["kind"] == "Pod" and web["status"]["phase"] == "Running"


def test_jsonpath_reads_the_pod_ip(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "pod", "web", "-o", "jsonpath={.status.podIP}")
    assert (r.returncode, r.stdout) == (0, cluster.pod_address)


def test_get_svc_shows_web_on_port_80(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "svc", "web")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:5] == ["web", "ClusterIP", "10.96.0.80", "<none>", "80/TCP,9000/TCP"]


@pytest.mark.parametrize("args", [("get", "configmaps", "-n", "demo"), ("get", "ns"), ("get", "nodes"),
                                  ("get", "cm", "settings", "-n", "demo", "-o", "yaml")])
def test_other_kinds_are_listed(cluster: LoopbackCluster, args: tuple[str, ...]) -> None:
    r = cluster.kubectl(*args)
    assert r.returncode == 0 and r.stdout, r.stderr


def test_a_missing_pod_is_not_found_and_kubectl_exits_1(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "pod", "nope")
    assert r.returncode == 1
    assert r.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'


def test_logs_show_the_web_pod_output(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("logs", "web")
    assert r.returncode == 0, r.stderr
    assert "pod web generation" in r.stdout and "listening on" in r.stdout
    assert not r.stdout.startswith("20")  # timestamps only with --timestamps


def test_logs_follow_keeps_streaming_until_killed(cluster: LoopbackCluster) -> None:
    proc = subprocess.Popen(cluster.argv("logs", "-f", "web", "--tail=0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cluster.env())
    try:
        assert proc.stdout is not None
        ticks = [proc.stdout.readline() for _ in range(3)]
        assert all(t.startswith("tick ") for t in ticks), ticks
        assert proc.poll() is None
    finally:
        stop(proc)


def test_apply_twice_creates_then_configures(cluster: LoopbackCluster) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  colour: {}\n"
    first = cluster.kubectl("apply", "-f", "-", stdin=doc.format("blue"))
    assert (first.returncode, first.stdout.strip()) == (0, "configmap/applied created"), first.stderr
    second = cluster.kubectl("apply", "-f", "-", stdin=doc.format("green"))
    assert (second.returncode, second.stdout.strip()) == (0, "configmap/applied configured"), second.stderr
    again = cluster.kubectl("apply", "-f", "-", stdin=doc.format("green"))
    assert again.stdout.strip() == "configmap/applied unchanged"
    got = cluster.kubectl("get", "cm", "applied", "-o", "jsonpath={.data.colour}")
    assert got.stdout == "green"


def test_server_side_apply_sends_an_apply_patch(cluster: LoopbackCluster) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  count: \"{}\"\n"
    for n in ("1", "2"):
        r = cluster.kubectl("apply", "--server-side", "-f", "-", stdin=doc.format(n))
        assert (r.returncode, r.stdout.strip()) == (0, "configmap/ssa serverside-applied"), r.stderr
    assert cluster.kubectl("get", "cm", "ssa", "-o", "jsonpath={.data.count}").stdout == "2"
    patches = [e for e in requests_log(cluster) if e.get("method") == "PATCH" and e["path"].endswith("/ssa")]
    assert patches and all("fieldManager=kubectl" in e["query"] for e in patches)


def forward_events(c: LoopbackCluster) -> list[str]:
    return [e["event"] for e in requests_log(c) if e.get("event", "").startswith("portforward ")]


@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "spdy"])
def test_port_forward_to_the_pod_on_a_fixed_port(cluster: LoopbackCluster, websocket: bool) -> None:
    port = free_port()
    with cluster.port_forward("pod/web", f"{port}:8080", websocket=websocket) as (_proc, ports, _out):
        assert ports == [port]
        r = curl("-X", "PUT", "--data-binary", "héllo $x", "-H", "X-Test: a b", f"http://127.0.0.1:{port}/echo/me?q=1")
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)
    assert (echo["method"], echo["path"], echo["query"], echo["body"]) == ("PUT", "/echo/me", "q=1", "héllo $x")
    assert echo["headers"]["x-test"] == "a b"
    # kubectl 1.32 asks for SPDY tunnelled in a WebSocket first; the lab answers it, and SPDY/3.1
    # when kubectl is told not to try WebSockets
    upgrades = [e["status"] for e in requests_log(cluster) if e.get("path", "").endswith("/pods/web/portforward")]
    assert upgrades[-1] == 101 and 400 not in upgrades
    wait_until(lambda: forward_events(cluster) and f"/web ({'websocket' if websocket else 'spdy/3.1'}) closed"
               in forward_events(cluster)[-1], timeout=10)


def test_port_forward_to_the_service_on_a_random_port(cluster: LoopbackCluster) -> None:
    with cluster.port_forward("svc/web", ":80") as (_proc, (port,), _out):
        r = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/status/204")
        binary = curl(f"http://127.0.0.1:{port}/binary")
    assert r.stdout == b"204"
    assert binary.stdout.startswith(b"\xff\xfe\x00\x80")


def test_a_large_download_through_a_forward_arrives_intact(cluster: LoopbackCluster) -> None:
    size = 200 << 20
    with cluster.port_forward("pod/web", ":8080") as (_proc, (port,), _out):
        start = time.monotonic()
        r = curl(f"http://127.0.0.1:{port}/bytes/{size}", timeout=120)
        elapsed = time.monotonic() - start
    assert r.returncode == 0 and len(r.stdout) == size
    want = hashlib.sha256()
    for off in range(0, size, 1 << 20):
        want.update(pattern_bytes(1 << 20, off))
    assert hashlib.sha256(r.stdout).hexdigest() == want.hexdigest()
    print(f"{size >> 20} MiB in {elapsed:.1f}s: {size / (1 << 20) / elapsed:.0f} MiB/s")


def test_many_concurrent_connections_through_one_forward(cluster: LoopbackCluster) -> None:
    with cluster.port_forward("pod/web", ":8080") as (_proc, (port,), _out):
        procs = [subprocess.Popen(["curl", "-sS", "--max-time", "60", f"http://127.0.0.1:{port}/n/{i}"],
                                  stdout=subprocess.PIPE) for i in range(40)]
        outs = [p.communicate(timeout=90)[0] for p in procs]
    assert [json.loads(o)["path"] for o in outs] == [f"/n/{i}" for i in range(40)]


def test_a_dial_failure_is_reported_and_ends_the_forward(cluster: LoopbackCluster) -> None:
    with cluster.port_forward("pod/web", ":8089") as (proc, (port,), output):  # nothing listens on 8089
        curl(f"http://127.0.0.1:{port}/")
        proc.wait(timeout=30)
        end = time.monotonic() + 10  # the reader thread takes the last lines after the exit
        while "lost connection" not in "".join(output) and time.monotonic() < end:
            time.sleep(0.05)
    assert proc.returncode == 1
    out = "".join(output)
    assert "connection refused" in out and "lost connection to pod" in out


def test_kubectl_sends_the_bearer_token_and_others_are_refused(cluster: LoopbackCluster) -> None:
    assert cluster.kubectl("get", "pods").returncode == 0
    ca = str(cluster.state_dir / "ca.crt")
    wrong = curl("--cacert", ca, "-H", "Authorization: Bearer wrong",
                 f"https://127.0.0.1:{cluster.port}/api/v1/pods")
    none = curl("--cacert", ca, f"https://127.0.0.1:{cluster.port}/api/v1/pods")
    assert json.loads(wrong.stdout)["code"] == 401 and json.loads(none.stdout)["code"] == 401
    log = requests_log(cluster)
    by_kubectl = [e for e in log if "kubectl" in e.get("user_agent", "")]
    assert by_kubectl and {e["token"] for e in by_kubectl} == {"valid"}
    assert {e["token"] for e in log if e.get("user_agent", "").startswith("curl")} == {"invalid", "missing"}
    token = [line for line in cluster.kubeconfig.read_text().splitlines() if "token:" in line][0].split()[-1]
    assert token not in (cluster.state_dir / "requests.log").read_text()
    assert os.stat(cluster.kubeconfig).st_mode & 0o777 == 0o600


def test_restart_pod_starts_a_new_process_and_counts_the_restart(cluster: LoopbackCluster) -> None:
    before = cluster_status(cluster.state_dir)["pods"]["default/web"]
    generation = restart_pod(cluster.state_dir, "web")
    after = cluster_status(cluster.state_dir)["pods"]["default/web"]
    assert generation == before["generation"] + 1 == after["generation"]
    assert after["pid"] != before["pid"]
    restarts = cluster.kubectl("get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
    assert restarts.stdout == str(generation)
    with cluster.port_forward("pod/web", ":8080") as (_proc, (port,), _out):
        echo = json.loads(curl(f"http://127.0.0.1:{port}/").stdout)
    assert echo["generation"] == generation


def test_sigterm_stops_the_cluster_and_its_pods(tmp_path) -> None:
    c = start_cluster(tmp_path)
    pid = cluster_status(c.state_dir)["pods"]["default/web"]["pid"]
    assert stop(c.process) == 0
    assert not (c.state_dir / "ready").exists()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")


def test_get_watch_prints_a_restart_as_a_new_row(cluster: LoopbackCluster) -> None:
    watch = subprocess.Popen(cluster.argv("get", "pods", "-w"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=cluster.env())
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().split()[0] == "NAME"
        first = watch.stdout.readline().split()
        restart_pod(cluster.state_dir, "web", gap=0.1)
        second = watch.stdout.readline().split()
    finally:
        stop(watch)
    assert first[0] == second[0] == "web"
    assert int(second[3]) == int(first[3]) + 1
    assert second[4].startswith("(") and second[5] == "ago)"  # RESTARTS: "1 (0s ago)"


def test_events_describe_the_web_pod(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("describe", "pod", "web")
    assert r.returncode == 0, r.stderr
    assert "Successfully assigned default/web" in r.stdout


def test_a_pod_process_that_dies_is_restarted_like_a_kubelet_would(cluster: LoopbackCluster) -> None:
    before = cluster_status(cluster.state_dir)["pods"]["default/web"]
    os.kill(before["pid"], 9)
    deadline = time.monotonic() + 30
    after = before
    while (after["generation"] == before["generation"] or after["restarting"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        after = cluster_status(cluster.state_dir)["pods"]["default/web"]
    assert after["generation"] == before["generation"] + 1 and after["pid"] != before["pid"]
    restarts = cluster.kubectl("get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
    assert restarts.stdout == str(after["generation"])


def test_applied_namespace_with_objects_is_deleted_with_them(cluster: LoopbackCluster, tmp_path) -> None:
    manifest = tmp_path / "team.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: api\n  namespace: team\n  labels: {app: api}\n"
        "spec:\n  containers:\n  - name: api\n    image: nginx\n    ports: [{containerPort: 8080}]\n")
    created = cluster.kubectl("apply", "-f", str(manifest))
    assert created.stdout.split("\n")[:2] == ["namespace/team created", "pod/api created"], created.stderr
    assert cluster.kubectl("get", "pod", "api", "-n", "team", "-o", "jsonpath={.status.phase}").stdout == "Running"
    with cluster.port_forward("-n", "team", "pod/api", ":8080") as (proc, (port,), output):
        curl(f"http://127.0.0.1:{port}/")  # no process behind this pod: the dial is refused
        proc.wait(timeout=30)
    deleted = cluster.kubectl("delete", "ns", "team")
    assert deleted.returncode == 0, deleted.stderr
    assert cluster.kubectl("get", "pod", "api", "-n", "team").returncode == 1
    assert cluster.kubectl("delete", "ns", "default").returncode == 1  # the lab's own stay


def test_a_bad_query_is_a_500_status_not_a_dropped_connection(cluster: LoopbackCluster) -> None:
    r = cluster.kubectl("get", "--raw", "/api/v1/namespaces/default/pods/web/log?tailLines=abc")
    assert r.returncode == 1
    assert "InternalError" in r.stderr or "ValueError" in r.stderr
