"""``kubectl auth can-i``: SelfSubjectAccessReview (authorization.k8s.io/v1).

The lab's token is its only user and acts as a cluster admin on what the lab serves: every
verb on every resource in ``resources.KINDS`` (their subresources too) and on every
non-resource URL is allowed. A resource the lab does not serve is denied with a reason that
says so, as RBAC would deny a rule nobody wrote; so ``kubectl auth can-i create cronjobs``
answers ``no`` (exit 1) here.
"""

from __future__ import annotations

from typing import Any

from .resources import KINDS

GROUP_VERSION = "authorization.k8s.io/v1"
ALLOWED_REASON = "the dapfab lab's token may do everything the lab serves"


def review(body: Any) -> dict[str, Any]:
    """The answered SelfSubjectAccessReview for a request body (``spec`` filled in, ``status`` added)."""
    spec = body.get("spec", {}) if isinstance(body, dict) else {}
    attributes = spec.get("resourceAttributes")
    if attributes:
        group, resource = attributes.get("group", ""), attributes.get("resource", "")
        served = any(k.plural == resource and k.group == group for k in KINDS.values())
        allowed = served or resource == "*"
        reason = ALLOWED_REASON if allowed else (
            f"the dapfab lab does not serve {resource}{'.' + group if group else ''}")
    else:
        allowed, reason = True, ALLOWED_REASON
    return {"kind": "SelfSubjectAccessReview", "apiVersion": GROUP_VERSION,
            "metadata": {"creationTimestamp": None}, "spec": spec,
            "status": {"allowed": allowed, "reason": reason}}
