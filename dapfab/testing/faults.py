"""Faults tests make in the lab (cut links, frozen processes) and :meth:`Faults.reset`, which
restores everything tests change."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dapfab.testing.runners import NetnsVM
from dapfab.testing.system import LabError, vm_processes

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab


class Faults:
    """Cuts links and freezes processes, remembering them so that :meth:`reset` undoes them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._cut: dict[frozenset[str], str] = {}
        self._frozen: set[int] = set()

    def cut_link(self, a: str, b: str, mode: str = "drop") -> None:
        """Cut the link a–b: ``drop`` (default) silently drops every packet (nftables);
        ``down`` sets both ends down (new connections fail at once)."""
        ends = self.lab.net.link(a, b)
        if mode == "drop":
            host, iface = ends[1] if ends[0][0] == "laptop" else ends[0]
            rules = (f"table inet dapfab_cut_{iface} {{\n"
                     f"  chain input {{ type filter hook input priority -300; iifname \"{iface}\" drop; }}\n"
                     f"  chain output {{ type filter hook output priority -300; oifname \"{iface}\" drop; }}\n"
                     "}\n")
            done = self.lab.procs.run(host, ["nft", "-f", "-"], input=rules, via_netns=True)
            if done.returncode:
                raise LabError(f"nft on {host}: {done.stderr.strip()}")
        elif mode == "down":
            self.lab.net.set_link(ends, "down")
        else:
            raise LabError(f"unknown cut mode {mode!r} (drop or down)")
        self._cut[frozenset((a, b))] = mode

    def restore_link(self, a: str, b: str) -> None:
        """Undo :meth:`cut_link` (either mode)."""
        ends = self.lab.net.link(a, b)
        host, iface = ends[1] if ends[0][0] == "laptop" else ends[0]
        self.lab.procs.run(host, ["nft", "delete", "table", "inet", f"dapfab_cut_{iface}"],
                           via_netns=True)
        if not (host == "runner" and not self.lab.backend.running()):
            self.lab.net.set_link(ends, "up")
        self._cut.pop(frozenset((a, b)), None)

    @contextlib.contextmanager
    def link_cut(self, a: str, b: str, mode: str = "drop") -> Iterator[None]:
        """``with lab.link_cut("laptop", "bastion"): ...``"""
        self.cut_link(a, b, mode)
        try:
            yield
        finally:
            self.restore_link(a, b)

    def freeze(self, pid: int) -> None:
        """SIGSTOP ``pid`` (a frozen process: no reply, nothing closed)."""
        os.kill(pid, signal.SIGSTOP)
        self._frozen.add(pid)

    def thaw(self, pid: int) -> None:
        """SIGCONT a process :meth:`freeze` stopped."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self._frozen.discard(pid)

    def forget(self) -> None:
        """Forget the cut links and frozen processes (the lab is gone)."""
        self._cut.clear()
        self._frozen.clear()

    def reset(self) -> None:
        """Restore what tests change: links, frozen processes, sshd, runner, incus; and
        stop keepers (a test's keeper never serves the next test)."""
        lab = self.lab
        lab.stop_keepers()
        for pid in list(self._frozen):
            self.thaw(pid)
        for pair in list(self._cut):
            self.restore_link(*sorted(pair))
        for host in lab.state()["holders"]:
            lab.sshd.start_sshd(host)
        if not lab.backend.running():
            lab.backend.start()
        lab.backend.restore_client()
        # Orphans a test left on purpose (the incus semantics tests) must not count
        # against the next test's "nothing leaked" checks.
        strays = [pid for host in lab.state()["holders"] if host.startswith("mgmt")
                  for pid, argv in lab.procs.processes(host)
                  if "incus" in argv[0] or argv[0].endswith(lab.incus)]
        strays += [pid for pid, _ in lab.procs.processes("runner")]
        strays += self._restart_grown()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _restart_grown(self) -> list[int]:
        """Start the grown lab's stopped VMs and containers (``dapfab.testing.fleet``); the
        PIDs of what tests left in them."""
        lab, left = self.lab, []
        for record in lab.state().get("fleet", {}).values():
            if record["key"]:
                vm = NetnsVM.of(lab, record)
                vm.start()
                left += vm_processes(vm.init_pid())
            elif record["vm"] != lab.vm_name:
                lab.backend.start_container(record["vm"])
                left += vm_processes(lab.backend.container_init(record["vm"]))
        return [pid for pid, _ in left]
