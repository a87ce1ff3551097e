"""The cluster's objects: an in-memory store of core/v1 resources, tables, selectors, patches."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import uuid
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One core/v1 resource type as discovery describes it."""

    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")


KINDS: dict[str, Kind] = {k.plural: k for k in (
    Kind("pods", "Pod", True, ("po",)),
    Kind("services", "Service", True, ("svc",)),
    Kind("configmaps", "ConfigMap", True, ("cm",)),
    Kind("namespaces", "Namespace", False, ("ns",)),
    Kind("nodes", "Node", False, ("no",)),
    Kind("events", "Event", True, ("ev",)),
)}
SUBRESOURCES = {"pods/log": ("Pod", ("get",)), "pods/portforward": ("PodPortForwardOptions", ("create", "get")),
                "pods/status": ("Pod", ("get", "patch", "update"))}

NODE_NAME = "lab-node-1"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def timestamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def human_age(created: str) -> str:
    """Age like kubectl prints it: 45s, 12m, 3h5m, 2d."""
    secs = max(0, int((now() - parse_timestamp(created)).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 8:
        return f"{hours}h{mins % 60}m"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


class Conflict(Exception):
    """The object already exists."""


class NotFound(Exception):
    """No such object."""


class Invalid(Exception):
    """The request body is not an acceptable object."""


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386); strategic-merge directives are treated as plain keys.

    Good enough for the objects people apply to this lab (maps of strings, labels,
    annotations); lists are replaced whole.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selector: ``a=b,c==d,e!=f,g,!h``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def match_fields(obj: Obj, selector: str) -> bool:
    """Field selector on metadata.name / metadata.namespace / status.phase / spec.nodeName."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        cur: Any = obj
        for part in k.strip().split("."):
            cur = cur.get(part, "") if isinstance(cur, dict) else ""
        if (str(cur) == v.strip()) == negate:
            return False
    return True


class Store:
    """All objects by (plural, namespace, name); namespace is '' for cluster-scoped kinds."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = itertools.count(1000)
        self.events: list[tuple[int, str, str, str, Obj]] = []  # (rv, type, plural, ns, object)

    def _record(self, kind: str, plural: str, namespace: str, obj: Obj) -> None:
        rv = int(obj["metadata"].get("resourceVersion") or self.resource_version())
        self.events.append((rv, kind, plural, namespace, copy.deepcopy(obj)))
        del self.events[:-1000]

    def events_since(self, rv: int, plural: str, namespace: str | None, labels: str = "",
                     fields: str = "") -> list[tuple[int, str, Obj]]:
        """Watch events (rv, ADDED/MODIFIED/DELETED, object) after resource version ``rv``."""
        out = []
        for erv, kind, p, ns, obj in self.events:
            if erv <= rv or p != plural or (namespace is not None and ns != namespace):
                continue
            if labels and not match_labels(obj["metadata"].get("labels", {}), labels):
                continue
            if fields and not match_fields(obj, fields):
                continue
            out.append((erv, kind, copy.deepcopy(obj)))
        return out

    def resource_version(self) -> str:
        return str(next(self._rv))

    def list(self, plural: str, namespace: str | None = None, labels: str = "",
             fields: str = "") -> list[Obj]:
        out = []
        for (p, ns, _name), obj in sorted(self._objects.items()):
            if p != plural or (namespace is not None and ns != namespace):
                continue
            if labels and not match_labels(obj["metadata"].get("labels", {}), labels):
                continue
            if fields and not match_fields(obj, fields):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def get(self, plural: str, namespace: str, name: str) -> Obj:
        try:
            return copy.deepcopy(self._objects[(plural, namespace, name)])
        except KeyError:
            raise NotFound(name) from None

    def exists(self, plural: str, namespace: str, name: str) -> bool:
        return (plural, namespace, name) in self._objects

    def create(self, plural: str, namespace: str, obj: Obj) -> Obj:
        kind = KINDS[plural]
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise Invalid("object has no metadata")
        name = obj["metadata"].get("name")
        if not name:
            raise Invalid("metadata.name: Required value: name is required")
        if obj.get("kind", kind.kind) != kind.kind:
            raise Invalid(f"kind {obj.get('kind')!r} does not match {kind.kind}")
        if kind.namespaced and not self.exists("namespaces", "", namespace):
            raise NotFound(f"namespaces \"{namespace}\" not found")
        if (plural, namespace, name) in self._objects:
            raise Conflict(name)
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = kind.kind, "v1"
        meta = obj["metadata"]
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta.setdefault("creationTimestamp", timestamp(now()))
        meta["resourceVersion"] = self.resource_version()
        defaults = {"pods": _pod_defaults, "services": _service_defaults,
                    "namespaces": _namespace_defaults}.get(plural)
        if defaults:
            defaults(obj)
        self._objects[(plural, namespace, name)] = obj
        self._record("ADDED", plural, namespace, obj)
        return copy.deepcopy(obj)

    def replace(self, plural: str, namespace: str, name: str, obj: Obj) -> Obj:
        old = self.get(plural, namespace, name)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "name"):
            meta[key] = old["metadata"][key]
        if KINDS[plural].namespaced:
            meta["namespace"] = namespace
        obj["kind"], obj["apiVersion"] = old["kind"], "v1"
        if plural == "pods" and "status" not in obj:
            obj["status"] = old.get("status", {})
        meta["resourceVersion"] = self.resource_version()
        self._objects[(plural, namespace, name)] = obj
        self._record("MODIFIED", plural, namespace, obj)
        return copy.deepcopy(obj)

    def patch(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        old = self.get(plural, namespace, name)
        return self.replace(plural, namespace, name, merge_patch(old, patch))

    def delete(self, plural: str, namespace: str, name: str) -> Obj:
        obj = self.get(plural, namespace, name)
        del self._objects[(plural, namespace, name)]
        obj["metadata"]["resourceVersion"] = self.resource_version()
        self._record("DELETED", plural, namespace, obj)
        return obj


def add_event(store: Store, obj: Obj, type_: str, reason: str, message: str) -> None:
    """Record a core/v1 Event about ``obj`` (what `kubectl describe` and `get events` show)."""
    meta = obj["metadata"]
    stamp = timestamp(now())
    store.create("events", meta.get("namespace", "default"), {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
        "involvedObject": {"kind": obj.get("kind", ""), "name": meta["name"],
                           "namespace": meta.get("namespace", ""), "uid": meta.get("uid", ""),
                           "apiVersion": "v1"},
        "type": type_, "reason": reason, "message": message, "count": 1,
        "firstTimestamp": stamp, "lastTimestamp": stamp,
        "source": {"component": "kubelet", "host": NODE_NAME},
    })


def _pod_defaults(pod: Obj) -> None:
    spec = pod.setdefault("spec", {})
    spec.setdefault("nodeName", NODE_NAME)
    spec.setdefault("restartPolicy", "Always")
    status = pod.setdefault("status", {})
    status.setdefault("phase", "Running")
    status.setdefault("startTime", pod["metadata"]["creationTimestamp"])
    status.setdefault("containerStatuses", [
        {"name": c.get("name", "main"), "ready": True, "restartCount": 0, "started": True,
         "image": c.get("image", ""), "imageID": "", "containerID": f"containerd://{uuid.uuid4().hex}",
         "state": {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}}}
        for c in spec.get("containers", [])
    ])
    status.setdefault("conditions", [
        {"type": t, "status": "True", "lastTransitionTime": pod["metadata"]["creationTimestamp"]}
        for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    ])


