"""The minimal OpenAPI documents kubectl needs for ``apply`` (client-side and server-side).

kubectl 1.32 reads ``/openapi/v3`` (an index of group-versions) and then the document for
``api/v1``. From it, it learns that PATCH supports ``fieldValidation`` (so it validates on
the server instead of downloading ``/openapi/v2``) and finds each kind's schema by its
``x-kubernetes-group-version-kind`` to compute a strategic merge patch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import KINDS

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
}


def _gvk(kind: str) -> dict[str, str]:
    return {"group": "", "version": "v1", "kind": kind}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def api_v1() -> dict[str, Any]:
    """The OpenAPI v3 document for the core group ``api/v1``."""
    schemas: dict[str, Any] = {
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _META,
    }
    paths: dict[str, Any] = {}
    for plural, kind in KINDS.items():
        ref = f"io.k8s.api.core.v1.{kind.kind}"
        schemas[ref] = {
            "type": "object",
            "description": f"{kind.kind} (dapfab lab)",
            "properties": {
                "apiVersion": _STRING, "kind": _STRING,
                "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                             "default": {}},
                **_EXTRA_PROPERTIES.get(kind.kind, {}),
            },
            "x-kubernetes-group-version-kind": [_gvk(kind.kind)],
        }
        item = (f"/api/v1/namespaces/{{namespace}}/{plural}/{{name}}" if kind.namespaced
                else f"/api/v1/{plural}/{{name}}")
        body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
        ok = {"200": {"description": "OK", **body}}
        paths[item] = {
            "get": {"operationId": f"read{kind.kind}", "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": _gvk(kind.kind), "responses": ok},
            "put": {"operationId": f"replace{kind.kind}", "x-kubernetes-action": "put",
                    "x-kubernetes-group-version-kind": _gvk(kind.kind), "requestBody": body,
                    "parameters": [_query("dryRun"), _query("fieldManager"), _query("fieldValidation")],
                    "responses": ok},
            "patch": {"operationId": f"patch{kind.kind}", "x-kubernetes-action": "patch",
                      "x-kubernetes-group-version-kind": _gvk(kind.kind),
                      "parameters": [_query("dryRun"), _query("fieldManager"), _query("fieldValidation"),
                                     {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                      "responses": ok},
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


API_V1 = api_v1()
API_V1_HASH = _hash(API_V1)


def index() -> dict[str, Any]:
    """``/openapi/v3``: where each group-version's document lives."""
    return {"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={API_V1_HASH}"}}}
