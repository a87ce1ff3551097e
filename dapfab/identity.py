"""Connection identity: what decides who dapfab talks to over SSH and how it checks them
(docs/design.md §10), the one key under which connections are shared.

Two runner configs with the same identity share SSH connections, whatever their VM,
project or kubectl defaults. The identity is made of the raw settings (management host,
gateway, key, known_hosts file, host-key policy, connect timeout) and the content of the
files that decide the hops and their keys (the ssh_config files Fabric reads, and
known_hosts): an edited known_hosts (a new ``@revoked`` line) is a new identity, so a
connection checked against the old file is never handed out again, also when the edit kept
the file's inode, size and modification time (a user can set the latter back; the content
digest has no clock tick in which a second write goes unseen, as a change time has). Nothing
here resolves ssh_config or imports paramiko or Fabric: computing an identity reads a few
small files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dapfab.compat import SSH_CONFIG_FILES
from dapfab.thin import stamp

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

FileStamp = tuple[str, str]  # path, what it holds (see dapfab.thin.stamp)


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
