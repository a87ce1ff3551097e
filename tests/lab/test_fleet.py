"""The grown lab (``dapfab.testing.fleet``): a second management host and more runners."""

from __future__ import annotations

import pytest
from lab_helpers import probe, ssh

from dapfab.testing import fleet

pytestmark = pytest.mark.lab


@pytest.fixture
def grown(lab):
    fleet.grow(lab)
    return lab


def test_mgmt2_is_reached_through_the_bastion_only(grown):
    done = ssh(grown, "mgmt2", "hostname -I")
    assert done.returncode == 0, done.stderr
    assert grown.address("mgmt2") in done.stdout.split()
    assert probe(grown, "laptop", grown.address("mgmt2"), port=22) == "unreachable"
    assert probe(grown, "mgmt", grown.address("mgmt2"), port=22) == "unreachable"


def test_each_host_lists_its_own_runners(grown):
    by_host: dict[str, list[str]] = {}
    for runner in fleet.fleet(grown).values():
        by_host.setdefault(runner["host"], []).append(runner["vm"])
    assert len(by_host["mgmt2"]) == 4
    assert len(by_host["mgmt"]) == (4 if grown.backend_name == "netns" else 2)
    for host, names in by_host.items():
        client = grown.incus if host == "mgmt" else "incus"
        done = ssh(grown, host, f"{client} list --format csv -c n")
        assert sorted(done.stdout.split()) == sorted(names), done.stderr


def test_every_runner_reaches_the_cluster_behind_its_own_host(grown):
    for name, p in fleet.profiles(grown).items():
        host = "mgmt" if p["ssh_host"] == grown.ssh_host else "mgmt2"
        done = ssh(grown, host, f"{p['incus']} exec {p['vm']} -- bash -lc 'hostname; kubectl get pods -o name'")
        assert done.stdout.split() == [p["vm"], "pod/web"], (name, done.stderr)


def test_a_stopped_runner_is_not_running_until_reset(grown):
    name = "m2-r2"
    fleet.stop(grown, name)
    done = ssh(grown, "mgmt2", "incus exec runner-2 -- true")
    assert done.returncode == 1 and "Instance is not running" in done.stderr
    assert ssh(grown, "mgmt", f"{grown.incus} exec {grown.vm_name} -- true").returncode == 0
    grown.reset()
    assert ssh(grown, "mgmt2", "incus exec runner-2 -- true").returncode == 0
