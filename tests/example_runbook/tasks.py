"""A release runbook: ``inv check release verify`` on every runner of the group ``release``.

Each step runs on all runners at once (fan-out) and prints one summary line per runner; a
step that fails on any runner ends the run with that runner's exit code, so nothing is
released anywhere unless every runner passed the check.
"""

from pathlib import Path

from invoke import Collection, task

from dapfab.tasks import ns as dapfab
from dapfab.tasks.k8s import curl, kubectl

GROUP = "@release"
DEPLOY = Path(__file__).resolve().parent / "deploy"  # the repository's manifests, wherever inv runs


@task
def check(c):
    """Every runner may roll out Deployments."""
    kubectl(c, args=["auth", "can-i", "patch", "deployments.apps"], runner=GROUP)


@task
def release(c):
    """Apply deploy/ and wait until the rollout is done, on every runner."""
    kubectl(c, args=["apply", "--server-side", "-f", str(DEPLOY)], runner=GROUP)
    kubectl(c, args=["rollout", "status", "deploy/hello", "--timeout=120s"], runner=GROUP)


@task
def verify(c):
    """The release answers on its health URL, seen from every runner."""
    curl(c, url=c.config.runbook.health_url, runner=GROUP)


ns = Collection(check, release, verify)
ns.add_collection(dapfab, name="dap")
ns.configure({"runbook": {"health_url": "http://hello.default.svc/healthz"}})
