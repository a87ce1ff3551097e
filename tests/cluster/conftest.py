"""Fixtures for the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_loopback import LoopbackCluster, start_cluster, stop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        stop(c.process)
