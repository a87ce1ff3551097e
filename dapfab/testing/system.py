"""What the lab's parts share: its error, ``ip``, waiting, and processes read from /proc."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSCTLS = ("{ echo 0 > /proc/sys/net/ipv4/ip_forward; "
           "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
           "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; } 2>/dev/null; true")


class LabError(RuntimeError):
    """The lab could not be built, or a lab operation failed."""


def ip(*args: str, batch: Sequence[str] | None = None, netns: str | None = None,
       check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip`` (in ``netns`` if given); ``batch`` lines go through ``ip -batch -``."""
    argv = ["ip"] + (["-n", netns] if netns else [])
    argv += ["-batch", "-"] if batch is not None else list(args)
    done = subprocess.run(argv, input="\n".join(batch or ()) + "\n", capture_output=True,
                          text=True)
    if check and done.returncode:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; :class:`LabError` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def ns_inode(path: str) -> str | None:
    """The namespace a ``/proc/<pid>/ns/*`` link names (``net:[4026531840]``), or None."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def all_processes() -> Iterator[int]:
    """Every PID in /proc."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _pid_ns_depth(pid: int | None) -> int:
    """How many PID namespaces ``pid`` is nested in (1 for the machine's own), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        pass
    return 0


def _argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def living(wanted: Callable[[int], bool]) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every living process for which ``wanted(pid)`` holds."""
    found = []
    for pid in all_processes():
        if wanted(pid):
            argv = _argv(pid)
            if argv and alive(pid):
                found.append((pid, argv))
    return found


def vm_processes(init: int | None, *, nested: bool = False) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process in the VM whose PID 1 is ``init`` (not PID 1 itself):
    those of its PID namespace, or with ``nested`` also those of the PID namespaces below
    it (dapfab's commands run there), found by the VM's network namespace. [] when stopped."""
    if not init:
        return []
    if not nested:
        pidns = ns_inode(f"/proc/{init}/ns/pid")
        found = living(lambda pid: ns_inode(f"/proc/{pid}/ns/pid") == pidns)
    else:
        net, depth = ns_inode(f"/proc/{init}/ns/net"), _pid_ns_depth(init)
        found = living(lambda pid: ns_inode(f"/proc/{pid}/ns/net") == net
                       and _pid_ns_depth(pid) >= depth)  # not the lab's unshare above it
    return [(pid, argv) for pid, argv in found if pid != init]


def alive(pid: int | None) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
