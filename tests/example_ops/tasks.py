"""An operations project that uses dapfab: the shape of a real release runbook's tasks.py."""

from invoke import Collection, task

from dapfab import RunnerConfig, kubectl_in_runner
from dapfab.tasks import ns as dapfab
from dapfab.tasks.k8s import kubectl


@task
def release(c):
    """Check the cluster from Python, then run kubectl through the task."""
    config = RunnerConfig.from_invoke_config(c.config)
    namespaces = kubectl_in_runner(config, ["get", "ns", "-o", "name"], hide=True)
    print("runbook sees:", " ".join(sorted(namespaces.stdout.split())))
    kubectl(c, args=["get", "pods", "-o", "name"])


ns = Collection(release)
ns.add_collection(dapfab, name="dap")