def _service_defaults(svc: Obj) -> None:
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    svc.setdefault("status", {"loadBalancer": {}})


def _namespace_defaults(ns: Obj) -> None:
    ns.setdefault("spec", {"finalizers": ["kubernetes"]})
    ns.setdefault("status", {"phase": "Active"})
    ns["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = ns["metadata"]["name"]


# --- Tables (what `kubectl get` prints) -------------------------------------------------

def _col(name: str, type_: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> Obj:
    return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}


def _pod_cells(p: Obj) -> list[Any]:
    statuses = p.get("status", {}).get("containerStatuses", [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts: int | str = sum(s.get("restartCount", 0) for s in statuses)
    finished = [s["lastState"]["terminated"]["finishedAt"] for s in statuses
                if s.get("lastState", {}).get("terminated", {}).get("finishedAt")]
    if restarts and finished:
        restarts = f"{restarts} ({human_age(max(finished))} ago)"
    return [p["metadata"]["name"], f"{ready}/{len(statuses)}", p.get("status", {}).get("phase", "Pending"),
            restarts, human_age(p["metadata"]["creationTimestamp"]),
            p.get("status", {}).get("podIP", "<none>"), p.get("spec", {}).get("nodeName", "<none>"),
            "<none>", "<none>"]


def _ports(svc: Obj) -> str:
    ports = svc.get("spec", {}).get("ports", [])
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _selector(svc: Obj) -> str:
    sel = svc.get("spec", {}).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>"


TABLES: dict[str, tuple[list[Obj], Any]] = {
    "pods": ([_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", "string"),
              _col("Age"), _col("IP", priority=1), _col("Node", priority=1),
              _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)], _pod_cells),
    "services": ([_col("Name", fmt="name"), _col("Type"), _col("Cluster-IP"), _col("External-IP"),
                  _col("Port(s)"), _col("Age"), _col("Selector", priority=1)],
                 lambda s: [s["metadata"]["name"], s["spec"].get("type", "ClusterIP"),
                            s["spec"].get("clusterIP", "None"), "<none>", _ports(s),
                            human_age(s["metadata"]["creationTimestamp"]), _selector(s)]),
    "events": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
               lambda e: [human_age(e["metadata"]["creationTimestamp"]), e.get("type", "Normal"),
                          e.get("reason", ""), f"{e.get('involvedObject', {}).get('kind', '').lower()}/"
                          f"{e.get('involvedObject', {}).get('name', '')}", e.get("message", "")]),
    "configmaps": ([_col("Name", fmt="name"), _col("Data", "integer"), _col("Age")],
                   lambda c: [c["metadata"]["name"], len(c.get("data", {})) + len(c.get("binaryData", {})),
                              human_age(c["metadata"]["creationTimestamp"])]),
    "namespaces": ([_col("Name", fmt="name"), _col("Status"), _col("Age")],
                   lambda n: [n["metadata"]["name"], n.get("status", {}).get("phase", "Active"),
                              human_age(n["metadata"]["creationTimestamp"])]),
    "nodes": ([_col("Name", fmt="name"), _col("Status"), _col("Roles"), _col("Age"), _col("Version"),
               _col("Internal-IP", priority=1), _col("External-IP", priority=1),
               _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
               _col("Container-Runtime", priority=1)],
              lambda n: [n["metadata"]["name"], "Ready", "control-plane",
                         human_age(n["metadata"]["creationTimestamp"]),
                         n["status"]["nodeInfo"]["kubeletVersion"],
                         n["status"]["addresses"][0]["address"], "<none>",
                         n["status"]["nodeInfo"]["osImage"], n["status"]["nodeInfo"]["kernelVersion"],
                         n["status"]["nodeInfo"]["containerRuntimeVersion"]]),
}


def table(plural: str, objects: list[Obj], resource_version: str) -> Obj:
    """A meta.k8s.io/v1 Table of ``objects`` (each row carries its object)."""
    columns, cells = TABLES[plural]
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": [{"cells": cells(o), "object": o} for o in objects],
    }


