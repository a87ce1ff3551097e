"""The lab's hosts are reachable exactly where the real ones are."""

from __future__ import annotations

import socket
import time

import pytest
from lab_helpers import probe, ssh

pytestmark = pytest.mark.lab


def test_laptop_reaches_the_bastion_with_ssh(lab):
    done = ssh(lab, "bastion", "hostname -I")
    assert done.returncode == 0, done.stderr
    assert lab.address("bastion") in done.stdout.split()


def test_laptop_cannot_connect_to_mgmt_directly_and_fails_fast(lab):
    start = time.monotonic()
    with pytest.raises(OSError), socket.create_connection((lab.address("mgmt"), 22), timeout=10):
        pass
    assert time.monotonic() - start < 5


def test_laptop_reaches_mgmt_through_the_bastion_with_ssh_F(lab):
    done = ssh(lab, "mgmt", "hostname -I")
    assert done.returncode == 0, done.stderr
    assert lab.address("mgmt") in done.stdout.split()


def test_mgmt_login_environment_is_clean_and_home_is_the_labs(lab):
    done = ssh(lab, "mgmt", 'echo "$HOME|$PYENV_ROOT|$(ls -A ~)"')
    assert done.stdout.strip() == "/root||.ssh"


@pytest.mark.parametrize("host", ["laptop", "bastion"])
def test_only_mgmt_reaches_the_runner_on_the_instance_bridge(lab, host):
    assert probe(lab, host, lab.address("runner")) == "unreachable"
    assert probe(lab, "mgmt", lab.address("runner")) == "refused"


@pytest.mark.parametrize("host", ["laptop", "bastion", "mgmt"])
def test_only_the_runner_reaches_the_cluster(lab, host):
    assert probe(lab, host, lab.cluster_address) == "unreachable"
    assert probe(lab, "runner", lab.cluster_address, port=9) == "refused"


@pytest.mark.parametrize("host", ["bastion", "mgmt", "runner", "cluster"])
def test_no_host_has_a_default_route_or_forwards(lab, host):
    done = lab.run(host, "ip route show default; cat /proc/sys/net/ipv4/ip_forward", check=True)
    assert done.stdout.split() == ["0"]


def test_the_laptop_has_no_route_into_the_lab_beyond_the_bastion_link(lab):
    done = lab.run("laptop", ["ip", "route", "get", lab.address("mgmt")])
    assert done.returncode != 0 and "no route to host" in done.stderr.lower()


def test_incus_is_on_mgmts_path_only(lab):
    assert ssh(lab, "mgmt", "command -v incus").stdout.strip() == "/usr/local/sbin/incus"
    assert ssh(lab, "bastion", "command -v incus").returncode != 0
    assert lab.run("runner", "command -v incus").returncode != 0


def test_the_runner_has_the_real_tools_and_its_own_home(lab):
    done = lab.run("runner", "for t in bash curl kubectl nsenter; do command -v $t; done; "
                   "echo $HOME; hostname")
    assert done.stdout.split() == ["/usr/bin/bash", "/usr/bin/curl", "/usr/bin/kubectl",
                                   "/usr/bin/nsenter", "/root", lab.vm_name]
