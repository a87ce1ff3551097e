"""Building a lab, taking it down, and saying what of it is up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapfab.testing.network import HOSTS
from dapfab.testing.runners import BACKENDS, RunnerBackend, load_backend
from dapfab.testing.sshd import SSHD_HOSTS
from dapfab.testing.system import LabError, alive, all_processes, ns_inode, wait_for

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab

CLUSTER_PORT = 6443
CLUSTER_TIMEOUT = 30.0


def cluster_available() -> bool:
    """True once ``dapfab/testing/cluster/__main__.py`` exists."""
    return (Path(__file__).parent / "cluster" / "__main__.py").exists()


class Lifecycle:
    """``up`` builds the lab in ``/run/dapfab-lab{N}`` (the parts in an order that overlaps
    the slow steps), ``down`` removes every process, namespace, veth, route and file of its
    id, also what a killed run left behind."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

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
        lab = self.lab
        state = lab.state_dir
        state.mkdir(mode=0o700)
        for host in SSHD_HOSTS:
            lab.sshd.make_dirs(host)
        keygens = [lab.sshd.keygen(state / "id_ed25519", "dapfab-lab")]
        keygens += [lab.sshd.host_keygen(h) for h in SSHD_HOSTS]
        lab.statefile.begin({"lab_id": lab.lab_id, "backend": lab.backend_name, "holders": {},
                             "sshd": {}, "cluster": None})
        lab.net.build()
        holders = {host: lab.sshd.start_holder(host) for host in SSHD_HOSTS}
        for proc in keygens:
            if proc.wait():
                raise LabError(f"ssh-keygen failed: {proc.stderr.read() if proc.stderr else ''}")
        for host in SSHD_HOSTS:
            lab.sshd.write_host_files(host)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for host, (proc, ready) in holders.items():
            lab.sshd.await_holder(host, proc, ready)
        for host in SSHD_HOSTS:
            lab.sshd.spawn_sshd(host)
        lab.backend.up()
        for host in SSHD_HOSTS:
            lab.sshd.wait_sshd(host)
        lab.sshd.write_client_files()
        self._write_runtime_config()
        if lab.cluster_enabled:
            self._start_cluster()
        lab.statefile.save()

    def _write_runtime_config(self) -> None:
        """The runtime config file for ``inv -f`` and ``env.sh`` (the same as variables)."""
        lab = self.lab
        r = lab.env()
        Path(lab.runtime_config).write_text(
            f"# dapfab lab {lab.lab_id}: inv -f {lab.runtime_config} k8s.kubectl -- get pods\n"
            "dap:\n  runner:\n"
            f"    ssh_host: {json.dumps(r['DAP_RUNNER_SSH_HOST'])}\n"
            f"    ssh_key: {json.dumps(r['DAP_RUNNER_SSH_KEY'])}\n"
            f"    vm: {json.dumps(r['DAP_RUNNER_VM'])}\n"
            f"    gateway: {json.dumps(r['DAP_RUNNER_SSH_GATEWAY'])}\n"
            f"    incus: {json.dumps(r['DAP_RUNNER_INCUS'])}\n"
            f"  ssh:\n    known_hosts: {json.dumps(r['DAP_SSH_KNOWN_HOSTS'])}\n"
            f"    persist: {json.dumps(r['DAP_SSH_PERSIST'])}\n")
        (lab.state_dir / "env.sh").write_text(lab.export_lines())

    def _start_cluster(self) -> None:
        lab = self.lab
        d = lab.state_dir / "cluster"
        d.mkdir(exist_ok=True)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=package_root)
        proc = lab.procs.spawn(["ip", "netns", "exec", lab.net.netns("cluster"), sys.executable,
                                "-m", "dapfab.testing.cluster", "--state-dir", str(d),
                                "--address", lab.cluster_address, "--port", str(CLUSTER_PORT)],
                               log=d / "cluster.log", env=env, cwd=str(d))
        lab.state()["cluster"] = proc.pid
        lab.statefile.save()
        ready = d / "ready"
        wait_for(lambda: ready.exists() or proc.poll() is not None, CLUSTER_TIMEOUT,
                 f"the cluster to create {ready} (log: {d / 'cluster.log'})")
        if proc.poll() is not None:
            log = (d / "cluster.log").read_text(errors="replace")[-3000:]
            raise LabError(f"the cluster exited with {proc.returncode}:\n{log}")
        lab.backend.write_file("/root/.kube/config", (d / "kubeconfig").read_bytes())

    def exists(self) -> bool:
        """True if anything of this lab id exists (a running or a stale lab)."""
        return self.lab.state_dir.exists() or self.lab.net.exists()

    def down(self) -> None:
        """Remove everything of this lab id: processes, namespaces, veths, routes, files."""
        lab = self.lab
        with contextlib.suppress(Exception):
            lab.stop_keepers()
        with contextlib.suppress(Exception):  # first: a backend's daemon stops cleanly
            self.built_backend().down()
        inodes = {lab.net.inode(n) for n in lab.net.namespaces()}
        for _ in range(50):
            pids = [p for p in all_processes() if ns_inode(f"/proc/{p}/ns/net") in inodes]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            lab.procs.reap()
            time.sleep(0.02)
        else:
            raise LabError(f"processes of lab {lab.lab_id} would not die: {pids}")
        lab.procs.reap()
        lab.net.remove()
        shutil.rmtree(lab.state_dir, ignore_errors=True)
        lab.statefile.forget()
        lab.faults.forget()

    def built_backend(self) -> RunnerBackend:
        """The backend the lab was built with (``lab.down`` may not name it)."""
        with contextlib.suppress(LabError, ValueError, KeyError):
            name = self.lab.state()["backend"]
            if name != self.lab.backend_name and name in BACKENDS:
                return load_backend(self.lab, name)
        return self.lab.backend

    def status(self) -> dict[str, Any]:
        """What is up: namespaces, sshd and runner state, addresses."""
        lab = self.lab
        if not self.exists():
            return {"lab_id": lab.lab_id, "up": False}
        try:
            state = lab.state()
        except LabError:
            return {"lab_id": lab.lab_id, "up": False, "stale": True}
        sshd = {h: alive(state["sshd"].get(h)) for h in state["holders"]}
        return {
            "lab_id": lab.lab_id, "up": True, "backend": state.get("backend", lab.backend_name),
            "namespaces": lab.net.namespaces(), "sshd": sshd,
            "runner": "RUNNING" if self.built_backend().running() else "STOPPED",
            "cluster": alive(state.get("cluster")),
            "addresses": {h: lab.address(h) for h in HOSTS},
            "ssh_config": lab.ssh_config, "runtime_config": lab.runtime_config,
        }
