"""The minimal OpenAPI documents kubectl needs for ``apply`` (client-side and server-side).

kubectl 1.32 reads ``/openapi/v3`` (an index of group-versions) and then the document for
the kind's group-version (``api/v1``, ``apis/apps/v1``). From it, it learns that PATCH supports ``fieldValidation`` (so it validates on
the server instead of downloading ``/openapi/v2``) and finds each kind's schema by its
``x-kubernetes-group-version-kind`` to compute a strategic merge patch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import KINDS, Kind

_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}

_META = {
    "type": "object",
    "properties": {
        "name": _STRING, "namespace": _STRING, "labels": _STRING_MAP, "annotations": _STRING_MAP,
        "uid": _STRING, "resourceVersion": _STRING, "creationTimestamp": _STRING,
        "generateName": _STRING,
    },
}

_EXTRA_PROPERTIES: dict[str, dict[str, Any]] = {
    "ConfigMap": {"data": _STRING_MAP, "binaryData": _STRING_MAP, "immutable": {"type": "boolean"}},
    "Pod": {"spec": {"type": "object"}, "status": {"type": "object"}},
    "Service": {"spec": {"type": "object"}, "status": {"type": "object"}},
    "Namespace": {"spec": {"type": "object"}, "status": {"type": "object"}},
    "Node": {"spec": {"type": "object"}, "status": {"type": "object"}},
    "Deployment": {"spec": {"type": "object"}, "status": {"type": "object"}},
    "ReplicaSet": {"spec": {"type": "object"}, "status": {"type": "object"}},
}


def _gvk(kind: Kind) -> dict[str, str]:
    return {"group": kind.group, "version": kind.version, "kind": kind.kind}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def document(group_version: str) -> dict[str, Any]:
    """The OpenAPI v3 document of one group-version (``v1``, ``apps/v1``)."""
    schemas: dict[str, Any] = {
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _META,
    }
    paths: dict[str, Any] = {}
    for plural, kind in KINDS.items():
        if kind.api_version != group_version:
            continue
        ref = f"io.k8s.api.{kind.group.split('.')[0] or 'core'}.{kind.version}.{kind.kind}"
        schemas[ref] = {
            "type": "object",
            "description": f"{kind.kind} (dapfab lab)",
            "properties": {
                "apiVersion": _STRING, "kind": _STRING,
                "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                             "default": {}},
                **_EXTRA_PROPERTIES.get(kind.kind, {}),
            },
            "x-kubernetes-group-version-kind": [_gvk(kind)],
        }
        item = (f"/{kind.group_version}/namespaces/{{namespace}}/{plural}/{{name}}" if kind.namespaced
                else f"/{kind.group_version}/{plural}/{{name}}")
        body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
        ok = {"200": {"description": "OK", **body}}
        paths[item] = {
            "get": {"operationId": f"read{kind.kind}", "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": _gvk(kind), "responses": ok},
            "put": {"operationId": f"replace{kind.kind}", "x-kubernetes-action": "put",
                    "x-kubernetes-group-version-kind": _gvk(kind), "requestBody": body,
                    "parameters": [_query("dryRun"), _query("fieldManager"), _query("fieldValidation")],
                    "responses": ok},
            "patch": {"operationId": f"patch{kind.kind}", "x-kubernetes-action": "patch",
                      "x-kubernetes-group-version-kind": _gvk(kind),
                      "parameters": [_query("dryRun"), _query("fieldManager"), _query("fieldValidation"),
                                     {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                      "responses": ok},
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


DOCUMENTS = {gv: document(gv) for gv in ("v1", "apps/v1")}
HASHES = {gv: _hash(doc) for gv, doc in DOCUMENTS.items()}


def index() -> dict[str, Any]:
    """``/openapi/v3``: where each group-version's document lives."""
    paths = {}
    for gv in DOCUMENTS:
        path = "api/v1" if gv == "v1" else f"apis/{gv}"
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={HASHES[gv]}"}
    return {"paths": paths}
