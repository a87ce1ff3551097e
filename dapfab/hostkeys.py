"""Host-key checking for every SSH hop, against the user's ``known_hosts``.

Fabric builds its clients (ProxyJump hops included) with paramiko's ``AutoAddPolicy`` and
never loads ``known_hosts``; :func:`enforce` replaces that on a client. ``reject`` refuses
unknown keys, ``accept-new`` appends them (under a lock, never rewriting the file), and a
changed key is always refused (paramiko raises ``BadHostKeyException`` before any policy).

Marker lines, which paramiko does not read, are honoured as OpenSSH does, with its host
patterns (``*``, ``?``, ``!negation``, comma lists, ``[host]:port``, hashed names): a key on
an ``@revoked`` line is refused on every hop it covers and never appended; a host covered by
``@cert-authority`` is refused unless a plain line lists its key (host certificates are not
supported).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.hostkeys import HostKeyEntry

from dapfab.errors import HostKeyError


def fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """The name OpenSSH stores: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _hashed(name: str, salt: bytes | None = None) -> str:
    """OpenSSH's hashed form of a known_hosts name (``|1|salt|hmac``); a fresh salt if none."""
    salt = os.urandom(20) if salt is None else salt
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


def _make_private_dirs(directory: str) -> None:
    """Create ``directory`` and any missing parent, each 0700 (not the umask's 0755)."""
    if os.path.isdir(directory):
        return
    _make_private_dirs(os.path.dirname(directory))
    try:
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    except FileExistsError:
        pass


def append_known_host(path: str, name: str, key: Any, *, hashed: bool = False) -> None:
    """Append one OpenSSH-format line for ``key`` to ``path`` under an exclusive lock;
    missing parent directories are made 0700, as OpenSSH makes ``~/.ssh``."""
    _make_private_dirs(os.path.dirname(os.path.abspath(path)))
    entry = _hashed(name) if hashed else name
    line = f"{entry} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Keep the file line-terminated even if its last line lacks a newline.
        if os.fstat(fd).st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    line = "\n" + line
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def unknown_host_error(label: str, name: str, key: Any, known_hosts: str) -> HostKeyError:
    """The error for a key that ``known_hosts`` does not list."""
    host, _, port = name.strip("[").partition("]:")
    scan = f"ssh-keyscan {'-p ' + port + ' ' if port else ''}-t {key.get_name()} {host}"
    return HostKeyError(
        f"host key of {name} is unknown: {key.get_name()} {fingerprint(key)}",
        hop=f"ssh {label}",
        hint=f"verify that fingerprint, then add it: {scan} >> {known_hosts}; "
        "or set dap.ssh.host_key_policy: accept-new",
    )


def changed_host_error(label: str, name: str, key: Any, known_hosts: str) -> HostKeyError:
    """The error for a key that differs from the one ``known_hosts`` lists."""
    return HostKeyError(
        f"host key of {name} has CHANGED: now {key.get_name()} {fingerprint(key)}",
        hop=f"ssh {label}",
        hint=f"if the change is expected, remove the old key with "
        f"ssh-keygen -R '{name}' -f {known_hosts} and verify the new one",
    )


def revoked_host_error(label: str, name: str, key: Any, known_hosts: str) -> HostKeyError:
    """The error for a key that an ``@revoked`` line covers."""
    return HostKeyError(
        f"host key of {name} is REVOKED in {known_hosts}: {key.get_name()} {fingerprint(key)}",
        hop=f"ssh {label}",
        hint="do not connect; ask the host's administrator for its new key",
    )


def certificate_host_error(label: str, name: str, known_hosts: str) -> HostKeyError:
    """The error for a host that only an ``@cert-authority`` line covers."""
    return HostKeyError(
        f"{name} is covered by an @cert-authority line in {known_hosts}; host certificates "
        "are not supported",
        hop=f"ssh {label}",
        hint="add the host's own key as a plain known_hosts line, after verifying it",
    )


@dataclass(frozen=True)
class Marker:
    """One ``@revoked`` or ``@cert-authority`` line of a known_hosts file."""

    kind: str  # "revoked" or "cert-authority"
    patterns: str
    key_type: str
    key_data: str

    def covers(self, name: str) -> bool:
        """Whether this line's host patterns match ``name`` (OpenSSH's match_hostname)."""
        return host_patterns_match(self.patterns, name)

    def is_key(self, key: Any) -> bool:
        return self.key_data == key.get_base64()


def host_patterns_match(patterns: str, name: str) -> bool:
    """OpenSSH's rule for a known_hosts host field: a comma list of patterns with ``*`` and
    ``?``, where a matching ``!pattern`` excludes the name outright; or one hashed name."""
    if patterns.startswith("|1|"):
        try:
            salt = base64.b64decode(patterns.split("|")[2])
        except (IndexError, ValueError):
            return False
        return hmac.compare_digest(_hashed(name, salt).encode(), patterns.encode())
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        wildcard = "".join(
            ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
        )
        if re.fullmatch(wildcard, name, re.IGNORECASE | re.DOTALL):
            if negated:
                return False
            positive = True
    return positive


def read_markers(path: str) -> list[Marker]:
    """The ``@revoked`` and ``@cert-authority`` lines of ``path`` (others are skipped)."""
    markers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) >= 4 and fields[0] in ("@revoked", "@cert-authority"):
                    markers.append(Marker(fields[0][1:], fields[1], fields[2], fields[3]))
    except FileNotFoundError:
        pass
    return markers


def hash_known_hosts_wanted(ssh_config: Any) -> bool:
    """Whether the user's ssh_config says ``HashKnownHosts yes`` for this host."""
    try:
        return str(ssh_config.get("hashknownhosts", "no")).lower() == "yes"
    except AttributeError:
        return False


def enforce(
    client: Any, *, label: str, name: str, known_hosts: str, policy: str, hashed: bool
) -> None:
    """Make a paramiko ``SSHClient`` that will connect to ``name`` (as known_hosts writes
    it: ``host`` or ``[host]:port``) check host keys as the module docs say."""
    markers = [marker for marker in read_markers(known_hosts) if marker.covers(name)]
    revoked = [marker for marker in markers if marker.kind == "revoked"]

    class _Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if any(marker.is_key(key) for marker in revoked):
                raise revoked_host_error(label, hostname, key, known_hosts)
            if any(marker.kind == "cert-authority" for marker in markers):
                raise certificate_host_error(label, hostname, known_hosts)
            if policy != "accept-new":
                raise unknown_host_error(label, hostname, key, known_hosts)
            append_known_host(known_hosts, hostname, key, hashed=hashed)

    # A revoked key is left out, so that a host presenting it reaches the policy above.
    load_known_hosts(
        client.get_host_keys(), known_hosts, skip=lambda key: any(m.is_key(key) for m in revoked)
    )
    client.set_missing_host_key_policy(_Policy())


def load_known_hosts(into: Any, path: str, skip: Any = None) -> None:
    """Add every plain or hashed entry of ``path`` to a paramiko ``HostKeys``, except keys
    for which ``skip(key)`` is true.

    paramiko's own loader gives up on the whole file at the first line it cannot parse
    (``@cert-authority``, ``@revoked``, a broken line); those lines are skipped here instead.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "@")):
                    continue
                try:
                    entry = HostKeyEntry.from_line(line)
                except Exception:  # an unparsable line: OpenSSH skips it too
                    continue
                if entry is not None and entry.key is not None:
                    if skip is not None and skip(entry.key):
                        continue
                    for name in entry.hostnames:
                        into.add(name, entry.key.get_name(), entry.key)
    except FileNotFoundError:
        return
