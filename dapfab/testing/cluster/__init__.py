"""The lab's Kubernetes cluster: an API server the real kubectl accepts, demo pods, and a
Deployment controller whose pods are demo web processes too.

Start it with ``python3 -m dapfab.testing.cluster --state-dir DIR --address ADDR``; it
writes ``DIR/kubeconfig`` and then ``DIR/ready``. ``restart_pod(DIR, "web")`` restarts a
pod; ``DIR/requests.log`` records every API request and whether its bearer token matched.
"""

from .control import cluster_status, restart_pod
from .server import Cluster, serve

__all__ = ["Cluster", "cluster_status", "restart_pod", "serve"]
