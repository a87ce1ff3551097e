"""The cluster's objects: an in-memory store of core/v1 and apps/v1 resources, tables,
selectors, patches (JSON merge, strategic merge as JSON merge, JSON patch)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One resource type as discovery describes it."""

    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    group: str = ""
    version: str = "v1"
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """``v1`` or ``GROUP/VERSION``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        """Where the kind lives in the URL space: ``api/v1`` or ``apis/GROUP/VERSION``."""
        return f"apis/{self.api_version}" if self.group else "api/v1"


KINDS: dict[str, Kind] = {k.plural: k for k in (
    Kind("pods", "Pod", True, ("po",)),
    Kind("services", "Service", True, ("svc",)),
    Kind("configmaps", "ConfigMap", True, ("cm",)),
    Kind("namespaces", "Namespace", False, ("ns",)),
    Kind("nodes", "Node", False, ("no",)),
    Kind("events", "Event", True, ("ev",)),
    Kind("deployments", "Deployment", True, ("deploy",), group="apps", categories=("all",)),
    Kind("replicasets", "ReplicaSet", True, ("rs",), group="apps", categories=("all",)),
)}
# Subresources by group-version: name -> (kind, verbs, (group, version) of its kind if not the same)
SUBRESOURCES: dict[str, dict[str, tuple[str, tuple[str, ...], tuple[str, str] | None]]] = {
    "v1": {"pods/log": ("Pod", ("get",), None),
           "pods/portforward": ("PodPortForwardOptions", ("create", "get"), None),
           "pods/exec": ("PodExecOptions", ("create", "get"), None),
           "pods/status": ("Pod", ("get", "patch", "update"), None)},
    "apps/v1": {f"{plural}/{sub}": (kind, ("get", "patch", "update"), gv)
                for plural, kind_name in (("deployments", "Deployment"), ("replicasets", "ReplicaSet"))
                for sub, kind, gv in (("status", kind_name, None), ("scale", "Scale", ("autoscaling", "v1")))},
}
WORKLOADS = ("deployments", "replicasets")  # kinds with a spec the controller acts on
REVISION = "deployment.kubernetes.io/revision"

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


# The lists kubectl's strategic merge patches merge by a key (k8s.io/api's patchMergeKey tags)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name", "conditions": "type",
              "ownerReferences": "uid"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # a container's ports, or a service's
        return "port" if any(isinstance(i, dict) and "port" in i for i in items) else "containerPort"
    return MERGE_KEYS.get(field)


def strategic_merge(target: Any, patch: Any) -> Any:
    """A strategic merge patch: a JSON merge patch whose lists in ``MERGE_KEYS`` merge item by
    item, with the directives kubectl sends (``$setElementOrder``, ``$patch: delete|replace``,
    ``$retainKeys``, ``$deleteFromPrimitiveList``)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list) and (
                mkey := _merge_key(key, result[key] + value)):
            result[key] = _merge_list(result[key], value, mkey, patch.get(f"$setElementOrder/{key}"))
        else:
            result[key] = strategic_merge(result.get(key), value)
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


