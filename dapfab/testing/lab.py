"""The lab of docs/design.md §8: hosts are network namespaces joined by veth pairs.

::

    laptop (root ns) --- bastion --- mgmt ===instance bridge=== runner --- cluster
       dfl{N}-eth      eth0   eth1   eth0   incusbr0       eth0   eth1     eth0

Lab ``N`` (0..15) names everything it creates with the prefix ``dfl{N}-`` and uses the
addresses 198.18.{16N}.0/20 (RFC 2544 benchmarking range): no default routes, no forwarding,
and an ``unreachable`` route for the block on the laptop, so nothing leaves the machine and a
connection to a host the laptop has no link to fails at once. bastion and mgmt run the real
``/usr/sbin/sshd``, each in a private mount namespace where the lab's own home directory is
bind-mounted on ``/root`` (a clean login environment, no system user); mgmt also sees the
lab's ``bin`` directory on ``/usr/local/sbin``, which holds the runner backend's client
(``incus``). The runner is provided by a backend (``netns`` or ``lxd``, see
:data:`dapfab.testing.runners.BACKENDS`). The cluster, when ``dapfab.testing.cluster``
exists, runs in its own namespace, reachable from the runner only.

State lives in ``/run/dapfab-lab{N}``; :meth:`Lab.down` removes it with every namespace,
veth, route and process of the lab, and :meth:`Lab.up` first removes whatever a killed run
left behind.

:class:`Lab` is the one entry point; its parts, each in its own module:

- ``lab.net`` (:class:`~dapfab.testing.network.Network`): namespaces, addresses, links;
- ``lab.sshd`` (:class:`~dapfab.testing.sshd.SshHosts`): the sshd hosts, keys, known_hosts;
- ``lab.backend`` (:class:`~dapfab.testing.runners.RunnerBackend`): the runner VM;
- ``lab.procs`` (:class:`~dapfab.testing.processes.HostProcesses`): commands and processes
  in the hosts;
- ``lab.faults`` (:class:`~dapfab.testing.faults.Faults`): cut links, frozen processes, reset;
- ``lab.lifecycle`` (:class:`~dapfab.testing.lifecycle.Lifecycle`): up, down, status;
- ``lab.statefile`` (:class:`~dapfab.testing.statefile.StateFile`): the recorded PIDs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dapfab.testing.faults import Faults
from dapfab.testing.lifecycle import Lifecycle, cluster_available
from dapfab.testing.network import Network
from dapfab.testing.processes import HostProcesses
from dapfab.testing.runners import BACKENDS, RunnerBackend, load_backend
from dapfab.testing.sshd import SshHosts
from dapfab.testing.statefile import StateFile
from dapfab.testing.system import LabError, alive, wait_for

MAX_LAB_ID = 15


class Lab:
    """One lab: ``Lab(lab_id=None, backend=None)``; defaults from ``DAPFAB_LAB_ID`` (0) and
    ``DAPFAB_LAB_BACKEND`` (``netns``). ``cluster`` (default: ``DAPFAB_LAB_CLUSTER`` unless
    ``0``, and only when :mod:`dapfab.testing.cluster` exists) starts the cluster."""

    def __init__(self, lab_id: int | None = None, backend: str | None = None,
                 cluster: bool | None = None) -> None:
        if lab_id is None:
            lab_id = int(os.environ.get("DAPFAB_LAB_ID") or 0)
        if not 0 <= int(lab_id) <= MAX_LAB_ID:
            raise LabError(f"lab id must be 0..{MAX_LAB_ID}, not {lab_id}")
        self.lab_id = int(lab_id)
        self.prefix = f"dfl{self.lab_id}-"
        self.state_dir = Path(f"/run/dapfab-lab{self.lab_id}")
        self.backend_name = backend or os.environ.get("DAPFAB_LAB_BACKEND") or "netns"
        if self.backend_name not in BACKENDS:
            raise LabError(f"unknown lab backend {self.backend_name!r} (one of {', '.join(BACKENDS)})")
        if cluster is None:
            cluster = os.environ.get("DAPFAB_LAB_CLUSTER", "1") != "0"
        self.cluster_enabled = bool(cluster) and cluster_available()
        # dap.ssh.persist for the lab's config and env: 0 (no keeper) unless the run asks
        # for keepers (CI runs the core tests both ways).
        self.persist = os.environ.get("DAPFAB_LAB_PERSIST") or "0"
        self.statefile = StateFile(self.lab_id, self.state_dir)
        self.net = Network(self)
        self.procs = HostProcesses(self)
        self.sshd = SshHosts(self)
        self.faults = Faults(self)
        self.lifecycle = Lifecycle(self)
        self.backend: RunnerBackend = load_backend(self, self.backend_name)

    # -- what dapfab needs to reach the lab ------------------------------------------------

    def address(self, host: str, peer: str | None = None) -> str:
        """The address of ``host`` (on its link to ``peer``; default: the one others use)."""
        return self.net.address(host, peer)

    @property
    def cluster_address(self) -> str:
        """The cluster's address (the API server's and the demo pods' node address)."""
        return self.net.address("cluster")

    def netns(self, host: str) -> str:
        """The network namespace name of ``host`` (not for the laptop: the root namespace)."""
        return self.net.netns(host)

    @property
    def ssh_host(self) -> str:
        """Fabric host string of the management host."""
        return f"root@{self.address('mgmt')}"

    @property
    def gateway(self) -> str:
        """Fabric host string of the bastion."""
        return f"root@{self.address('bastion')}"

    @property
    def ssh_key(self) -> str:
        """The private key every lab host accepts for root."""
        return str(self.state_dir / "id_ed25519")

    @property
    def known_hosts(self) -> str:
        """The known_hosts file with the sshd hosts' keys."""
        return str(self.state_dir / "known_hosts")

    @property
    def ssh_config(self) -> str:
        """An ssh_config for ``ssh -F``: Host ``bastion`` and ``mgmt`` (ProxyJump bastion)."""
        return str(self.state_dir / "ssh_config")

    @property
    def runtime_config(self) -> str:
        """The runtime config file for ``inv -f``."""
        return str(self.state_dir / "invoke.yaml")

    @property
    def vm_name(self) -> str:
        """The runner VM's name, as the client on mgmt knows it."""
        return self.backend.vm_name

    @property
    def incus(self) -> str:
        """The client's name on mgmt (``incus``; ``lxc`` for the LXD backend)."""
        return self.backend.client

    def env(self) -> dict[str, str]:
        """The ``DAP_*`` variables that point dapfab at this lab."""
        return {
            "DAP_RUNNER_SSH_HOST": self.ssh_host,
            "DAP_RUNNER_SSH_KEY": self.ssh_key,
            "DAP_RUNNER_SSH_GATEWAY": self.gateway,
            "DAP_RUNNER_VM": self.vm_name,
            "DAP_RUNNER_INCUS": self.incus,
            "DAP_SSH_KNOWN_HOSTS": self.known_hosts,
            "DAP_SSH_PERSIST": self.persist,
            "XDG_RUNTIME_DIR": str(self.runtime_dir()),
        }

    def export_lines(self) -> str:
        """``export K=V`` lines for a POSIX shell."""
        from shlex import quote

        return "".join(f"export {k}={quote(v)}\n" for k, v in self.env().items())

    def runtime_dir(self) -> Path:
        """The XDG_RUNTIME_DIR of dapfab calls against this lab: their keepers live there."""
        path = self.state_dir / "xdg"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def keepers(self) -> list[int]:
        """PIDs of the keepers serving calls against this lab (from their lock files)."""
        pids = []
        for lock in (self.state_dir / "xdg" / "dapfab").glob("*.lock"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(lock.read_text().split()[0])
                if b"dapfab.keeper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def stop_keepers(self) -> None:
        """Kill this lab's keepers (processes dapfab started for its tests) and wait."""
        pids = self.keepers()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in pids), 10, "the lab's keepers to end")

    # -- the parts' operations, as tests and bench/ use them -------------------------------

    def up(self) -> float:
        """Build the lab (removing a stale one of the same id first); return the seconds taken."""
        return self.lifecycle.up()

    def down(self) -> None:
        """Remove everything of this lab id: processes, namespaces, veths, routes, files."""
        self.lifecycle.down()

    def status(self) -> dict[str, Any]:
        """What is up: namespaces, sshd and runner state, addresses."""
        return self.lifecycle.status()

    def state(self) -> dict[str, Any]:
        """The lab's recorded PIDs (loaded from the state dir when another process built it)."""
        return self.statefile.data()

    def run(self, host: str, argv: Sequence[str] | str, *, via_netns: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command inside ``host`` (:meth:`HostProcesses.run`)."""
        return self.procs.run(host, argv, via_netns=via_netns, **kwargs)

    def popen(self, host: str, argv: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen:
        """Start a command inside ``host`` in the background (the caller stops it)."""
        return self.procs.popen(host, argv, **kwargs)

    def processes(self, host: str, *, nested: bool = False) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every process in ``host`` (:meth:`HostProcesses.processes`)."""
        return self.procs.processes(host, nested=nested)

    def running(self, host: str, word: str) -> bool:
        """Whether a process in ``host`` has ``word`` in its command line."""
        return self.procs.running(host, word)

    def pids(self, host: str) -> list[int]:
        """PIDs of :meth:`processes`."""
        return self.procs.pids(host)

    def known_hosts_line(self, host: str) -> str:
        """``host``'s line for the lab's known_hosts: its address and host key."""
        return self.sshd.known_hosts_line(host)

    def sshd_pid(self, host: str) -> int | None:
        """PID of the listening sshd of ``host`` (None when stopped)."""
        return self.sshd.sshd_pid(host)

    def stop_sshd(self, host: str) -> None:
        """Stop ``host``'s listening sshd; existing sessions keep running (as on a real host)."""
        self.sshd.stop_sshd(host)

    def start_sshd(self, host: str) -> None:
        """Start ``host``'s sshd again (nothing when it runs)."""
        self.sshd.start_sshd(host)

    def stop_runner(self) -> None:
        """Stop the runner VM: every process in it dies; incus says it is not running."""
        self.backend.stop()

    def start_runner(self) -> None:
        """Start the runner VM again."""
        self.backend.start()

    def remove_incus(self) -> None:
        """Take the incus client off mgmt (``command not found``)."""
        self.backend.remove_client()

    def restore_incus(self) -> None:
        """Put the incus client back on mgmt."""
        self.backend.restore_client()

    def cut_link(self, a: str, b: str, mode: str = "drop") -> None:
        """Cut the link a–b: ``drop`` (default) silently drops every packet (nftables);
        ``down`` sets both ends down (new connections fail at once)."""
        self.faults.cut_link(a, b, mode)

    def restore_link(self, a: str, b: str) -> None:
        """Undo :meth:`cut_link` (either mode)."""
        self.faults.restore_link(a, b)

    def link_cut(self, a: str, b: str, mode: str = "drop") -> contextlib.AbstractContextManager[None]:
        """``with lab.link_cut("laptop", "bastion"): ...``"""
        return self.faults.link_cut(a, b, mode)

    def freeze(self, pid: int) -> None:
        """SIGSTOP ``pid`` (a frozen process: no reply, nothing closed)."""
        self.faults.freeze(pid)

    def thaw(self, pid: int) -> None:
        """SIGCONT a process :meth:`freeze` stopped."""
        self.faults.thaw(pid)

    def reset(self) -> None:
        """Restore what tests change: links, frozen processes, sshd, runner, incus; and
        stop keepers (a test's keeper never serves the next test)."""
        self.faults.reset()
