"""The lab's controllers: Deployments make ReplicaSets, ReplicaSets make pods, NodePorts answer.

Every pod a ReplicaSet makes is a real process: the demo web pod (``web.py``, whatever the
container's image says) named after the pod, on an address of its own next to the cluster's
pod address (``.100`` upwards in its /24), so HTTP on 8080 (and the TCP ports 9000-9002)
answers as it does for ``web``; ``exec``, ``logs`` and ``port-forward`` reach it. A pod is
``Pending`` until its process listens, then ``Running`` and ready.

A Deployment's template gets a ReplicaSet ``<deploy>-<hash>`` with a revision annotation
(``deployment.kubernetes.io/revision``, the next one; a template seen before gets its old
ReplicaSet back with a new revision, as ``rollout undo`` needs). The new ReplicaSet is
scaled to the Deployment's replicas at once; the old ones go to 0 when all new pods are
ready (a rollout that surges by 100 %). Status (replicas, updated, ready, available,
observedGeneration, conditions Available and Progressing) is written after every change,
so ``kubectl rollout status`` sees the rollout finish. Paused Deployments are left alone;
ReplicaSets beyond ``revisionHistoryLimit`` and objects whose owner is gone are deleted.

A Service of type NodePort listens on the node's pod-network address at each ``nodePort``
and relays every connection to a ready pod it selects (round robin), as kube-proxy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import ipaddress
import itertools
import json
import secrets
import subprocess
from collections.abc import Callable
from typing import Any

from . import resources
from .pods import PodProcess, pid_alive, wait_listening, web_pod
from .resources import REVISION, Obj, Store

TICK = 0.2
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # no vowels: no words in generated names
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE = "kubernetes.io/change-cause"


def _meaningful(value: Any) -> Any:
    """``value`` without nulls and empty maps or lists: what a Go client's round trip adds
    (``creationTimestamp: null``, ``resources: {}``) does not make another template."""
    if isinstance(value, dict):
        value = {k: _meaningful(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_meaningful(v) for v in value]
    return value


def template_hash(template: Obj) -> str:
    """A short, stable name part for a pod template (``pod-template-hash``)."""
    text = json.dumps(_meaningful(template), sort_keys=True)
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    out = ""
    for _ in range(10):
        n, r = divmod(n, len(HASH_ALPHABET))
        out += HASH_ALPHABET[r]
    return out


def _owner(obj: Obj) -> str | None:
    refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")]
    return refs[0]["uid"] if refs else None


def _owner_reference(obj: Obj) -> Obj:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _revision(rs: Obj) -> int:
    try:
        return int(rs["metadata"].get("annotations", {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


class Controllers:
    """The reconcile loop; ``store`` is the API server's, ``pods`` its pod processes."""

    def __init__(self, store: Store, pods: dict[tuple[str, str], PodProcess], pod_address: str,
                 state_dir: Any, event: Callable[[str], None],
                 on_restart: Callable[[PodProcess], None] | None = None) -> None:
        self.store, self.pods, self.state_dir, self.event = store, pods, state_dir, event
        self.on_restart = on_restart
        self.pod_address = pod_address
        network = ipaddress.ip_network(f"{pod_address}/24", strict=False)
        self._free = [str(network.network_address + n) for n in range(100, 250)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._node_ports: dict[int, asyncio.base_events.Server] = {}
        self._refused: set[int] = set()
        self._turn = itertools.count()

    async def run(self) -> None:
        """Reconcile every ``TICK`` seconds until cancelled; stop what it started."""
        try:
            while True:
                try:
                    await self.reconcile()
                except Exception as exc:  # noqa: BLE001 - a controller keeps going, as in a cluster
                    self.event(f"controller: {type(exc).__name__}: {exc}")
                await asyncio.sleep(TICK)
        finally:
            for server in self._node_ports.values():
                server.close()

    async def reconcile(self) -> None:
        """One pass: Deployments, then ReplicaSets, then garbage, pod processes and NodePorts."""
        for deployment in self.store.list("deployments"):
            self._deployment(deployment)
        for rs in self.store.list("replicasets"):
            self._replicaset(rs)
        await self._collect()
        await self._node_port_listeners()

    # --- Deployments -----------------------------------------------------------------

    def _owned(self, plural: str, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.list(plural, owner["metadata"]["namespace"]) if _owner(o) == uid]

    def _deployment(self, d: Obj) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        spec = d["spec"]
        owned = self._owned("replicasets", d)
        template = copy.deepcopy(spec["template"])
        digest = template_hash(template)
        new = next((rs for rs in owned if rs["metadata"].get("labels", {}).get(HASH_LABEL) == digest), None)
        latest = max((_revision(rs) for rs in owned), default=0)
        if spec.get("paused"):
            return
        cause = d["metadata"].get("annotations", {}).get(CHANGE_CAUSE)
        if new is None:
            new = self._new_replicaset(d, template, digest, latest + 1, cause)
            owned.append(new)
        elif _revision(new) != latest:
            annotations = {REVISION: str(latest + 1)} | ({CHANGE_CAUSE: cause} if cause else {})
            new = self.store.patch("replicasets", ns, new["metadata"]["name"], {"metadata": {"annotations": annotations}})
            owned = [new if o["metadata"]["uid"] == new["metadata"]["uid"] else o for o in owned]
        want = spec.get("replicas", 1)
        if new["spec"].get("replicas") != want:
            self._scale(d, new, want)
            new = self.store.get("replicasets", ns, new["metadata"]["name"])
        old = [rs for rs in owned if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        new_status = new.get("status", {})
        if new_status.get("readyReplicas", 0) >= want and new_status.get("replicas", 0) == want:
            for rs in old:
                if rs["spec"].get("replicas"):
                    self._scale(d, rs, 0)
        old.sort(key=_revision)
        limit = spec.get("revisionHistoryLimit", 10)
        idle = [rs for rs in old if not rs["spec"].get("replicas") and not rs.get("status", {}).get("replicas")]
        for rs in idle[:max(0, len(idle) - limit)]:
            self.store.delete("replicasets", ns, rs["metadata"]["name"])
        revision = str(_revision(new))
        if d["metadata"].get("annotations", {}).get(REVISION) != revision:
            d = self.store.patch("deployments", ns, name, {"metadata": {"annotations": {REVISION: revision}}})
        self._deployment_status(d, new, self._owned("replicasets", d))

    def _new_replicaset(self, d: Obj, template: Obj, digest: str, revision: int, cause: str | None) -> Obj:
        ns = d["metadata"]["namespace"]
        labels = {**template.get("metadata", {}).get("labels", {}), HASH_LABEL: digest}
        template.setdefault("metadata", {})["labels"] = labels
        annotations = {REVISION: str(revision)} | ({CHANGE_CAUSE: cause} if cause else {})
        rs = self.store.create("replicasets", ns, {
            "metadata": {"name": f"{d['metadata']['name']}-{digest}", "labels": labels,
                         "annotations": annotations, "ownerReferences": [_owner_reference(d)]},
            "spec": {"replicas": 0, "selector": {"matchLabels": {
                **d["spec"]["selector"]["matchLabels"], HASH_LABEL: digest}}, "template": template},
        })
        return rs

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> None:
        before = rs["spec"].get("replicas", 0)
        self.store.patch("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"],
                         {"spec": {"replicas": replicas}})
        direction = "up" if replicas > before else "down"
        resources.add_event(self.store, d, "Normal", "ScalingReplicaSet",
                            f"Scaled {direction} replica set {rs['metadata']['name']} to {replicas} from {before}",
                            component="deployment-controller")

    def _deployment_status(self, d: Obj, new: Obj, owned: list[Obj]) -> None:
        want = d["spec"].get("replicas", 1)
        total = sum(rs.get("status", {}).get("replicas", 0) for rs in owned)
        ready = sum(rs.get("status", {}).get("readyReplicas", 0) for rs in owned)
        available = sum(rs.get("status", {}).get("availableReplicas", 0) for rs in owned)
        updated = new.get("status", {}).get("replicas", 0)
        done = updated == want and total == want and available >= want
        rs_name = new["metadata"]["name"]
        conditions = [
            ("Available", available >= want, "MinimumReplicasAvailable" if available >= want
             else "MinimumReplicasUnavailable",
             "Deployment has minimum availability." if available >= want
             else "Deployment does not have minimum availability."),
            ("Progressing", True, "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
             f'ReplicaSet "{rs_name}" has successfully progressed.' if done
             else f'ReplicaSet "{rs_name}" is progressing.'),
        ]
        status: Obj = {"observedGeneration": d["metadata"].get("generation", 1), "replicas": total,
                       "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available}
        if want > available:
            status["unavailableReplicas"] = want - available
        status["conditions"] = self._conditions(d.get("status", {}).get("conditions", []), conditions)
        if status != d.get("status"):
            self.store.replace("deployments", d["metadata"]["namespace"], d["metadata"]["name"],
                               {**d, "status": status}, status=True)

    @staticmethod
    def _conditions(previous: list[Obj], wanted: list[tuple[str, bool, str, str]]) -> list[Obj]:
        """Conditions whose transition time changes only when their status does."""
        before = {c.get("type"): c for c in previous}
        stamp = resources.timestamp(resources.now())
        out = []
        for type_, ok, reason, message in wanted:
            value = "True" if ok else "False"
            old = before.get(type_, {})
            same = old.get("status") == value
            out.append({"type": type_, "status": value, "reason": reason, "message": message,
                        "lastUpdateTime": old["lastUpdateTime"] if same and old.get("reason") == reason else stamp,
                        "lastTransitionTime": old["lastTransitionTime"] if same else stamp})
        return out

    # --- ReplicaSets and their pods --------------------------------------------------

    def _replicaset(self, rs: Obj) -> None:
        ns = rs["metadata"]["namespace"]
        pods = self._owned("pods", rs)
        want = rs["spec"].get("replicas", 1)
        for _ in range(want - len(pods)):
            pods.append(self._new_pod(rs))
        if len(pods) > want:
            pods.sort(key=lambda p: (_ready(p), p["metadata"]["creationTimestamp"]))
            for pod in pods[:len(pods) - want]:
                self.store.delete("pods", ns, pod["metadata"]["name"])
            pods = pods[len(pods) - want:]
        ready = sum(1 for p in pods if _ready(p))
        status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": rs["metadata"].get("generation", 1)}
        if status != rs.get("status"):
            self.store.replace("replicasets", ns, rs["metadata"]["name"], {**rs, "status": status}, status=True)

    def _new_pod(self, rs: Obj) -> Obj:
        ns = rs["metadata"]["namespace"]
        template = copy.deepcopy(rs["spec"]["template"])
        name = f"{rs['metadata']['name']}-{''.join(secrets.choice(HASH_ALPHABET) for _ in range(5))}"
        address = self._free.pop(0) if self._free else None
        spec = template.get("spec", {})
        stamp = resources.timestamp(resources.now())
        pod = self.store.create("pods", ns, {
            "metadata": {"name": name, "labels": template.get("metadata", {}).get("labels", {}),
                         "annotations": template.get("metadata", {}).get("annotations") or {},
                         "ownerReferences": [_owner_reference(rs)]},
            "spec": spec,
            "status": {"phase": "Pending", "podIP": address or "", "podIPs": [{"ip": address}] if address else [],
                       "hostIP": self.pod_address, "startTime": stamp,
                       "conditions": [{"type": t, "status": "False" if t in ("Ready", "ContainersReady") else "True",
                                       "lastTransitionTime": stamp}
                                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                       "containerStatuses": [
                           {"name": c.get("name", "main"), "image": c.get("image", ""), "imageID": "",
                            "ready": False, "started": False, "restartCount": 0,
                            "state": {"waiting": {"reason": "ContainerCreating"}}}
                           for c in spec.get("containers", [])]},
        })
        resources.add_event(self.store, rs, "Normal", "SuccessfulCreate", f"Created pod: {name}",
                            component="replicaset-controller")
        if address is not None:
            add_address(address, self.pod_address)
            process = web_pod(ns, name, address, self.state_dir)
            process.on_restart = self.on_restart
            process.spawn()
            self.pods[(ns, name)] = process
            self._background(self._started(process))
        return pod

    async def _started(self, process: PodProcess) -> None:
        """Mark the pod Running and ready once its process listens."""
        if not await asyncio.to_thread(wait_listening, process.address, process.ready_port):
            self.event(f"pod {process.namespace}/{process.name} did not listen")
            return
        with contextlib.suppress(resources.NotFound):
            pod = self.store.get("pods", process.namespace, process.name)
            stamp = resources.timestamp(resources.now())
            status = pod["status"]
            status["phase"] = "Running"
            for c in status["conditions"]:
                c["status"], c["lastTransitionTime"] = "True", stamp
            for c in status["containerStatuses"]:
                c.update(ready=True, started=True, containerID=f"containerd://{secrets.token_hex(16)}",
                         state={"running": {"startedAt": stamp}})
            self.store.replace("pods", process.namespace, process.name, pod)
            resources.add_event(self.store, pod, "Normal", "Started", f"Started container {process.name}")

    async def _collect(self) -> None:
        """Delete what lost its owner; stop the processes of deleted pods."""
        live = {o["metadata"]["uid"] for plural in ("deployments", "replicasets") for o in self.store.list(plural)}
        for plural in ("replicasets", "pods"):
            for obj in self.store.list(plural):
                owner = _owner(obj)
                if owner is not None and owner not in live:
                    self.store.delete(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
        for key in [k for k in self.pods if k != ("default", "web") and not self.store.exists("pods", *k)]:
            process = self.pods.pop(key)
            self._background(self._stop(process))

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, process: PodProcess) -> None:
        """Stop a deleted pod's process (it may take seconds: the loop goes on meanwhile)."""
        if process.pid is not None and pid_alive(process.pid):
            await asyncio.to_thread(process.stop)
        self._free.append(process.address)
        self.event(f"pod {process.namespace}/{process.name} deleted: its process is stopped")

    # --- NodePort services -----------------------------------------------------------

    async def _node_port_listeners(self) -> None:
        wanted: dict[int, tuple[str, str, Any]] = {}
        for svc in self.store.list("services"):
            if svc["spec"].get("type") != "NodePort":
                continue
            for port in svc["spec"].get("ports", []):
                if port.get("nodePort"):
                    wanted[int(port["nodePort"])] = (svc["metadata"]["namespace"], svc["metadata"]["name"],
                                                     port.get("targetPort", port.get("port")))
        for node_port in set(self._node_ports) - set(wanted):
            self._node_ports.pop(node_port).close()
        for node_port, route in wanted.items():
            if node_port in self._node_ports or node_port in self._refused:
                continue
            try:
                self._node_ports[node_port] = await asyncio.start_server(
                    lambda r, w, np=node_port: self._relay(np, r, w), self.pod_address, node_port)
            except OSError as exc:
                self._refused.add(node_port)
                self.event(f"nodePort {node_port} of {route[0]}/{route[1]}: {exc}")

    def _backend(self, node_port: int) -> tuple[str, int] | None:
        """A ready pod (round robin) behind ``node_port``: its address and target port."""
        for svc in self.store.list("services"):
            for port in svc["spec"].get("ports", []):
                if svc["spec"].get("type") == "NodePort" and port.get("nodePort") == node_port:
                    selector = ",".join(f"{k}={v}" for k, v in (svc["spec"].get("selector") or {}).items())
                    pods = [p for p in self.store.list("pods", svc["metadata"]["namespace"], selector)
                            if selector and _ready(p) and (p["metadata"]["namespace"], p["metadata"]["name"]) in self.pods]
                    if not pods:
                        return None
                    pod = pods[next(self._turn) % len(pods)]
                    target = port.get("targetPort", port.get("port"))
                    if isinstance(target, str):
                        named = [p.get("containerPort") for c in pod["spec"].get("containers", [])
                                 for p in c.get("ports", []) if p.get("name") == target]
                        target = named[0] if named else None
                    return (pod["status"]["podIP"], int(target)) if target else None
        return None

    async def _relay(self, node_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self._backend(node_port)
        if backend is None:  # no endpoints: kube-proxy rejects the connection
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()


def add_address(address: str, like: str) -> None:
    """Make ``address`` local on the interface that holds ``like`` (127/8 always is local)."""
    if address.startswith("127."):
        return
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    if f" {address}/" in shown:
        return
    device = next((line.split()[1] for line in shown.splitlines() if f" {like}/" in line), "lo")
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", device], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