def _merge_list(old: list[Any], patch: list[Any], key: str, order: list[Any] | None) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    items = copy.deepcopy(old)
    for item in patch:
        if not isinstance(item, dict):
            items.append(copy.deepcopy(item))
            continue
        index = next((i for i, o in enumerate(items) if isinstance(o, dict) and o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del items[index]
        elif index is None:
            items.append(strategic_merge({}, item))
        else:
            items[index] = strategic_merge(items[index], item)
    if order:
        rank = {json.dumps(o.get(key)): n for n, o in enumerate(order) if isinstance(o, dict)}
        items.sort(key=lambda o: rank.get(json.dumps(o.get(key) if isinstance(o, dict) else o), len(rank)))
    return items


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise Invalid(f"JSON patch path {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target: Any, operations: Any) -> Any:
    """JSON patch (RFC 6902): add, remove, replace, test (what ``kubectl rollout undo`` sends)."""
    if not isinstance(operations, list):
        raise Invalid("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict):
            raise Invalid("a JSON patch operation is an object")
        *parents, last = _pointer(op.get("path", "")) or [""]
        cur = doc
        for part in parents:
            cur = cur[int(part)] if isinstance(cur, list) else cur.get(part)
            if cur is None:
                raise Invalid(f"JSON patch path {op.get('path')!r} does not exist")
        kind = op.get("op")
        if kind == "test":
            value = cur[int(last)] if isinstance(cur, list) else cur.get(last)
            if value != op.get("value"):
                raise Invalid(f"JSON patch test of {op.get('path')!r} failed")
        elif kind in ("add", "replace"):
            if isinstance(cur, list):
                index = len(cur) if last == "-" else int(last)
                if kind == "add":
                    cur.insert(index, copy.deepcopy(op.get("value")))
                else:
                    cur[index] = copy.deepcopy(op.get("value"))
            else:
                if kind == "replace" and last not in cur:
                    raise Invalid(f"JSON patch replace of missing {op.get('path')!r}")
                cur[last] = copy.deepcopy(op.get("value"))
        elif kind == "remove":
            if isinstance(cur, list):
                del cur[int(last)]
            elif cur.pop(last, None) is None:
                raise Invalid(f"JSON patch remove of missing {op.get('path')!r}")
        else:
            raise Invalid(f"JSON patch operation {kind!r} is not supported by the lab")
    return doc


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
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        meta = obj["metadata"]
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta.setdefault("creationTimestamp", timestamp(now()))
        meta["resourceVersion"] = self.resource_version()
        if plural in WORKLOADS:
            meta["generation"] = 1
            obj["status"] = {}
        defaults = {"pods": _pod_defaults, "services": _service_defaults,
                    "namespaces": _namespace_defaults, "deployments": _workload_defaults,
                    "replicasets": _workload_defaults}.get(plural)
        if defaults:
            defaults(obj)
        self._objects[(plural, namespace, name)] = obj
        self._record("ADDED", plural, namespace, obj)
        return copy.deepcopy(obj)

    def replace(self, plural: str, namespace: str, name: str, obj: Obj, status: bool = False) -> Obj:
        """Replace an object; for a workload, ``status`` says which part is replaced: the
        status (the status subresource, the controller) or everything else (its generation
        grows when its spec changes), as the API server does."""
        old = self.get(plural, namespace, name)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "name"):
            meta[key] = old["metadata"][key]
        if KINDS[plural].namespaced:
            meta["namespace"] = namespace
        obj["kind"], obj["apiVersion"] = old["kind"], KINDS[plural].api_version
        if plural == "pods" and "status" not in obj:
            obj["status"] = old.get("status", {})
        if plural in WORKLOADS:
            if status:
                obj = {**old, "status": obj.get("status", {})}
                meta = obj["metadata"] = copy.deepcopy(old["metadata"])
            else:
                obj["status"] = old.get("status", {})
                _workload_defaults(obj)
                generation = old["metadata"].get("generation", 1)
                meta["generation"] = generation + (obj.get("spec") != old.get("spec"))
        meta["resourceVersion"] = self.resource_version()
        self._objects[(plural, namespace, name)] = obj
        self._record("MODIFIED", plural, namespace, obj)
        return copy.deepcopy(obj)

    def patch(self, plural: str, namespace: str, name: str, patch: Any, how: str = "strategic",
              status: bool = False) -> Obj:
        """Apply ``patch`` to the object: ``how`` is ``strategic``, ``merge`` or ``json``."""
        old = self.get(plural, namespace, name)
        new = PATCHES[how](old, patch)
        return self.replace(plural, namespace, name, new, status=status)

    def delete(self, plural: str, namespace: str, name: str) -> Obj:
        obj = self.get(plural, namespace, name)
        del self._objects[(plural, namespace, name)]
        obj["metadata"]["resourceVersion"] = self.resource_version()
        self._record("DELETED", plural, namespace, obj)
        return obj


PATCHES = {"strategic": strategic_merge, "merge": merge_patch, "json": json_patch}


def add_event(store: Store, obj: Obj, type_: str, reason: str, message: str,
              component: str = "kubelet") -> None:
    """Record a core/v1 Event about ``obj`` (what `kubectl describe` and `get events` show)."""
    meta = obj["metadata"]
    stamp = timestamp(now())
    store.create("events", meta.get("namespace", "default"), {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
        "involvedObject": {"kind": obj.get("kind", ""), "name": meta["name"],
                           "namespace": meta.get("namespace", ""), "uid": meta.get("uid", ""),
                           "apiVersion": obj.get("apiVersion", "v1")},
        "type": type_, "reason": reason, "message": message, "count": 1,
        "firstTimestamp": stamp, "lastTimestamp": stamp,
        "source": {"component": component, "host": NODE_NAME},
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


def _workload_defaults(obj: Obj) -> None:
    """A Deployment's or ReplicaSet's defaults; its selector must select its template."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    template_meta = spec.get("template", {}).get("metadata")
    if isinstance(template_meta, dict) and template_meta.get("creationTimestamp", "") is None:
        del template_meta["creationTimestamp"]  # what a Go client's round trip adds
    if obj["kind"] == "Deployment":
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    if not selector:
        raise Invalid("spec.selector: Required value (the lab understands matchLabels)")
    if any(labels.get(k) != v for k, v in selector.items()):
        raise Invalid("spec.template.metadata.labels: Invalid value: "
                      "`selector` does not match template `labels`")
    if not spec.get("template", {}).get("spec", {}).get("containers"):
        raise Invalid("spec.template.spec.containers: Required value")


def selector_text(obj: Obj) -> str:
    """A workload's ``spec.selector.matchLabels`` as a label selector string."""
    labels = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


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


def _images(obj: Obj) -> tuple[str, str]:
    containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return (",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers))


def _deployment_cells(d: Obj) -> list[Any]:
    st = d.get("status", {})
    return [d["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{d['spec'].get('replicas', 1)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0),
            human_age(d["metadata"]["creationTimestamp"]), *_images(d), selector_text(d)]


def _replicaset_cells(r: Obj) -> list[Any]:
    st = r.get("status", {})
    return [r["metadata"]["name"], r["spec"].get("replicas", 1), st.get("replicas", 0),
            st.get("readyReplicas", 0), human_age(r["metadata"]["creationTimestamp"]), *_images(r),
            selector_text(r)]


TABLES["deployments"] = (
    [_col("Name", fmt="name"), _col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"),
     _col("Age"), _col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)],
    _deployment_cells)
TABLES["replicasets"] = (
    [_col("Name", fmt="name"), _col("Desired", "integer"), _col("Current", "integer"),
     _col("Ready", "integer"), _col("Age"), _col("Containers", priority=1), _col("Images", priority=1),
     _col("Selector", priority=1)],
    _replicaset_cells)


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
