"""What a release runbook asks of the lab cluster, with the real kubectl and the real Python
``kubernetes`` client on 127.0.0.1: Deployments (apply both ways, scale, patch, rollout
status/restart/undo/history), ``auth can-i``, ``api-resources``, exec over WebSocket v4."""

from __future__ import annotations

import json
import subprocess
import time

from cluster_loopback import LoopbackCluster

from dapfab.testing.waiting import wait_until

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: example/{name}:{version}
        ports: [{{name: http, containerPort: 8080}}]
        env: [{{name: VERSION, value: "{version}"}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: NodePort
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: http, nodePort: {node_port}}}]
"""


def apply(cluster: LoopbackCluster, name: str, version: str, *flags: str, node_port: int = 30080):
    doc = DEPLOYMENT.format(name=name, version=version, node_port=node_port)
    return cluster.kubectl("apply", *flags, "-f", "-", stdin=doc)


def jsonpath(cluster: LoopbackCluster, what: str, path: str) -> str:
    done = cluster.kubectl("get", what, "-o", f"jsonpath={path}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def rollout_status(cluster: LoopbackCluster, name: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("rollout", "status", f"deploy/{name}", "--timeout=60s", timeout=90)


def healthz(cluster: LoopbackCluster, node_port: int) -> dict:
    done = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{cluster.pod_address}:{node_port}/healthz"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_deployment_is_applied_rolled_out_and_answers_on_its_node_port(cluster: LoopbackCluster):
    created = apply(cluster, "shop", "1.0")
    assert (created.returncode, created.stdout.split("\n")[:2]) == (
        0, ["deployment.apps/shop created", "service/shop created"]), created.stderr
    status = rollout_status(cluster, "shop")
    assert status.returncode == 0, status.stderr
    assert status.stdout.rstrip().endswith('deployment "shop" successfully rolled out')
    row = cluster.kubectl("get", "deploy", "shop").stdout.splitlines()[1].split()
    assert row[:4] == ["shop", "2/2", "2", "2"]
    pods = jsonpath(cluster, "pods", "{range .items[*]}{.metadata.name} {.status.phase}{'\\n'}{end}")
    mine = [line.split() for line in pods.splitlines() if line.startswith("shop-")]
    assert len(mine) == 2 and {phase for _, phase in mine} == {"Running"}
    # the pods are real processes: the Service's nodePort reaches one of them
    assert healthz(cluster, 30080)["pod"] in {name for name, _ in mine}
    assert cluster.kubectl("logs", mine[0][0]).returncode == 0
    conditions = json.loads(jsonpath(cluster, "deploy/shop", "{.status.conditions}"))
    assert {c["type"]: c["status"] for c in conditions} == {"Available": "True", "Progressing": "True"}


def test_client_side_apply_keeps_what_the_patch_does_not_name_and_rolls_a_new_replicaset(cluster):
    apply(cluster, "cart", "1.0", node_port=30081)
    assert rollout_status(cluster, "cart").returncode == 0
    first = jsonpath(cluster, "deploy/cart", "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}")
    changed = apply(cluster, "cart", "2.0", node_port=30081)
    assert changed.stdout.startswith("deployment.apps/cart configured"), changed.stderr
    # kubectl sent a strategic merge patch of the one changed container field
    container = json.loads(jsonpath(cluster, "deploy/cart", "{.spec.template.spec.containers[0]}"))
    assert container["image"] == "example/cart:2.0" and container["ports"][0]["containerPort"] == 8080
    assert container["env"] == [{"name": "VERSION", "value": "2.0"}]
    assert rollout_status(cluster, "cart").returncode == 0
    assert (first, jsonpath(cluster, "deploy/cart", "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}")) == ("1", "2")
    rs = cluster.kubectl("get", "rs", "-l", "app=cart", "-o", "json")
    by_replicas = {item["spec"]["template"]["spec"]["containers"][0]["image"]: item["spec"]["replicas"]
                   for item in json.loads(rs.stdout)["items"]}
    assert by_replicas == {"example/cart:1.0": 0, "example/cart:2.0": 2}
    assert healthz(cluster, 30081)["pod"].startswith("cart-")


def test_server_side_apply_creates_and_updates_a_deployment(cluster: LoopbackCluster):
    for version in ("1.0", "1.1"):
        done = apply(cluster, "ssa", version, "--server-side", node_port=30082)
        assert done.stdout.startswith("deployment.apps/ssa serverside-applied"), done.stderr
    assert rollout_status(cluster, "ssa").returncode == 0
    assert jsonpath(cluster, "deploy/ssa", "{.spec.template.spec.containers[0].image}") == "example/ssa:1.1"


def test_scale_and_patch_change_the_pods(cluster: LoopbackCluster):
    apply(cluster, "scaled", "1.0", node_port=30083)
    scaled = cluster.kubectl("scale", "deploy/scaled", "--replicas=3")
    assert (scaled.returncode, scaled.stdout.strip()) == (0, "deployment.apps/scaled scaled"), scaled.stderr
    assert rollout_status(cluster, "scaled").returncode == 0
    assert jsonpath(cluster, "deploy/scaled", "{.status.readyReplicas}") == "3"
    patched = cluster.kubectl("patch", "deploy/scaled", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    assert patched.returncode == 0, patched.stderr
    wait_until(lambda: len(cluster.kubectl("get", "pods", "-l", "app=scaled", "-o", "name").stdout.split()) == 1,
               timeout=20, what="scaled down to one pod")
    scale = json.loads(cluster.kubectl("get", "--raw", "/apis/apps/v1/namespaces/default/deployments/scaled/scale").stdout)
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == ("Scale", 1, "app=scaled")


def test_rollout_restart_undo_and_history(cluster: LoopbackCluster):
    apply(cluster, "undo", "1.0", node_port=30084)
    assert rollout_status(cluster, "undo").returncode == 0
    apply(cluster, "undo", "2.0", node_port=30084)
    assert rollout_status(cluster, "undo").returncode == 0
    restarted = cluster.kubectl("rollout", "restart", "deploy/undo")
    assert restarted.stdout.strip() == "deployment.apps/undo restarted", restarted.stderr
    assert rollout_status(cluster, "undo").returncode == 0
    assert jsonpath(cluster, "deploy/undo", "{.spec.template.metadata.annotations}").count("restartedAt") == 1
    undone = cluster.kubectl("rollout", "undo", "deploy/undo")
    assert undone.stdout.strip() == "deployment.apps/undo rolled back", undone.stderr
    assert rollout_status(cluster, "undo").returncode == 0
    # the previous revision (2.0, not restarted) came back, with the next revision number
    assert jsonpath(cluster, "deploy/undo", "{.spec.template.spec.containers[0].image}") == "example/undo:2.0"
    assert "restartedAt" not in jsonpath(cluster, "deploy/undo", "{.spec.template.metadata}")
    history = cluster.kubectl("rollout", "history", "deploy/undo")
    assert [line.split()[0] for line in history.stdout.splitlines()[2:] if line.strip()] == ["1", "3", "4"]
    again = cluster.kubectl("rollout", "undo", "deploy/undo", "--to-revision=4")
    assert "skipped rollback (current template already matches revision 4)" in again.stdout, again.stderr


def test_deleting_a_deployment_deletes_its_replicasets_pods_and_processes(cluster: LoopbackCluster):
    apply(cluster, "gone", "1.0", node_port=30085)
    assert rollout_status(cluster, "gone").returncode == 0
    assert cluster.kubectl("delete", "deploy", "gone").returncode == 0
    wait_until(lambda: not cluster.kubectl("get", "rs,pods", "-l", "app=gone", "-o", "name").stdout,
               timeout=20, what="the deployment's objects deleted")

    def stopped() -> int:
        lines = (cluster.state_dir / "requests.log").read_text().splitlines()
        return sum(1 for e in (json.loads(line).get("event", "") for line in lines)
                   if e.startswith("pod default/gone-") and "process is stopped" in e)

    wait_until(lambda: stopped() == 2, timeout=20, what="both pod processes stopped")


def test_auth_can_i_answers_for_what_the_lab_serves(cluster: LoopbackCluster):
    for args in (("create", "deployments"), ("patch", "deployments.apps"), ("get", "pods", "-n", "kube-system")):
        done = cluster.kubectl("auth", "can-i", *args)
        assert (done.returncode, done.stdout.strip()) == (0, "yes"), (args, done.stderr)
    denied = cluster.kubectl("auth", "can-i", "create", "cronjobs.batch")
    assert denied.returncode == 1 and denied.stdout.startswith("no - the dapfab lab does not serve cronjobs.batch")


def test_api_resources_lists_what_the_lab_serves(cluster: LoopbackCluster):
    done = cluster.kubectl("api-resources", "-o", "name")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"pods", "services", "configmaps", "namespaces", "nodes", "events",
                                        "deployments.apps", "replicasets.apps",
                                        "selfsubjectaccessreviews.authorization.k8s.io"}


def test_the_python_client_execs_over_websocket_v4_and_reads_deployments(cluster: LoopbackCluster):
    from kubernetes import client, config
    from kubernetes.stream import stream

    api = client.ApiClient(config.new_client_from_config(str(cluster.kubeconfig)).configuration)
    core = client.CoreV1Api(api)
    # clients before 32.0 offer only v4.channel.k8s.io; this one is told to do the same
    ws = stream(core.connect_get_namespaced_pod_exec, "web", "default",
                command=["sh", "-c", "head -c 4; echo to-stderr >&2; exit 4"], stdin=True, stdout=True,
                stderr=True, tty=False, _preload_content=False,
                _headers={"sec-websocket-protocol": "v4.channel.k8s.io"})
    ws.write_stdin("abc\n")
    out = err = ""
    end = time.monotonic() + 30
    while ws.is_open() and time.monotonic() < end:
        ws.update(timeout=1)
        out += ws.read_stdout(timeout=0) if ws.peek_stdout() else ""
        err += ws.read_stderr(timeout=0) if ws.peek_stderr() else ""
    assert (out, err, ws.returncode) == ("abc\n", "to-stderr\n", 4)
    assert ws.subprotocol == "v4.channel.k8s.io"
    plain = stream(core.connect_get_namespaced_pod_exec, "web", "default", command=["echo", "a b"],
                   stdin=False, stdout=True, stderr=True, tty=False)
    assert plain == "a b\n"
    apply(cluster, "fromapi", "1.0", node_port=30086)
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment("fromapi", "default")
    assert deployment.spec.template.spec.containers[0].image == "example/fromapi:1.0"
    apps.patch_namespaced_deployment_scale("fromapi", "default", {"spec": {"replicas": 3}})
    wait_until(lambda: apps.read_namespaced_deployment_status("fromapi", "default").status.ready_replicas == 3,
               timeout=30, what="three ready replicas")


def test_a_deployment_whose_selector_misses_its_template_is_invalid(cluster: LoopbackCluster):
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
           "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
               "metadata": {"labels": {"app": "y"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    done = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(doc))
    assert done.returncode == 1 and "selector` does not match template `labels`" in done.stderr
