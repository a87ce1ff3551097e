"""Helpers for the lab's own tests."""

from __future__ import annotations

import subprocess

PYTHON = "/usr/bin/python3"  # present in every host; /root (and pyenv) is private there

PROBE = """
import errno, socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except socket.timeout:
    print("timeout")
except OSError as err:
    print({errno.ECONNREFUSED: "refused", errno.ENETUNREACH: "unreachable",
           errno.EHOSTUNREACH: "unreachable"}.get(err.errno, errno.errorcode.get(err.errno)))
"""


def probe(lab, host: str, address: str, port: int = 9, timeout: float = 3.0) -> str:
    """Connect from ``host`` to address:port: open, refused, unreachable or timeout."""
    done = lab.run(host, [PYTHON, "-I", "-c", PROBE, address, str(port), str(timeout)], check=True)
    return done.stdout.strip()


def ssh(lab, host: str, command: str, **kwargs) -> subprocess.CompletedProcess:
    """The real OpenSSH client with the lab's ssh_config."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(["ssh", "-F", lab.ssh_config, host, command], **kwargs)


def find(lab, host: str, marker: str) -> list[tuple[int, list[str]]]:
    """Processes in ``host`` whose argv mentions ``marker``."""
    return [(pid, argv) for pid, argv in lab.processes(host) if any(marker in a for a in argv)]


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
