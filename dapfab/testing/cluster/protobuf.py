"""Request bodies in Kubernetes' protobuf encoding, decoded to the JSON form the lab stores.

kubectl 1.32's typed clients (``kubectl create configmap|namespace|service ...``) send
``application/vnd.kubernetes.protobuf``: the magic ``k8s\\0`` and a ``runtime.Unknown``
envelope holding the object's protobuf. Only the kinds and fields the lab serves are known
here (field numbers from ``k8s.io/api/core/v1/generated.proto``,
``k8s.io/api/authorization/v1/generated.proto`` (``kubectl auth can-i``) and apimachinery's
``meta/v1``); unknown fields are skipped, as protobuf readers do.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

MAGIC = b"k8s\x00"

# A schema maps a field number to (JSON name, type); a type is a scalar name, a nested
# schema (dict), ("repeated", type) or ("map", value type).
Schema = dict[int, tuple[str, Any]]

TYPE_META: Schema = {1: ("apiVersion", "string"), 2: ("kind", "string")}
UNKNOWN: Schema = {1: ("typeMeta", TYPE_META), 2: ("raw", "raw"), 3: ("contentEncoding", "string"),
                   4: ("contentType", "string")}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    11: ("labels", ("map", "string")), 12: ("annotations", ("map", "string")),
    14: ("finalizers", ("repeated", "string")),
}
INT_OR_STRING: Schema = {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "string")}
SERVICE_PORT: Schema = {1: ("name", "string"), 2: ("protocol", "string"), 3: ("port", "int"),
                        4: ("targetPort", "int_or_string"), 5: ("nodePort", "int"),
                        6: ("appProtocol", "string")}
SERVICE_SPEC: Schema = {1: ("ports", ("repeated", SERVICE_PORT)), 2: ("selector", ("map", "string")),
                        3: ("clusterIP", "string"), 4: ("type", "string"),
                        5: ("externalIPs", ("repeated", "string")),
                        11: ("externalName", "string")}
RESOURCE_ATTRIBUTES: Schema = {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                               4: ("version", "string"), 5: ("resource", "string"),
                               6: ("subresource", "string"), 7: ("name", "string")}
ACCESS_REVIEW_SPEC: Schema = {1: ("resourceAttributes", RESOURCE_ATTRIBUTES),
                              2: ("nonResourceAttributes", {1: ("path", "string"), 2: ("verb", "string")})}
KINDS: dict[str, Schema] = {
    "SelfSubjectAccessReview": {1: ("metadata", OBJECT_META), 2: ("spec", ACCESS_REVIEW_SPEC)},
    "ConfigMap": {1: ("metadata", OBJECT_META), 2: ("data", ("map", "string")),
                  3: ("binaryData", ("map", "bytes")), 4: ("immutable", "bool")},
    "Namespace": {1: ("metadata", OBJECT_META)},
    "Service": {1: ("metadata", OBJECT_META), 2: ("spec", SERVICE_SPEC)},
}


class ProtobufError(ValueError):
    """A body that is not Kubernetes protobuf, or of a kind the lab cannot read."""


def decode_object(body: bytes) -> dict[str, Any]:
    """The object in a ``k8s\\0`` protobuf body, as the JSON the lab would have received."""
    if not body.startswith(MAGIC):
        raise ProtobufError("no k8s protobuf magic")
    envelope = _message(body[len(MAGIC):], UNKNOWN)
    type_meta = envelope.get("typeMeta", {})
    kind = type_meta.get("kind", "")
    if kind not in KINDS:
        raise ProtobufError(f"the lab cannot read {kind or 'this kind'} as protobuf; send JSON")
    obj = _message(envelope.get("raw", b""), KINDS[kind])
    return {"kind": kind, "apiVersion": type_meta.get("apiVersion", "v1"), **obj}


def _fields(data: bytes) -> Any:
    """(field number, wire type, value) for each field of one message."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at:at + size], at + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = data[at:at + width], at + width
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value


def _varint(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[at]
        result |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return result, at
        shift += 7


def _scalar(kind: Any, wire: int, value: Any) -> Any:
    if isinstance(kind, dict):
        return _message(value, kind)
    if kind == "string":
        return value.decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "raw":
        return value
    if kind == "int_or_string":  # JSON has the number or the name itself
        either = _message(value, INT_OR_STRING)
        return either.get("strVal", "") if either.get("type") == 1 else either.get("intVal", 0)
    if kind == "bool":
        return bool(value)
    if kind == "int":
        if wire == 0:
            return value - (1 << 64) if value >= 1 << 63 else value
        return struct.unpack("<q" if wire == 1 else "<i", value)[0]
    raise ProtobufError(f"unknown field type {kind!r}")


def _message(data: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = _message(value, {1: ("key", "string"), 2: ("value", kind[1])})
            out.setdefault(name, {})[entry.get("key", "")] = entry.get(
                "value", "" if kind[1] in ("string", "bytes") else None
            )
        elif isinstance(kind, tuple) and kind[0] == "repeated":
            out.setdefault(name, []).append(_scalar(kind[1], wire, value))
        else:
            out[name] = _scalar(kind, wire, value)
    return out
