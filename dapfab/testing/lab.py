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
(``incus``). The runner is provided by a backend (:class:`NetnsRunner` here; an LXD one can
plug in through :data:`BACKENDS`). The cluster, when ``dapfab.testing.cluster`` exists, runs in
its own namespace, reachable from the runner only.

State lives in ``/run/dapfab-lab{N}``; :meth:`Lab.down` removes it with every namespace,
veth, route and process of the lab, and :meth:`Lab.up` first removes whatever a killed run
left behind.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HOSTS = ("laptop", "bastion", "mgmt", "runner", "cluster", "mgmt2")  # mgmt2: a grown lab
SSHD_HOSTS = ("bastion", "mgmt")
MAX_LAB_ID = 15
SSHD = "/usr/sbin/sshd"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLUSTER_PORT = 6443
# The system Python runs the runner's PID 1 and the incus program: the hosts' /root (and a
# pyenv in it) is private, and its start-up is on the benchmark path.
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CLUSTER_TIMEOUT = 30.0
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # the runner's own, as in a real VM
BACKENDS = {
    "netns": "dapfab.testing.lab:NetnsRunner",
    "lxd": "dapfab.testing.lxd:LxdRunner",
}


class LabError(RuntimeError):
    """The lab could not be built, or a lab operation failed."""


