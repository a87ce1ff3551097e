"""The lab's runner as an unprivileged LXD container, driven by the real ``lxc`` client.

::

    mgmt (lxc) --unix socket--> lxd daemon, netns dfl{N}-runner --eth1-- cluster
                                   | dfl{N}-vm (veth, NAT out of eth1)
                                   +-- container lab-runner: eth0 (p2p NIC), default route

The daemon runs with ``LXD_DIR=/var/lib/dapfab-lab/lxd{N}`` in a network namespace of its
own, the runner host: its uplink ``eth1`` reaches the cluster, and the container's traffic
leaves through it masqueraded, like an instance behind an Incus bridge. The laptop and mgmt
have no route to it. mgmt runs the real ``/usr/bin/lxc`` (a copy in the lab's bin directory,
named ``lxc``); in mgmt's mount namespace the lab's LXD_DIR is bind-mounted on
``/var/lib/lxd`` (the client's default socket) and ``/usr/bin/lxc`` is hidden, so removing the
copy gives ``command not found`` as on a host without LXD.

No image server is reachable here: the image is built once with ``debootstrap`` and cached
under :data:`CACHE_DIR`; the daemon's directory keeps the imported image between labs, so a
second ``lab.up`` takes seconds. :meth:`LxdRunner.down` deletes the container and stops the
daemon it started (by PID), leaving only the cached image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from dapfab.quoting import quote
from dapfab.testing.runners import RunnerBackend
from dapfab.testing.system import SYSCTLS, LabError, alive, ip, wait_for

CACHE_DIR = Path("/var/cache/dapfab-lab")
LXD_ROOT = Path("/var/lib/dapfab-lab")
# Bump when the image recipe changes: the cached tarball and the imported alias follow it.
IMAGE_VERSION = "3"
IMAGE_ALIAS = f"dapfab-lab-runner-v{IMAGE_VERSION}"
KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
PACKAGES = "bash,coreutils,util-linux,curl,socat,procps,iproute2,ca-certificates"
MIRROR = "http://deb.debian.org/debian"
LXD_PACKAGES = ("lxd", "debootstrap")
CLIENT = "/usr/bin/lxc"
DAEMON_TIMEOUT = 60.0

# PID 1 of the container (minbase has no /sbin/init): bash reaps every child it is given
# (orphans included) from its SIGCHLD handler; `lxc stop` sends SIGPWR, `--force` SIGKILL.
INIT = """\
#!/bin/bash
# dapfab lab runner: PID 1 reaps orphans until SIGPWR/SIGTERM/SIGINT
trap 'exit 0' PWR TERM INT
trap ':' CHLD
mkdir -p /run/dapfab-init && rm -f /run/dapfab-init/fifo && mkfifo /run/dapfab-init/fifo
exec 3<>/run/dapfab-init/fifo
while :; do read -r -u 3 _; done
"""

METADATA = """\
architecture: {arch}
creation_date: {date}
properties:
  description: dapfab lab runner (debian bookworm minbase)
  os: debian
  release: bookworm
"""


def _run(argv: Sequence[str], *, what: str, timeout: float = 300, **kwargs) -> str:
    """Run ``argv``; raise :class:`LabError` with its stderr when it fails; return stdout."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        done = subprocess.run(list(argv), timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: timed out after {timeout:.0f} s") from None
    if done.returncode:
        err = done.stderr if isinstance(done.stderr, str) else (done.stderr or b"").decode()
        raise LabError(f"{what}: exit {done.returncode}: {err.strip()[-2000:]}")
    return done.stdout


def ensure_packages() -> None:
    """``apt-get install lxd debootstrap`` unless both are installed."""
    if shutil.which("lxd") and shutil.which("debootstrap") and os.path.exists(CLIENT):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "--no-install-recommends", *LXD_PACKAGES],
         what="apt-get install lxd debootstrap", timeout=900, env=env)


