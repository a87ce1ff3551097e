"""The dapfab test lab: real sshd hosts in network namespaces, an incus, a cluster.

Importable by other projects that test their own runbooks (see :mod:`dapfab.testing.plugin`).
"""
