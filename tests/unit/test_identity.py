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


def test_an_edit_that_keeps_inode_size_and_mtime_is_a_new_identity(tmp_path):
    """A comment turned into an ``@revoked`` line of the same length, in place, with the
    modification time set back: only the content tells."""
    known = tmp_path / "known_hosts"
    revoked = b"@revoked * ssh-ed25519 BBBB\n"
    known.write_bytes(b"mgmt ssh-ed25519 AAAA\n#" + b" " * (len(revoked) - 2) + b"\n")
    before, seen = os.stat(known), ConnectionIdentity.of(config(tmp_path))
    with open(known, "r+b") as file:
        file.seek(len(b"mgmt ssh-ed25519 AAAA\n"))
        file.write(revoked)
    os.utime(known, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(known)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)
    assert ConnectionIdentity.of(config(tmp_path)) != seen


def test_the_same_content_rewritten_is_the_same_identity(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("mgmt ssh-ed25519 AAAA\n")
    seen = ConnectionIdentity.of(config(tmp_path))
    known.unlink()
    assert ConnectionIdentity.of(config(tmp_path)) != seen  # missing is another identity
    known.write_text("mgmt ssh-ed25519 AAAA\n")
    assert ConnectionIdentity.of(config(tmp_path)) == seen


def test_a_known_hosts_that_is_no_regular_file_is_never_read(tmp_path):
    """A FIFO would block a read forever; /dev/null has nothing to read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert ConnectionIdentity.of(config(tmp_path, known_hosts=str(fifo))) == \
        ConnectionIdentity.of(config(tmp_path, known_hosts=str(fifo)))
    ConnectionIdentity.of(config(tmp_path, known_hosts="/dev/null"))
