"""Connection identity: what shares a connection, and what makes a new one."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from dapfab.config import RunnerConfig
from dapfab.identity import ConnectionIdentity


def config(tmp_path, **changes) -> RunnerConfig:
    base = RunnerConfig(ssh_host="ops@mgmt:2222", gateway="jump", ssh_key=str(tmp_path / "key"),
                        known_hosts=str(tmp_path / "known_hosts"), vm_name="runner1")
    return dataclasses.replace(base, **changes)


def test_vm_project_and_incus_client_do_not_change_the_identity(tmp_path):
    one = ConnectionIdentity.of(config(tmp_path))
    assert ConnectionIdentity.of(config(tmp_path, vm_name="runner2", project="p", incus="lxc")) == one


def test_every_setting_that_decides_the_peer_or_its_checks_does(tmp_path):
    one = ConnectionIdentity.of(config(tmp_path))
    for change in ({"ssh_host": "ops@mgmt:22"}, {"gateway": None}, {"ssh_key": None},
                   {"known_hosts": str(tmp_path / "other")}, {"host_key_policy": "accept-new"},
                   {"connect_timeout": 3.0}):
        assert ConnectionIdentity.of(config(tmp_path, **change)) != one, change


def test_an_edited_known_hosts_is_a_new_identity(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("mgmt ssh-ed25519 AAAA\n")
    before = ConnectionIdentity.of(config(tmp_path))
    assert ConnectionIdentity.of(config(tmp_path)) == before
    known.write_text("mgmt ssh-ed25519 AAAA\n@revoked * ssh-ed25519 BBBB\n")
    after = ConnectionIdentity.of(config(tmp_path))
    assert after != before and after.digest() != before.digest()


def test_an_identity_needs_neither_paramiko_nor_fabric():
    code = ("import sys, dapfab.identity, dapfab.config; "
            "dapfab.identity.ConnectionIdentity.of(dapfab.config.RunnerConfig(ssh_host='a@b')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'fabric', 'invoke')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HOME": "/nonexistent"}, check=True).stdout
    assert out.strip() == "[]"
