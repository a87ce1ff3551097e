"""The lab's runner VMs: the backends that provide the runner and the client on mgmt that
reaches it, and the network-namespace VM of the ``netns`` backend (and a grown lab)."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapfab.testing.system import HOST_PATH, SYSCTLS, LabError, alive, ip, wait_for

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab

# The system Python runs the runner's PID 1 and the incus program: the hosts' /root (and a
# pyenv in it) is private, and its start-up is on the benchmark path.
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # the runner's own, as in a real VM
BACKENDS = {
    "netns": "dapfab.testing.runners:NetnsRunner",
    "lxd": "dapfab.testing.lxd:LxdRunner",
}


def load_backend(lab: Lab, name: str) -> RunnerBackend:
    """The backend ``name`` (a key of :data:`BACKENDS`) for ``lab``."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(lab)


class RunnerBackend:
    """How the lab provides the runner VM and the client on mgmt that reaches it.

    A backend creates the runner, its links to mgmt (the instance bridge) and to the
    cluster, and installs its client on mgmt (in ``lab.state_dir/'mgmt'/'bin'``, which mgmt
    sees on ``/usr/local/sbin``).
    """

    name = ""
    client = "incus"
    vm_name = "lab-runner"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def up(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        """Clean what killing the lab's processes and namespaces does not (idempotent)."""

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        raise NotImplementedError

    def init_pid(self) -> int | None:
        """The PID (on this machine) of the runner's PID 1, if it runs."""
        pid = self.lab.state().get("runner_init")
        return pid if alive(pid) else None

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` as root inside the runner, from the laptop."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {"PATH": HOST_PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8"}

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        raise NotImplementedError

    @property
    def client_path(self) -> Path:
        return self.lab.state_dir / "mgmt" / "bin" / self.client

    def remove_client(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.client_path.rename(self.lab.state_dir / "mgmt" / f"{self.client}.removed")

    def restore_client(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.lab.state_dir / "mgmt" / f"{self.client}.removed").rename(self.client_path)


RUNNER_INIT = """\
# PID 1 of the lab's runner VM: reaps orphans until SIGTERM/SIGINT
import os, signal
wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    if signal.sigwaitinfo(wanted).si_signo != signal.SIGCHLD:
        raise SystemExit(0)
"""


def install_incus(lab: Lab, host: str) -> None:
    """Install the lab's ``incus`` (:mod:`dapfab.testing.incus`) on ``host``'s PATH, reading
    that host's instance table."""
    source = (Path(__file__).parent / "incus.py").read_text()
    table = str(lab.state_dir / host / "instances")
    source = source.replace('INSTANCES_FILE = ""', f"INSTANCES_FILE = {table!r}", 1)
    path = lab.state_dir / host / "bin" / "incus"
    path.write_text(f"#!{HOST_PYTHON} -I\n{source}")
    path.chmod(0o755)


class NetnsVM:
    """One runner VM as namespaces: net, mount (its home on /root, its own /proc and temp
    directories), pid, uts. Its PID 1 is a small reaper, so orphans are adopted inside the
    VM as on a real one; stopping the VM kills that PID 1 and with it every process in it.

    ``key`` names its directory under the lab's state and its PIDs in the lab's state;
    its line in ``host``'s instance table is what that host's ``incus`` sees. ``routes``
    (``ip route`` arguments) are added each time it starts, its links being up again.
    """

    def __init__(self, lab: Lab, name: str, host: str, key: str, netns: str, address: str,
                 routes: Sequence[str] = ()) -> None:
        self.lab, self.name, self.host, self.key = lab, name, host, key
        self.netns, self.address, self.routes = netns, address, list(routes)

    @classmethod
    def of(cls, lab: Lab, record: dict[str, Any]) -> NetnsVM:
        """The VM a grown lab recorded (``dapfab.testing.fleet``)."""
        return cls(lab, record["vm"], record["host"], record["key"], f"{lab.prefix}{record['key']}",
                   record["address"], record["routes"])

    @property
    def dir(self) -> Path:
        return self.lab.state_dir / self.key

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def make_home(self) -> None:
        self.home.mkdir(mode=0o700, parents=True)
        (self.home / ".kube").mkdir(mode=0o700)

    def init_pid(self) -> int | None:
        """The PID (on this machine) of the VM's PID 1, if it runs."""
        pid = self.lab.state().get(f"{self.key}_init")
        return pid if alive(pid) else None

    def running(self) -> bool:
        return self.init_pid() is not None

    def _write_instance(self, state: str, pid: int | None) -> None:
        table = self.lab.state_dir / self.host / "instances"
        lines = table.read_text().splitlines() if table.exists() else []
        lines = [line for line in lines if line.split()[:1] != [self.name]]
        lines.append(f"{self.name} default {state} {pid or 0} {self.address}")
        tmp = table.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(table)

    def start(self) -> None:
        if self.running():
            return
        lab = self.lab
        ready = self.dir / "init.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        init_file = self.dir / "init.py"
        init_file.write_text(RUNNER_INIT)
        # A VM's own temp directories, not the machine's: what dapfab leaves there is seen.
        temp = " && ".join(f"mount -t tmpfs -o mode=1777,size=256m tmpfs {d}" for d in TEMP_DIRS)
        script = (f'mount --bind "{self.home}" /root && {temp}'
                  f' && echo "{self.name}" > /proc/sys/kernel/hostname'
                  f' && {SYSCTLS} && : > "{ready}" && exec "$0" -I "$1" "{self.name}"')
        proc = lab.procs.spawn(["ip", "netns", "exec", self.netns, "unshare", "--pid", "--fork",
                           "--mount-proc", "--uts", "--", "/bin/sh", "-c", script, HOST_PYTHON,
                           str(init_file)], log=self.dir / "init.log")
        wait_for(lambda: ready.exists() or proc.poll() is not None, 10, f"{self.name}'s init")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        wait_for(lambda: proc.poll() is not None or children.read_text().strip(), 10,
                  f"{self.name}'s PID 1")
        if proc.poll() is not None:
            raise LabError(f"{self.name}'s init exited: {(self.dir / 'init.log').read_text()}")
        init = int(children.read_text().split()[0])
        lab.state()[f"{self.key}_init"] = init
        lab.state()[f"{self.key}_unshare"] = proc.pid
        lab.statefile.save()
        ip(netns=self.netns, batch=["link set eth0 up", "link set eth1 up",
                                    *(f"route replace {route}" for route in self.routes)])
        self._write_instance("RUNNING", init)

    def stop(self) -> None:
        init = self.init_pid()
        if init:
            os.kill(init, signal.SIGKILL)
            unshare = self.lab.state().get(f"{self.key}_unshare")
            wait_for(lambda: not alive(init) and not alive(unshare), 10, f"{self.name} to stop")
            self.lab.procs.reap()
        self.lab.state()[f"{self.key}_init"] = None
        self.lab.statefile.save()
        ip(netns=self.netns, batch=["link set eth0 down", "link set eth1 down"])
        self._write_instance("STOPPED", None)

    def command(self, argv: Sequence[str]) -> list[str]:
        init = self.init_pid()
        if not init:
            raise LabError(f"{self.name} is not running")
        return ["nsenter", "-t", str(init), "-m", "-n", "-p", "-u", "--wd=/root", "--", *argv]

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        if not path.startswith("/root/"):
            raise LabError(f"a netns VM can only be written under /root, not {path}")
        target = self.home / path[len("/root/"):]
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)


class NetnsRunner(RunnerBackend):
    """The runner as a :class:`NetnsVM`; the ``incus`` client on mgmt is
    :mod:`dapfab.testing.incus`."""

    name = "netns"

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.vm = NetnsVM(lab, self.vm_name, "mgmt", "runner", lab.netns("runner"),
                          lab.address("runner"))

    def up(self) -> None:
        lab, a = self.lab, self.lab.net.addresses
        ns, mgmt, cluster = lab.netns("runner"), lab.netns("mgmt"), lab.netns("cluster")
        self.vm.make_home()
        ip("netns", "add", ns)
        ip(netns=mgmt, batch=[f"link add incusbr0 type veth peer name eth0 netns {ns}",
                              f"addr add {a['mgmt@runner']} dev incusbr0", "link set incusbr0 up"])
        ip(netns=ns, batch=["link set lo up", f"addr add {a['runner@mgmt']} dev eth0",
                            f"link add eth1 type veth peer name eth0 netns {cluster}",
                            f"addr add {a['runner@cluster']} dev eth1"])
        ip(netns=cluster, batch=[f"addr add {a['cluster@runner']} dev eth0", "link set eth0 up"])
        install_incus(lab, "mgmt")
        self.start()

    def init_pid(self) -> int | None:
        return self.vm.init_pid()

    def running(self) -> bool:
        return self.vm.running()

    def start(self) -> None:
        self.vm.start()

    def stop(self) -> None:
        self.vm.stop()

    def command(self, argv: Sequence[str]) -> list[str]:
        return self.vm.command(argv)

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self.vm.write_file(path, data, mode)