def status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A v1 Status object, as the API answers errors."""
    out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success" if code < 400 else "Failure",
                "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


# --- The lab's initial objects -----------------------------------------------------------

WEB_PORTS = [("http", 8080), ("echo", 9000), ("discard", 9001), ("source", 9002)]


def seed(store: Store, pod_ip: str, node_ip: str) -> None:
    """Namespaces, the node, the `web` pod and service, a kube-system pod, configmaps."""
    for ns in ("default", "kube-system", "kube-public", "demo"):
        store.create("namespaces", "", {"metadata": {"name": ns}})
    store.create("nodes", "", {
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/control-plane": ""}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip},
                          {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "dapfab lab", "kernelVersion": "lab",
                         "containerRuntimeVersion": "containerd://1.7.0", "operatingSystem": "linux",
                         "architecture": "amd64"},
        },
    })
    store.create("pods", "default", {
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "dapfab/web:lab",
            "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in WEB_PORTS],
        }]},
        "status": {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": node_ip, "qosClass": "BestEffort"},
    })
    web = store.get("pods", "default", "web")
    add_event(store, web, "Normal", "Scheduled", f"Successfully assigned default/web to {NODE_NAME}")
    add_event(store, web, "Normal", "Started", "Started container web")
    store.create("services", "default", {
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.80", "clusterIPs": ["10.96.0.80"],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                           {"name": "echo", "port": 9000, "targetPort": "echo"}]},
    })
    store.create("services", "default", {
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                 "ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
    })
    store.create("pods", "kube-system", {
        "metadata": {"name": "coredns-6d4b75cb6d-lab01", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3",
                                 "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"podIP": "10.244.0.2", "podIPs": [{"ip": "10.244.0.2"}], "hostIP": node_ip},
    })
    store.create("configmaps", "default", {
        "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "(lab CA)"}})
    store.create("configmaps", "demo", {
        "metadata": {"name": "settings", "labels": {"app": "demo"}},
        "data": {"greeting": "hello from the lab", "mode": "demo"}})
