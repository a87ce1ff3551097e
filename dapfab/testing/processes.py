"""Processes in the lab's hosts: the lab's own long-lived ones, commands run inside a host,
and what runs in each host."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapfab.testing.system import HOST_PATH, living, ns_inode, vm_processes

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab


class HostProcesses:
    """Runs commands inside the lab's hosts (``laptop``, ``bastion``, ``mgmt``, ``runner``,
    ``cluster``, a grown lab's ``mgmt2``) and finds the processes there. An sshd host's
    commands enter its namespace holder (home on /root); the runner's go through the backend."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._children: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start a long-lived lab process detached from the caller's session and terminal."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, **kwargs)
        finally:
            if log:
                out.close()
        self._children.append(proc)
        return proc

    def reap(self) -> None:
        """Collect the spawned processes that have ended."""
        for proc in list(self._children):
            if proc.poll() is not None:
                self._children.remove(proc)

    def command(self, host: str, argv: Sequence[str] | str) -> list[str]:
        """The argv that runs ``argv`` (or shell code) inside ``host`` from the laptop."""
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        if host == "laptop":
            return list(argv)
        if host == "runner":
            return self.lab.backend.command(argv)
        holders = self.lab.state()["holders"]
        if host in holders:
            return ["nsenter", "-t", str(holders[host]), "-m", "-n", "--wd=/root", "--", *argv]
        return ["nsenter", f"--net=/run/netns/{self.lab.net.netns(host)}", "--", *argv]

    def host_env(self, host: str) -> dict[str, str] | None:
        """The environment of commands in ``host`` (None on the laptop: the caller's)."""
        if host == "laptop":
            return None
        if host == "runner":
            return self.lab.backend.env()
        return {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}

    def run(self, host: str, argv: Sequence[str] | str, *, via_netns: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command inside ``host`` (with ``via_netns``: in its network namespace only);
        defaults: captured text output, 60 s timeout, the host's environment."""
        if via_netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.lab.net.netns(host)}", "--",
                   *(["/bin/sh", "-c", argv] if isinstance(argv, str) else argv)]
        else:
            cmd = self.command(host, argv)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        if "env" not in kwargs:
            kwargs["env"] = self.host_env(host)
        return subprocess.run(cmd, **kwargs)

    def popen(self, host: str, argv: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen:
        """Start a command inside ``host`` in the background (the caller stops it)."""
        kwargs.setdefault("env", self.host_env(host))
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def processes(self, host: str, *, nested: bool = False) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every process in ``host``, without the lab's own holders/init.

        In the runner: those of its own PID namespace, or with ``nested`` also those of the
        PID namespaces below it (dapfab's commands run there), by the runner's network
        namespace.
        """
        if host == "runner":
            return vm_processes(self.lab.backend.init_pid(), nested=nested)
        if host == "laptop":
            net, skip = ns_inode("/proc/self/ns/net"), set()
        else:
            net = self.lab.net.inode(self.lab.net.netns(host))
            skip = set(self.lab.state()["holders"].values())
        return [(pid, argv) for pid, argv in living(lambda pid: ns_inode(f"/proc/{pid}/ns/net") == net)
                if pid not in skip]

    def running(self, host: str, word: str) -> bool:
        """Whether a process in ``host`` (in the runner: dapfab's nested PID namespaces too)
        has ``word`` in its command line."""
        return any(word in " ".join(argv) for _, argv in self.processes(host, nested=True))

    def pids(self, host: str) -> list[int]:
        """PIDs of :meth:`processes`."""
        return [pid for pid, _ in self.processes(host)]