def _ip(*args: str, batch: Sequence[str] | None = None, netns: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip`` (in ``netns`` if given); ``batch`` lines go through ``ip -batch -``."""
    argv = ["ip"] + (["-n", netns] if netns else [])
    argv += ["-batch", "-"] if batch is not None else list(args)
    done = subprocess.run(argv, input="\n".join(batch or ()) + "\n", capture_output=True,
                          text=True)
    if check and done.returncode:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _ns_inode(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _all_processes() -> Iterator[int]:
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


def _living(wanted: Callable[[int], bool]) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every living process for which ``wanted(pid)`` holds."""
    found = []
    for pid in _all_processes():
        if wanted(pid):
            argv = _argv(pid)
            if argv and _alive(pid):
                found.append((pid, argv))
    return found


def vm_processes(init: int | None, *, nested: bool = False) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process in the VM whose PID 1 is ``init`` (not PID 1 itself):
    those of its PID namespace, or with ``nested`` also those of the PID namespaces below
    it (dapfab's commands run there), found by the VM's network namespace. [] when stopped."""
    if not init:
        return []
    if not nested:
        pidns = _ns_inode(f"/proc/{init}/ns/pid")
        found = _living(lambda pid: _ns_inode(f"/proc/{pid}/ns/pid") == pidns)
    else:
        net, depth = _ns_inode(f"/proc/{init}/ns/net"), _pid_ns_depth(init)
        found = _living(lambda pid: _ns_inode(f"/proc/{pid}/ns/net") == net
                        and _pid_ns_depth(pid) >= depth)  # not the lab's unshare above it
    return [(pid, argv) for pid, argv in found if pid != init]


def _alive(pid: int | None) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


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
        self.block = ipaddress.ip_network(f"198.18.{16 * self.lab_id}.0/20")
        self.addresses = self._addresses()
        module, _, cls = BACKENDS[self.backend_name].partition(":")
        self.backend: RunnerBackend = getattr(importlib.import_module(module), cls)(self)
        self._children: list[subprocess.Popen] = []
        self._cut: dict[frozenset[str], str] = {}
        self._frozen: set[int] = set()
        self._state: dict[str, Any] | None = None
        # dap.ssh.persist for the lab's config and env: 0 (no keeper) unless the run asks
        # for keepers (CI runs the core tests both ways).
        self.persist = os.environ.get("DAPFAB_LAB_PERSIST") or "0"

    # -- addresses and names -------------------------------------------------------------

    def _addresses(self) -> dict[str, str]:
        """Every address of the lab, ``"<host>@<peer>"`` -> ``"a.b.c.d/len"``."""
        o = 16 * self.lab_id
        return {
            "laptop@bastion": f"198.18.{o}.1/24", "bastion@laptop": f"198.18.{o}.2/24",
            "bastion@mgmt": f"198.18.{o + 1}.1/24", "mgmt@bastion": f"198.18.{o + 1}.2/24",
            "bastion@mgmt2": f"198.18.{o + 3}.1/24", "mgmt2@bastion": f"198.18.{o + 3}.2/24",
            "mgmt@runner": f"198.18.{o + 2}.1/24", "runner@mgmt": f"198.18.{o + 2}.2/24",
            "runner@cluster": f"198.18.{o + 8}.1/21", "cluster@runner": f"198.18.{o + 8}.2/21",
        }

    def address(self, host: str, peer: str | None = None) -> str:
        """The address of ``host`` (on its link to ``peer``; default: the one others use)."""
        default_peer = {"laptop": "bastion", "bastion": "laptop", "mgmt": "bastion",
                        "mgmt2": "bastion", "runner": "mgmt", "cluster": "runner"}
        return self.addresses[f"{host}@{peer or default_peer[host]}"].split("/")[0]

    @property
    def cluster_network(self) -> ipaddress.IPv4Network:
        """The cluster's network: the cluster may add any of these addresses to its eth0."""
        return ipaddress.ip_network(self.addresses["cluster@runner"], strict=False)

    @property
    def cluster_address(self) -> str:
        return self.address("cluster")

    def netns(self, host: str) -> str:
        """The network namespace name of ``host`` (not for the laptop: the root namespace)."""
        if host not in HOSTS or host == "laptop":
            raise LabError(f"no namespace for host {host!r}")
        return f"{self.prefix}{host}"

    @property
    def laptop_interface(self) -> str:
        return f"{self.prefix}eth"

    def links(self) -> dict[frozenset[str], tuple[tuple[str, str], tuple[str, str]]]:
        """Each link: {a, b} -> ((a, interface of a), (b, interface of b))."""
        return {
            frozenset(("laptop", "bastion")): (("laptop", self.laptop_interface), ("bastion", "eth0")),
            frozenset(("bastion", "mgmt")): (("bastion", "eth1"), ("mgmt", "eth0")),
            frozenset(("bastion", "mgmt2")): (("bastion", "eth2"), ("mgmt2", "eth0")),
            frozenset(("mgmt", "runner")): (("mgmt", "incusbr0"), ("runner", "eth0")),
            frozenset(("runner", "cluster")): (("runner", "eth1"), ("cluster", "eth0")),
        }

    # -- what dapfab needs to reach the lab ------------------------------------------------

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
        return str(self.state_dir / "id_ed25519")

    @property
    def known_hosts(self) -> str:
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
        _wait_for(lambda: not any(_alive(pid) for pid in pids), 10, "the lab's keepers to end")

    def export_lines(self) -> str:
        """``export K=V`` lines for a POSIX shell."""
        from shlex import quote

        return "".join(f"export {k}={quote(v)}\n" for k, v in self.env().items())

    # -- up / down ---------------------------------------------------------------------

    def up(self) -> float:
        """Build the lab (removing a stale one of the same id first); return the seconds taken."""
        start = time.monotonic()
        if self.exists():
            self.down()
        try:
            self._up()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return time.monotonic() - start

    def _up(self) -> None:
        state = self.state_dir
        state.mkdir(mode=0o700)
        for host in SSHD_HOSTS:
            (state / host / "home" / ".ssh").mkdir(mode=0o700, parents=True)
        (state / "mgmt" / "bin").mkdir(mode=0o755)
        keygens = [self._keygen(state / "id_ed25519", "dapfab-lab")]
        keygens += [self._keygen(state / h / "ssh_host_ed25519_key", f"root@{h}") for h in SSHD_HOSTS]
        self._state = {"lab_id": self.lab_id, "backend": self.backend_name, "holders": {},
                       "sshd": {}, "cluster": None}
        self._network()
        holders = {host: self._start_holder(host) for host in SSHD_HOSTS}
        for proc in keygens:
            if proc.wait():
                raise LabError(f"ssh-keygen failed: {proc.stderr.read() if proc.stderr else ''}")
        for host in SSHD_HOSTS:
            self._write_host_files(host)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for host, (proc, ready) in holders.items():
            self._await_holder(host, proc, ready)
        for host in SSHD_HOSTS:
            self._spawn_sshd(host)
        self.backend.up()
        for host in SSHD_HOSTS:
            self._wait_sshd(host)
        self._write_client_files()
        if self.cluster_enabled:
            self._start_cluster()
        self._save()

    def _keygen(self, path: Path, comment: str) -> subprocess.Popen:
        return subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                 "-f", str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def _network(self) -> None:
        a = self.addresses
        bastion, mgmt = self.netns("bastion"), self.netns("mgmt")
        lap = self.laptop_interface
        _ip(batch=[
            f"netns add {bastion}", f"netns add {mgmt}", f"netns add {self.netns('cluster')}",
            f"link add {lap} type veth peer name eth0 netns {bastion}",
            f"addr add {a['laptop@bastion']} dev {lap}", f"link set {lap} up",
            f"route add unreachable {self.block}",
        ])
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{lap}/disable_ipv6").write_text("1")
        _ip(netns=bastion, batch=[
            "link set lo up", f"link add eth1 type veth peer name eth0 netns {mgmt}",
            f"addr add {a['bastion@laptop']} dev eth0", f"addr add {a['bastion@mgmt']} dev eth1",
            "link set eth0 up", "link set eth1 up",
        ])
        _ip(netns=mgmt, batch=["link set lo up", f"addr add {a['mgmt@bastion']} dev eth0",
                               "link set eth0 up"])
        _ip(netns=self.netns("cluster"), batch=["link set lo up"])
        for host in ("bastion", "mgmt", "cluster"):
            self.run(host, SYSCTLS, env=None, check=True, via_netns=True)

    def _start_holder(self, host: str) -> tuple[subprocess.Popen, Path]:
        """A process that keeps ``host``'s private mount namespace (home on /root)."""
        host_dir = self.state_dir / host
        ready = host_dir / "holder.ready"
        mounts = f'mount --bind "{host_dir}/home" /root'
        if host.startswith("mgmt"):
            mounts += f' && mount --bind "{host_dir}/bin" /usr/local/sbin'
        script = f'{mounts} && : > "{ready}" && exec sleep infinity'
        proc = self._spawn(["ip", "netns", "exec", self.netns(host), "/bin/sh", "-c", script],
                           log=host_dir / "holder.log")
        return proc, ready

    def _await_holder(self, host: str, proc: subprocess.Popen, ready: Path) -> None:
        """Wait for ``host``'s namespace holder (:meth:`_start_holder`) and record it."""
        _wait_for(lambda: ready.exists() or proc.poll() is not None, 10, f"{host} host")
        if proc.poll() is not None:
            raise LabError(f"{host}: namespace holder exited with {proc.returncode}")
        self.state()["holders"][host] = proc.pid
        self._save()

    def _write_host_files(self, host: str) -> None:
        """An sshd host's authorized_keys (the lab's key) and sshd_config."""
        authorized = self.state_dir / host / "home" / ".ssh" / "authorized_keys"
        authorized.write_text((self.state_dir / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        (self.state_dir / host / "sshd_config").write_text(self._sshd_config(host))

    def known_hosts_line(self, host: str) -> str:
        """``host``'s line for the lab's known_hosts: its address and host key."""
        key = (self.state_dir / host / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{self.address(host)} {' '.join(key)}\n"

    def ssh_options(self) -> str:
        """The ssh_config lines every lab host shares (user, key, known_hosts, no prompts)."""
        return (f"    User root\n    IdentityFile {self.ssh_key}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n    GlobalKnownHostsFile /dev/null\n"
                "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n")

    def _spawn(self, argv: list[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen:
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

    def _sshd_config(self, host: str) -> str:
        d = self.state_dir / host
        return (f"# dapfab lab {self.lab_id}, {host}: OpenSSH's defaults except these lines\n"
                "ListenAddress 0.0.0.0\nAddressFamily inet\n"
                f"HostKey {d}/ssh_host_ed25519_key\nPidFile {d}/sshd.pid\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "Subsystem sftp internal-sftp\n")

    def _spawn_sshd(self, host: str) -> None:
        d = self.state_dir / host
        with contextlib.suppress(FileNotFoundError):
            (d / "sshd.pid").unlink()
        holder = str(self.state()["holders"][host])
        proc = self._spawn(["nsenter", "-t", holder, "-m", "-n", "--", SSHD, "-D", "-f",
                            str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                           env={"PATH": HOST_PATH})
        self.state()["sshd"][host] = proc.pid

    def _wait_sshd(self, host: str) -> None:
        pid = self.state()["sshd"][host]
        pidfile = self.state_dir / host / "sshd.pid"
        _wait_for(lambda: pidfile.exists() or not _alive(pid), 10, f"sshd on {host}")
        if not _alive(pid):
            log = (self.state_dir / host / "sshd.log").read_text(errors="replace")[-2000:]
            raise LabError(f"sshd on {host} exited: {log}")

    def _write_client_files(self) -> None:
        state = self.state_dir
        b, m = self.address("bastion"), self.address("mgmt")
        Path(self.known_hosts).write_text("".join(self.known_hosts_line(h) for h in SSHD_HOSTS))
        Path(self.ssh_config).write_text(
            f"# dapfab lab {self.lab_id}: ssh -F {self.ssh_config} mgmt\n"
            f"Host bastion {self.prefix}bastion\n    HostName {b}\n"
            f"Host mgmt {self.prefix}mgmt\n    HostName {m}\n    ProxyJump bastion\n"
            f"Host bastion {self.prefix}bastion mgmt {self.prefix}mgmt {b} {m}\n"
            + self.ssh_options())
        r = self.env()
        Path(self.runtime_config).write_text(
            f"# dapfab lab {self.lab_id}: inv -f {self.runtime_config} k8s.kubectl -- get pods\n"
            "dap:\n  runner:\n"
            f"    ssh_host: {json.dumps(r['DAP_RUNNER_SSH_HOST'])}\n"
            f"    ssh_key: {json.dumps(r['DAP_RUNNER_SSH_KEY'])}\n"
            f"    vm: {json.dumps(r['DAP_RUNNER_VM'])}\n"
            f"    gateway: {json.dumps(r['DAP_RUNNER_SSH_GATEWAY'])}\n"
            f"    incus: {json.dumps(r['DAP_RUNNER_INCUS'])}\n"
            f"  ssh:\n    known_hosts: {json.dumps(r['DAP_SSH_KNOWN_HOSTS'])}\n"
            f"    persist: {json.dumps(r['DAP_SSH_PERSIST'])}\n")
        (state / "env.sh").write_text(self.export_lines())

    def _start_cluster(self) -> None:
        d = self.state_dir / "cluster"
        d.mkdir(exist_ok=True)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=package_root)
        proc = self._spawn(["ip", "netns", "exec", self.netns("cluster"), sys.executable, "-m",
                            "dapfab.testing.cluster", "--state-dir", str(d), "--address",
                            self.cluster_address, "--port", str(CLUSTER_PORT)],
                           log=d / "cluster.log", env=env, cwd=str(d))
        self.state()["cluster"] = proc.pid
        self._save()
        ready = d / "ready"
        _wait_for(lambda: ready.exists() or proc.poll() is not None, CLUSTER_TIMEOUT,
                  f"the cluster to create {ready} (log: {d / 'cluster.log'})")
        if proc.poll() is not None:
            log = (d / "cluster.log").read_text(errors="replace")[-3000:]
            raise LabError(f"the cluster exited with {proc.returncode}:\n{log}")
        self.backend.write_file("/root/.kube/config", (d / "kubeconfig").read_bytes())

    def exists(self) -> bool:
        """True if anything of this lab id exists (a running or a stale lab)."""
        return (self.state_dir.exists() or bool(self._lab_netns())
                or Path(f"/sys/class/net/{self.laptop_interface}").exists())

    def _lab_netns(self) -> list[str]:
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.prefix))

    def down(self) -> None:
        """Remove everything of this lab id: processes, namespaces, veths, routes, files."""
        with contextlib.suppress(Exception):
            self.stop_keepers()
        # nsfs files under /run/netns are bind mounts: stat gives the namespace's inode
        with contextlib.suppress(Exception):  # first: a backend's daemon stops cleanly
            self._built_backend().down()
        inodes = {f"net:[{os.stat(f'/run/netns/{n}').st_ino}]" for n in self._lab_netns()}
        for _ in range(50):
            pids = [p for p in _all_processes() if _ns_inode(f"/proc/{p}/ns/net") in inodes]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap()
            time.sleep(0.02)
        else:
            raise LabError(f"processes of lab {self.lab_id} would not die: {pids}")
        self._reap()
        _ip("link", "del", self.laptop_interface, check=False)
        _ip("route", "del", "unreachable", str(self.block), check=False)
        for name in self._lab_netns():
            _ip("netns", "del", name, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._state = None
        self._cut.clear()
        self._frozen.clear()

    def _built_backend(self) -> RunnerBackend:
        """The backend the lab was built with (``lab.down`` may not name it)."""
        with contextlib.suppress(LabError, ValueError, KeyError):
            name = self.state()["backend"]
            if name != self.backend_name and name in BACKENDS:
                module, _, cls = BACKENDS[name].partition(":")
                return getattr(importlib.import_module(module), cls)(self)
        return self.backend

    def _reap(self) -> None:
        for proc in list(self._children):
            if proc.poll() is not None:
                self._children.remove(proc)

    # -- state -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The lab's recorded PIDs (loaded from the state dir when another process built it)."""
        if self._state is None:
            try:
                self._state = json.loads((self.state_dir / "lab.json").read_text())
            except FileNotFoundError:
                raise LabError(f"lab {self.lab_id} is not up (run lab.up)") from None
        return self._state

    def _save(self) -> None:
        tmp = self.state_dir / "lab.json.tmp"
        tmp.write_text(json.dumps(self.state()))
        tmp.replace(self.state_dir / "lab.json")

    def status(self) -> dict[str, Any]:
        """What is up: namespaces, sshd and runner state, addresses."""
        if not self.exists():
            return {"lab_id": self.lab_id, "up": False}
        try:
            state = self.state()
        except LabError:
            return {"lab_id": self.lab_id, "up": False, "stale": True}
        sshd = {h: _alive(state["sshd"].get(h)) for h in state["holders"]}
        return {
            "lab_id": self.lab_id, "up": True, "backend": state.get("backend", self.backend_name),
            "namespaces": self._lab_netns(), "sshd": sshd,
            "runner": "RUNNING" if self._built_backend().running() else "STOPPED",
            "cluster": _alive(state.get("cluster")),
            "addresses": {h: self.address(h) for h in HOSTS},
            "ssh_config": self.ssh_config, "runtime_config": self.runtime_config,
        }

    # -- running things inside hosts ---------------------------------------------------------

    def command(self, host: str, argv: Sequence[str] | str) -> list[str]:
        """The argv that runs ``argv`` (or shell code) inside ``host`` from the laptop."""
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        if host == "laptop":
            return list(argv)
        if host == "runner":
            return self.backend.command(argv)
        if host in self.state()["holders"]:
            holder = str(self.state()["holders"][host])
            return ["nsenter", "-t", holder, "-m", "-n", "--wd=/root", "--", *argv]
        return ["nsenter", f"--net=/run/netns/{self.netns(host)}", "--", *argv]

    def host_env(self, host: str) -> dict[str, str] | None:
        if host == "laptop":
            return None
        if host == "runner":
            return self.backend.env()
        return {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}

    def run(self, host: str, argv: Sequence[str] | str, *, via_netns: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command inside ``host`` (``laptop``, ``bastion``, ``mgmt``, ``runner``,
        ``cluster``); defaults: captured text output, 60 s timeout, the host's environment."""
        if via_netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns(host)}", "--",
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
            return vm_processes(self.backend.init_pid(), nested=nested)
        if host == "laptop":
            net, skip = _ns_inode("/proc/self/ns/net"), set()
        else:
            net = f"net:[{os.stat(f'/run/netns/{self.netns(host)}').st_ino}]"
            skip = set(self.state()["holders"].values())
        return [(pid, argv) for pid, argv in _living(lambda pid: _ns_inode(f"/proc/{pid}/ns/net") == net)
                if pid not in skip]

    def running(self, host: str, word: str) -> bool:
        """Whether a process in ``host`` (in the runner: dapfab's nested PID namespaces too)
        has ``word`` in its command line."""
        return any(word in " ".join(argv) for _, argv in self.processes(host, nested=True))

    def pids(self, host: str) -> list[int]:
        """PIDs of :meth:`processes`."""
        return [pid for pid, _ in self.processes(host)]

    # -- faults ------------------------------------------------------------------------

    def _link(self, a: str, b: str) -> tuple[tuple[str, str], tuple[str, str]]:
        try:
            return self.links()[frozenset((a, b))]
        except KeyError:
            raise LabError(f"no link between {a} and {b}") from None

    def cut_link(self, a: str, b: str, mode: str = "drop") -> None:
        """Cut the link a–b: ``drop`` (default) silently drops every packet (nftables);
        ``down`` sets both ends down (new connections fail at once)."""
        ends = self._link(a, b)
        if mode == "drop":
            host, iface = ends[1] if ends[0][0] == "laptop" else ends[0]
            rules = (f"table inet dapfab_cut_{iface} {{\n"
                     f"  chain input {{ type filter hook input priority -300; iifname \"{iface}\" drop; }}\n"
                     f"  chain output {{ type filter hook output priority -300; oifname \"{iface}\" drop; }}\n"
                     "}\n")
            done = self.run(host, ["nft", "-f", "-"], input=rules, via_netns=True)
            if done.returncode:
                raise LabError(f"nft on {host}: {done.stderr.strip()}")
        elif mode == "down":
            for host, iface in ends:
                _ip("link", "set", iface, "down", netns=None if host == "laptop" else self.netns(host))
        else:
            raise LabError(f"unknown cut mode {mode!r} (drop or down)")
        self._cut[frozenset((a, b))] = mode

    def restore_link(self, a: str, b: str) -> None:
        """Undo :meth:`cut_link` (either mode)."""
        ends = self._link(a, b)
        host, iface = ends[1] if ends[0][0] == "laptop" else ends[0]
        self.run(host, ["nft", "delete", "table", "inet", f"dapfab_cut_{iface}"], via_netns=True)
        if not (host == "runner" and not self.backend.running()):
            for h, i in ends:
                _ip("link", "set", i, "up", netns=None if h == "laptop" else self.netns(h))
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
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self._frozen.discard(pid)

    def sshd_pid(self, host: str) -> int | None:
        """PID of the listening sshd of ``host`` (None when stopped)."""
        pid = self.state()["sshd"].get(host)
        return pid if _alive(pid) else None

    def stop_sshd(self, host: str) -> None:
        """Stop ``host``'s listening sshd; existing sessions keep running (as on a real host)."""
        pid = self.sshd_pid(host)
        if pid:
            os.kill(pid, signal.SIGTERM)
            _wait_for(lambda: not _alive(pid), 10, f"sshd on {host} to stop")
            self._reap()
        self.state()["sshd"][host] = None
        self._save()

    def start_sshd(self, host: str) -> None:
        if self.sshd_pid(host):
            return
        self._spawn_sshd(host)
        self._wait_sshd(host)
        self._save()

    def stop_runner(self) -> None:
        """Stop the runner VM: every process in it dies; incus says it is not running."""
        self.backend.stop()

    def start_runner(self) -> None:
        self.backend.start()

    def remove_incus(self) -> None:
        """Take the incus client off mgmt (``command not found``)."""
        self.backend.remove_client()

    def restore_incus(self) -> None:
        self.backend.restore_client()

    def reset(self) -> None:
        """Restore what tests change: links, frozen processes, sshd, runner, incus; and
        stop keepers (a test's keeper never serves the next test)."""
        self.stop_keepers()
        for pid in list(self._frozen):
            self.thaw(pid)
        for pair in list(self._cut):
            self.restore_link(*sorted(pair))
        for host in self.state()["holders"]:
            self.start_sshd(host)
        if not self.backend.running():
            self.backend.start()
        self.backend.restore_client()
        # Orphans a test left on purpose (the incus semantics tests) must not count
        # against the next test's "nothing leaked" checks.
        strays = [pid for host in self.state()["holders"] if host.startswith("mgmt")
                  for pid, argv in self.processes(host)
                  if "incus" in argv[0] or argv[0].endswith(self.incus)]
        strays += [pid for pid, _ in self.processes("runner")]
        strays += self._restart_grown()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _restart_grown(self) -> list[int]:
        """Start the grown lab's stopped VMs and containers (``dapfab.testing.fleet``); the
        PIDs of what tests left in them."""
        left = []
        for record in self.state().get("fleet", {}).values():
            if record["key"]:
                vm = NetnsVM.of(self, record)
                vm.start()
                left += vm_processes(vm.init_pid())
            elif record["vm"] != self.vm_name:
                self.backend.start_container(record["vm"])
                left += vm_processes(self.backend.container_init(record["vm"]))
        return [pid for pid, _ in left]


SYSCTLS = ("{ echo 0 > /proc/sys/net/ipv4/ip_forward; "
           "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
           "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; } 2>/dev/null; true")


def cluster_available() -> bool:
    """True once ``dapfab/testing/cluster/__main__.py`` exists."""
    return (Path(__file__).parent / "cluster" / "__main__.py").exists()


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
        return pid if _alive(pid) else None

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
        return pid if _alive(pid) else None

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
        proc = lab._spawn(["ip", "netns", "exec", self.netns, "unshare", "--pid", "--fork",
                           "--mount-proc", "--uts", "--", "/bin/sh", "-c", script, HOST_PYTHON,
                           str(init_file)], log=self.dir / "init.log")
        _wait_for(lambda: ready.exists() or proc.poll() is not None, 10, f"{self.name}'s init")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        _wait_for(lambda: proc.poll() is not None or children.read_text().strip(), 10,
                  f"{self.name}'s PID 1")
        if proc.poll() is not None:
            raise LabError(f"{self.name}'s init exited: {(self.dir / 'init.log').read_text()}")
        init = int(children.read_text().split()[0])
        lab.state()[f"{self.key}_init"] = init
        lab.state()[f"{self.key}_unshare"] = proc.pid
        lab._save()
        _ip(netns=self.netns, batch=["link set eth0 up", "link set eth1 up",
                                     *(f"route replace {route}" for route in self.routes)])
        self._write_instance("RUNNING", init)

    def stop(self) -> None:
        init = self.init_pid()
        if init:
            os.kill(init, signal.SIGKILL)
            unshare = self.lab.state().get(f"{self.key}_unshare")
            _wait_for(lambda: not _alive(init) and not _alive(unshare), 10, f"{self.name} to stop")
            self.lab._reap()
        self.lab.state()[f"{self.key}_init"] = None
        self.lab._save()
        _ip(netns=self.netns, batch=["link set eth0 down", "link set eth1 down"])
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
        lab, a = self.lab, self.lab.addresses
        ns, mgmt, cluster = lab.netns("runner"), lab.netns("mgmt"), lab.netns("cluster")
        self.vm.make_home()
        _ip("netns", "add", ns)
        _ip(netns=mgmt, batch=[f"link add incusbr0 type veth peer name eth0 netns {ns}",
                               f"addr add {a['mgmt@runner']} dev incusbr0", "link set incusbr0 up"])
        _ip(netns=ns, batch=["link set lo up", f"addr add {a['runner@mgmt']} dev eth0",
                             f"link add eth1 type veth peer name eth0 netns {cluster}",
                             f"addr add {a['runner@cluster']} dev eth1"])
        _ip(netns=cluster, batch=[f"addr add {a['cluster@runner']} dev eth0", "link set eth0 up"])
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
