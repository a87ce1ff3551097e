"""The dapfab task tree: ``ns`` holds the ``k8s`` and ``config`` collections.

Add it (or its parts) to another project's ``tasks.py``::

    from dapfab.tasks import ns as dapfab
    ns = Collection(release, dapfab)            # inv dapfab.k8s.kubectl -- get pods
    ns = Collection(release, dapfab.collections["k8s"])  # inv k8s.kubectl -- get pods
"""

from __future__ import annotations

import copy

from invoke import Collection

from dapfab.config import DEFAULTS
from dapfab.tasks.config import ns as config_ns
from dapfab.tasks.k8s import ns as k8s_ns

ns = Collection("dapfab", k8s_ns, config_ns)
ns.configure({"dap": copy.deepcopy(DEFAULTS)})
