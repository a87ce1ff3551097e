"""This repository's own tasks: dapfab's collection plus the test lab (``lab.*``)."""

from invoke import Collection

from dapfab.tasks import config_ns, k8s_ns
from dapfab.testing.tasks import lab

ns = Collection(k8s_ns, config_ns, lab)
