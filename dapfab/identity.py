"""Connection identity: what decides who dapfab talks to over SSH and how it checks them
(docs/design.md §10), the one key under which connections are shared.

Two runner configs with the same identity share SSH connections, whatever their VM,
project or kubectl defaults. The identity is made of the raw settings (management host,
gateway, key, known_hosts file, host-key policy, connect timeout) and the inode, size and
modification time of the files that decide the hops and their keys (the ssh_config files
Fabric reads, and known_hosts): an edited known_hosts (a new ``@revoked`` line) is a new
identity, so a connection checked against the old file is never handed out again. Nothing
here resolves ssh_config or imports paramiko or Fabric: computing an identity is a few
``stat`` calls.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dapfab.compat import SSH_CONFIG_FILES

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

FileStamp = tuple[str, int, int, int]  # path, inode, size, mtime in ns (zeros: missing)


def stamp(path: str) -> FileStamp:
    """``path`` with the inode, size and modification time that identify its content."""
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
    except OSError:
        return (path, 0, 0, 0)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ConnectionIdentity:
    """Who dapfab talks to and how it checks them; equal identities share connections."""

    ssh_host: str
    gateway: str | None
    ssh_key: str | None
    known_hosts: str
    host_key_policy: str
    connect_timeout: float
    files: tuple[FileStamp, ...]

    @classmethod
    def of(cls, config: RunnerConfig) -> ConnectionIdentity:
        """The identity of ``config``'s connection, its files stamped now."""
        files = tuple(stamp(path) for path in (*SSH_CONFIG_FILES, config.known_hosts))
        return cls(
            config.ssh_host, config.gateway, config.ssh_key, config.known_hosts,
            config.host_key_policy, float(config.connect_timeout), files,
        )

    def digest(self) -> str:
        """A short stable name for this identity (for file and socket names)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:24]
