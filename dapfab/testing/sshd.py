"""The lab's SSH hosts: the real OpenSSH ``sshd`` of bastion and mgmt (and a grown lab's
mgmt2), their keys, and the client files that reach them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from dapfab.testing.system import HOST_PATH, LabError, alive, wait_for

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab

SSHD_HOSTS = ("bastion", "mgmt")
SSHD = "/usr/sbin/sshd"


class SshHosts:
    """Each sshd host runs in a private mount namespace, kept by a holder process, where the
    host's own home directory (``<state dir>/<host>/home``) is bind-mounted on ``/root`` (a
    clean login environment, no system user); mgmt hosts also see their ``bin`` directory on
    ``/usr/local/sbin``, which holds the runner backend's client."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def make_dirs(self, host: str) -> None:
        """``host``'s home with its ``.ssh`` (and for a mgmt host its ``bin``)."""
        (self.lab.state_dir / host / "home" / ".ssh").mkdir(mode=0o700, parents=True)
        if host.startswith("mgmt"):
            (self.lab.state_dir / host / "bin").mkdir(mode=0o755)

    @staticmethod
    def keygen(path: Path, comment: str) -> subprocess.Popen:
        """Start ``ssh-keygen`` writing a new ed25519 key to ``path`` (the caller waits)."""
        return subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                 "-f", str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def host_keygen(self, host: str) -> subprocess.Popen:
        """:meth:`keygen` of ``host``'s host key."""
        return self.keygen(self.lab.state_dir / host / "ssh_host_ed25519_key", f"root@{host}")

    def start_holder(self, host: str) -> tuple[subprocess.Popen, Path]:
        """A process that keeps ``host``'s private mount namespace (home on /root)."""
        host_dir = self.lab.state_dir / host
        ready = host_dir / "holder.ready"
        mounts = f'mount --bind "{host_dir}/home" /root'
        if host.startswith("mgmt"):
            mounts += f' && mount --bind "{host_dir}/bin" /usr/local/sbin'
        script = f'{mounts} && : > "{ready}" && exec sleep infinity'
        proc = self.lab.procs.spawn(["ip", "netns", "exec", self.lab.net.netns(host), "/bin/sh",
                                     "-c", script], log=host_dir / "holder.log")
        return proc, ready

    def await_holder(self, host: str, proc: subprocess.Popen, ready: Path) -> None:
        """Wait for ``host``'s namespace holder (:meth:`start_holder`) and record it."""
        wait_for(lambda: ready.exists() or proc.poll() is not None, 10, f"{host} host")
        if proc.poll() is not None:
            raise LabError(f"{host}: namespace holder exited with {proc.returncode}")
        self.lab.state()["holders"][host] = proc.pid
        self.lab.statefile.save()

    def write_host_files(self, host: str) -> None:
        """An sshd host's authorized_keys (the lab's key) and sshd_config."""
        state = self.lab.state_dir
        authorized = state / host / "home" / ".ssh" / "authorized_keys"
        authorized.write_text((state / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        (state / host / "sshd_config").write_text(self._sshd_config(host))

    def _sshd_config(self, host: str) -> str:
        d = self.lab.state_dir / host
        return (f"# dapfab lab {self.lab.lab_id}, {host}: OpenSSH's defaults except these lines\n"
                "ListenAddress 0.0.0.0\nAddressFamily inet\n"
                f"HostKey {d}/ssh_host_ed25519_key\nPidFile {d}/sshd.pid\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "Subsystem sftp internal-sftp\n")

    def spawn_sshd(self, host: str) -> None:
        """Start ``host``'s sshd in its holder's namespaces (:meth:`wait_sshd` waits for it)."""
        d = self.lab.state_dir / host
        with contextlib.suppress(FileNotFoundError):
            (d / "sshd.pid").unlink()
        holder = str(self.lab.state()["holders"][host])
        proc = self.lab.procs.spawn(["nsenter", "-t", holder, "-m", "-n", "--", SSHD, "-D", "-f",
                                     str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                                    env={"PATH": HOST_PATH})
        self.lab.state()["sshd"][host] = proc.pid

    def wait_sshd(self, host: str) -> None:
        """Wait until ``host``'s sshd listens (it wrote its PID file)."""
        pid = self.lab.state()["sshd"][host]
        pidfile = self.lab.state_dir / host / "sshd.pid"
        wait_for(lambda: pidfile.exists() or not alive(pid), 10, f"sshd on {host}")
        if not alive(pid):
            log = (self.lab.state_dir / host / "sshd.log").read_text(errors="replace")[-2000:]
            raise LabError(f"sshd on {host} exited: {log}")

    def sshd_pid(self, host: str) -> int | None:
        """PID of the listening sshd of ``host`` (None when stopped)."""
        pid = self.lab.state()["sshd"].get(host)
        return pid if alive(pid) else None

    def stop_sshd(self, host: str) -> None:
        """Stop ``host``'s listening sshd; existing sessions keep running (as on a real host)."""
        pid = self.sshd_pid(host)
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), 10, f"sshd on {host} to stop")
            self.lab.procs.reap()
        self.lab.state()["sshd"][host] = None
        self.lab.statefile.save()

    def start_sshd(self, host: str) -> None:
        """Start ``host``'s sshd again (nothing when it runs)."""
        if self.sshd_pid(host):
            return
        self.spawn_sshd(host)
        self.wait_sshd(host)
        self.lab.statefile.save()

    def known_hosts_line(self, host: str) -> str:
        """``host``'s line for the lab's known_hosts: its address and host key."""
        key = (self.lab.state_dir / host / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{self.lab.address(host)} {' '.join(key)}\n"

    def ssh_options(self) -> str:
        """The ssh_config lines every lab host shares (user, key, known_hosts, no prompts)."""
        return (f"    User root\n    IdentityFile {self.lab.ssh_key}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.lab.known_hosts}\n    GlobalKnownHostsFile /dev/null\n"
                "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n")

    def write_client_files(self) -> None:
        """The lab's known_hosts and an ssh_config for ``ssh -F``: Host ``bastion`` and
        ``mgmt`` (ProxyJump bastion)."""
        lab = self.lab
        b, m = lab.address("bastion"), lab.address("mgmt")
        Path(lab.known_hosts).write_text("".join(self.known_hosts_line(h) for h in SSHD_HOSTS))
        Path(lab.ssh_config).write_text(
            f"# dapfab lab {lab.lab_id}: ssh -F {lab.ssh_config} mgmt\n"
            f"Host bastion {lab.prefix}bastion\n    HostName {b}\n"
            f"Host mgmt {lab.prefix}mgmt\n    HostName {m}\n    ProxyJump bastion\n"
            f"Host bastion {lab.prefix}bastion mgmt {lab.prefix}mgmt {b} {m}\n"
            + self.ssh_options())

    def add_client_entry(self, host: str) -> None:
        """Add a grown lab's sshd ``host`` (behind the bastion) to known_hosts and ssh_config."""
        lab, address = self.lab, self.lab.address(host)
        with open(lab.known_hosts, "a") as known:
            known.write(self.known_hosts_line(host))
        with open(lab.ssh_config, "a") as config:
            config.write(f"Host {host} {lab.prefix}{host} {address}\n    HostName {address}\n"
                         "    ProxyJump bastion\n" + self.ssh_options())