def build_image(cache: Path = CACHE_DIR) -> Path:
    """The runner image as an LXD unified tarball, built with debootstrap once and cached."""
    image = cache / f"runner-v{IMAGE_VERSION}.tar"
    if image.exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"build-v{IMAGE_VERSION}"
    rootfs = work / "rootfs"
    bootstrapped = work / "debootstrap.done"  # a build that failed later resumes here
    if not bootstrapped.exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
              str(rootfs), MIRROR], what="debootstrap", timeout=900)
        bootstrapped.touch()
    init = rootfs / "sbin" / "init"
    init.unlink(missing_ok=True)
    init.write_text(INIT)
    init.chmod(0o755)
    kubectl = rootfs / "usr" / "bin" / "kubectl"
    shutil.copyfile(KUBECTL, kubectl)
    kubectl.chmod(0o755)
    (rootfs / "etc" / "hostname").write_text("lab-runner\n")
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 lab-runner\n"
                                          "::1 localhost ip6-localhost ip6-loopback\n")
    (rootfs / "etc" / "resolv.conf").unlink(missing_ok=True)  # the build host's; no DNS here
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    arch = os.uname().machine
    (work / "metadata.yaml").write_text(METADATA.format(arch=arch, date=int(time.time())))
    tmp = image.with_suffix(".tmp")
    _run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(tmp), "metadata.yaml", "rootfs"],
         what="tar the runner image", timeout=600)
    tmp.replace(image)
    shutil.rmtree(work, ignore_errors=True)
    for old in cache.glob("runner-v*.tar"):  # an older recipe's image
        if old != image:
            old.unlink()
    return image


def _quiet_client(home: Path) -> None:
    """A client config in ``home``, as after a first use: no first-run banner on stderr."""
    conf = home / ".config" / "lxc"
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    (conf / "config.yml").touch(mode=0o600)


