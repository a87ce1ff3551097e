"""Legacy discovery (``/api/v1``, ``/apis``, ``/apis/GROUP[/VERSION]``): what ``kubectl
api-resources`` lists and how kubectl maps ``deploy`` to ``apps/v1`` deployments.

kubectl 1.32 asks for aggregated discovery first (``Accept: ...;as=APIGroupDiscoveryList``);
an ``APIGroupList`` answered as plain JSON makes it fall back to these documents, as it does
with an API server older than 1.26, so the lab serves only these.
"""

from __future__ import annotations

from typing import Any

from .access import GROUP_VERSION as AUTHORIZATION
from .resources import KINDS, SUBRESOURCES

GROUPS = {"apps": "v1", AUTHORIZATION.split("/")[0]: "v1"}
PATHS = {"v1": "api/v1", **{f"{g}/{v}": f"apis/{g}/{v}" for g, v in GROUPS.items()}}


def _version(group: str) -> dict[str, str]:
    return {"groupVersion": f"{group}/{GROUPS[group]}", "version": GROUPS[group]}


def group(name: str) -> dict[str, Any]:
    """``/apis/GROUP``: one APIGroup."""
    return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [_version(name)],
            "preferredVersion": _version(name)}


def group_list() -> dict[str, Any]:
    """``/apis``: every group the lab serves besides the core one."""
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{k: v for k, v in group(name).items() if k not in ("kind", "apiVersion")}
                       for name in GROUPS]}


def resource_list(group_version: str) -> dict[str, Any]:
    """``/api/v1`` or ``/apis/GROUP/VERSION``: the resources of one group-version."""
    out: list[dict[str, Any]] = []
    for plural, kind in KINDS.items():
        if kind.api_version == group_version:
            entry = {"name": plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                     "kind": kind.kind, "verbs": list(kind.verbs), "shortNames": list(kind.short_names),
                     "storageVersionHash": ""}
            if kind.categories:
                entry["categories"] = list(kind.categories)
            out.append(entry)
    for name, (kind_name, verbs, gv) in SUBRESOURCES.get(group_version, {}).items():
        entry = {"name": name, "singularName": "", "namespaced": True, "kind": kind_name, "verbs": list(verbs)}
        if gv:
            entry["group"], entry["version"] = gv
        out.append(entry)
    if group_version == AUTHORIZATION:
        out.append({"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
                    "namespaced": False, "kind": "SelfSubjectAccessReview", "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": out}