class LxdRunner(RunnerBackend):
    """The runner as an LXD container; the client on mgmt is the real ``lxc``."""

    name = "lxd"
    client = "lxc"

    @property
    def dir(self) -> Path:
        return self.lab.state_dir / "runner"

    @property
    def lxd_dir(self) -> Path:
        """The daemon's LXD_DIR: persistent, so the imported image survives ``lab.down``."""
        return LXD_ROOT / f"lxd{self.lab.lab_id}"

    @property
    def host_veth(self) -> str:
        """The host side of the container's NIC, in the daemon's namespace."""
        return f"{self.lab.prefix}vm"

    def vm_address(self, key: str, prefix: bool = True) -> str:
        """The container's (``runner@mgmt``) or its gateway's (``mgmt@runner``) address."""
        address = self.lab.net.addresses[key]
        return address if prefix else address.split("/")[0]

    def _nic(self, name: str) -> tuple[str, str, str]:
        """(host veth, gateway address, container address) of container ``name``: the lab's
        runner on the lab's runner link, a grown lab's second one on 198.18.{o+6}.0/24."""
        if name == self.vm_name:
            return self.host_veth, self.vm_address("mgmt@runner"), self.vm_address("runner@mgmt")
        o = 16 * self.lab.lab_id
        return f"{self.host_veth}2", f"198.18.{o + 6}.1/24", f"198.18.{o + 6}.2/24"

    @property
    def socket(self) -> Path:
        return self.lxd_dir / "unix.socket"

    # -- the daemon ------------------------------------------------------------------------

    def lxc(self, *args: str, what: str | None = None, timeout: float = 120,
            **kwargs) -> str:
        """Run the real client against this lab's daemon from the laptop; return stdout."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXD_DIR": str(self.lxd_dir),
               "HOME": str(self.dir), "LANG": "C.UTF-8"}
        return _run([CLIENT, *args], what=what or f"lxc {' '.join(args[:2])}", timeout=timeout,
                    env=env, **kwargs)

    def _start_daemon(self) -> None:
        self.lxd_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        lab = self.lab
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXD_DIR": str(self.lxd_dir),
               "HOME": "/root", "LANG": "C.UTF-8"}
        argv = ["ip", "netns", "exec", lab.netns("runner"), "lxd", "--group", "root",
                f"--logfile={self.dir / 'lxd.log'}"]
        proc = lab.procs.spawn(argv, log=self.dir / "lxd.out", env=env)
        lab.state()["lxd"] = proc.pid
        lab.statefile.save()
        try:
            _run(["lxd", "waitready", f"--timeout={int(DAEMON_TIMEOUT)}"], env=env,
                 what="lxd waitready", timeout=DAEMON_TIMEOUT + 5)
        except LabError:
            log = (self.dir / "lxd.log").read_text(errors="replace")[-2000:] if (
                self.dir / "lxd.log").exists() else ""
            raise LabError(f"the LXD daemon did not start: {log}") from None
        if proc.poll() is not None:
            raise LabError(f"the LXD daemon exited with {proc.returncode}")

    def _preseed(self) -> None:
        pools = json.loads(self.lxc("query", "/1.0/storage-pools"))
        if "/1.0/storage-pools/default" in pools:
            return
        preseed = ("storage_pools:\n- name: default\n  driver: dir\n"
                   "profiles:\n- name: default\n  devices:\n    root:\n      path: /\n"
                   "      pool: default\n      type: disk\n")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXD_DIR": str(self.lxd_dir)}
        _run(["lxd", "init", "--preseed"], input=preseed, env=env, what="lxd init --preseed")

    def _import_image(self) -> None:
        aliases = json.loads(self.lxc("query", "/1.0/images/aliases"))
        if f"/1.0/images/aliases/{IMAGE_ALIAS}" in aliases:
            return
        for old in aliases:  # an older recipe's image
            name = old.rsplit("/", 1)[1]
            if name.startswith("dapfab-lab-runner-v"):
                self.lxc("image", "delete", name, what="lxc image delete")
        image = build_image()
        self.lxc("image", "import", str(image), "--alias", IMAGE_ALIAS, timeout=600)

    # -- RunnerBackend -----------------------------------------------------------------------

    def up(self) -> None:
        lab, a = self.lab, self.lab.net.addresses
        ensure_packages()
        self.dir.mkdir(mode=0o700, exist_ok=True)
        _quiet_client(self.dir)
        ns, cluster = lab.netns("runner"), lab.netns("cluster")
        ip("netns", "add", ns)
        ip(netns=ns, batch=["link set lo up",
                            f"link add eth1 type veth peer name eth0 netns {cluster}",
                            f"addr add {a['runner@cluster']} dev eth1", "link set eth1 up"])
        ip(netns=cluster, batch=[f"addr add {a['cluster@runner']} dev eth0", "link set eth0 up"])
        lab.run("runner", SYSCTLS + "; echo 1 > /proc/sys/net/ipv4/ip_forward", env=None,
                via_netns=True)
        nat = ("table ip dapfab_lab_nat {\n  chain postrouting {\n"
               "    type nat hook postrouting priority 100; oifname \"eth1\" masquerade\n  }\n}\n")
        done = lab.run("runner", ["nft", "-f", "-"], input=nat, env=None, via_netns=True)
        if done.returncode:
            raise LabError(f"nft on the runner host: {done.stderr.strip()}")
        self._start_daemon()
        self._preseed()
        self._import_image()
        self._create(self.vm_name)
        self._install_client()
        self.start()

    def _create(self, name: str) -> None:
        with contextlib.suppress(LabError):  # a container a killed run left behind
            self.lxc("delete", "--force", name)
        self.lxc("init", IMAGE_ALIAS, name, "-c", "security.privileged=false", what="lxc init")
        self.lxc("config", "device", "add", name, "eth0", "nic", "nictype=p2p",
                 f"host_name={self._nic(name)[0]}", "name=eth0", what="lxc nic device")

    def add_container(self, name: str) -> None:
        """Another runner container behind mgmt (a grown lab), with the cluster's kubeconfig."""
        self._create(name)
        self.lab.state().setdefault("containers", []).append(name)
        self.lab.statefile.save()
        self.start_container(name)
        kubeconfig = self.lab.state_dir / "cluster" / "kubeconfig"
        if kubeconfig.exists():
            self.write_file("/root/.kube/config", kubeconfig.read_bytes(), container=name)

    def _init_key(self, name: str) -> str:
        """Where the lab's state keeps the PID of container ``name``'s init."""
        return "runner_init" if name == self.vm_name else f"container_{name}_init"

    def container_init(self, name: str) -> int | None:
        """The PID of container ``name``'s init, if it runs."""
        pid = self.lab.state().get(self._init_key(name))
        return pid if alive(pid) else None

    def start_container(self, name: str) -> None:
        if self.container_init(name):
            return
        self.lxc("start", name, what="lxc start")
        state = json.loads(self.lxc("query", f"/1.0/instances/{name}/state"))
        pid = int(state.get("pid") or 0)
        if not alive(pid):
            raise LabError(f"container {name} has no running init: {state.get('status')}")
        self.lab.state()[self._init_key(name)] = pid
        self.lab.statefile.save()
        # No DHCP here: the network is configured as a cloud-init would, from outside.
        veth, gateway, address = self._nic(name)
        ip(netns=self.lab.netns("runner"), batch=[
            f"addr replace {gateway} dev {veth}", f"link set {veth} up"])
        script = (f"ip link set lo up && ip addr add {address} dev eth0 && "
                  f"ip link set eth0 up && ip route add default via {gateway.split('/')[0]}")
        done = subprocess.run(self._command(pid, ["/bin/sh", "-c", script]),
                              capture_output=True, text=True, env=self.env(), timeout=30)
        if done.returncode:
            raise LabError(f"configuring {name}'s network: {done.stderr.strip()}")

    def stop_container(self, name: str) -> None:
        init = self.container_init(name)
        if init:
            self.lxc("stop", "--force", name, what="lxc stop")
            wait_for(lambda: not alive(init), 10, f"{name} to stop")
        self.lab.state()[self._init_key(name)] = None
        self.lab.statefile.save()

    def _install_client(self) -> None:
        """The real client on mgmt: a copy of /usr/bin/lxc in the lab's bin, the lab's
        daemon socket at the client's default path, the system's ``lxc`` hidden."""
        lab = self.lab
        shutil.copy2(CLIENT, self.client_path)
        _quiet_client(lab.state_dir / "mgmt" / "home")
        Path("/var/lib/lxd").mkdir(mode=0o711, exist_ok=True)
        hide = lab.state_dir / "mgmt" / "hide-bin"
        hide.mkdir(exist_ok=True)
        os.mknod(hide / "lxc", 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
        script = (f'mount --bind "{self.lxd_dir}" /var/lib/lxd && '
                  f'mount -t overlay dapfab-lab -o "lowerdir={hide}:/usr/bin" /usr/bin')
        lab.run("mgmt", ["/bin/sh", "-c", script], check=True)

    def running(self) -> bool:
        return self.init_pid() is not None

    def start(self) -> None:
        self.start_container(self.vm_name)

    def stop(self) -> None:
        self.stop_container(self.vm_name)

    def down(self) -> None:
        """Delete the container, stop the daemon this lab started (by PID), unmount."""
        try:
            state = self.lab.state()
        except LabError:
            state = {}
        pid = state.get("lxd")
        if alive(pid):
            for name in [self.vm_name, *state.get("containers", [])]:
                with contextlib.suppress(LabError):
                    self.lxc("delete", "--force", name, timeout=60)
            os.kill(pid, signal.SIGTERM)  # lxd shuts down cleanly on SIGTERM
            with contextlib.suppress(LabError):
                wait_for(lambda: not alive(pid), 30, "the LXD daemon to stop")
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not alive(pid), 10, "the LXD daemon to die")
        self.lab.procs.reap()
        # What the daemon left: processes of the container (its monitor lives in the
        # daemon's netns and is killed by lab.down) and the socket file.
        self.socket.unlink(missing_ok=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        init = self.init_pid()
        if not init:
            raise LabError("the runner is not running")
        return self._command(init, argv)

    @staticmethod
    def _command(init: int, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(init), "-U", "-m", "-n", "-p", "-u", "-i", "-C",
                f"--wd=/proc/{init}/root/root", "--", *argv]  # resolved in the container

    def write_file(self, path: str, data: bytes, mode: int = 0o600, container: str | None = None) -> None:
        init = self.container_init(container or self.vm_name)
        if not init:
            raise LabError(f"{container or 'the runner'} is not running")
        d = path.rsplit("/", 1)[0] or "/"
        script = (f"umask 077 && mkdir -p {quote(d)} && cat > {quote(path)} && "
                  f"chmod {mode:o} {quote(path)}")
        done = subprocess.run(self._command(init, ["/bin/sh", "-c", script]), input=data,
                              capture_output=True, env=self.env(), timeout=30)
        if done.returncode:
            raise LabError(f"writing {path} in the runner: {done.stderr.decode().strip()}")
