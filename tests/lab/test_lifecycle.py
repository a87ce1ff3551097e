"""The lab comes up, replaces a stale lab, restores what tests change, and leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from lab_helpers import find, ssh

from dapfab.testing import fleet
from dapfab.testing.lab import Lab
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab


def leftovers(lab: Lab) -> dict[str, list[str]]:
    """Everything of ``lab`` that exists now: namespaces, links, routes, mounts, files."""
    netns = [n for n in os.listdir("/run/netns") if n.startswith(lab.prefix)] \
        if os.path.isdir("/run/netns") else []
    links = [n for n in os.listdir("/sys/class/net") if n.startswith(lab.prefix)]
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    mounts = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                mounts += [line for line in f if str(lab.state_dir) in line or f"/{lab.prefix}" in line]
        except OSError:
            pass
    files = [p for d in ("/run", "/tmp") for p in os.listdir(d)
             if p.startswith((lab.prefix, lab.state_dir.name))]
    return {
        "netns": netns, "links": links, "files": files, "mounts": mounts,
        "routes": [r for r in routes.splitlines() if str(lab.net.block) in r],
    }


def lab_pids(lab: Lab) -> set[int]:
    pids = set(lab.state()["holders"].values()) | {lab.backend.init_pid()}
    for host in lab.state()["holders"]:
        pids |= set(lab.pids(host))
    for host in ("runner", "cluster"):
        pids |= set(lab.pids(host))
    return pids - {None}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_down_leaves_no_namespace_veth_route_mount_process_or_file(lab):
    fleet.grow(lab)  # the grown parts go as well
    session = subprocess.Popen(["ssh", "-F", lab.ssh_config, "mgmt", "sleep 1000"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: [p for p, argv in lab.processes("mgmt") if argv[:2] == ["sleep", "1000"]],
                   what="a login session on mgmt")
        pids = lab_pids(lab)
        assert pids and all(leftovers(lab)[k] for k in ("netns", "links", "routes", "mounts"))
        lab.down()
        assert leftovers(lab) == {"netns": [], "links": [], "files": [], "mounts": [], "routes": []}
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        session.kill()
        session.wait()
        lab.up()


def test_up_replaces_a_stale_lab_left_by_a_killed_run(lab):
    old = lab_pids(lab)
    stale = Lab(lab.lab_id)  # another process's view: only names and files to go by
    stale.up()
    assert [pid for pid in old if alive(pid)] == []
    lab.statefile.forget()  # the session's lab object re-reads the new state
    assert ssh(lab, "mgmt", "incus exec lab-runner -- true").returncode == 0


def test_reset_restores_cut_links_sshd_runner_and_incus(lab):
    lab.cut_link("laptop", "bastion", mode="down")
    lab.cut_link("runner", "cluster")
    lab.stop_sshd("mgmt")
    lab.stop_runner()
    lab.remove_incus()
    lab.reset()
    done = ssh(lab, "mgmt", f"incus exec {lab.vm_name} -- true")
    assert done.returncode == 0, done.stderr


def test_a_link_cut_down_fails_new_connections_at_once(lab):
    with lab.link_cut("laptop", "bastion", mode="down"):
        done = ssh(lab, "bastion", "true")
        assert done.returncode == 255
        assert "unreachable" in done.stderr.lower() or "no route" in done.stderr.lower()
    assert ssh(lab, "bastion", "true").returncode == 0


def test_a_dropping_link_times_out_silently(lab):
    with lab.link_cut("bastion", "mgmt"):
        done = subprocess.run(["ssh", "-F", lab.ssh_config, "-o", "ConnectTimeout=2", "mgmt", "true"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 255
    assert ssh(lab, "mgmt", "true").returncode == 0


def test_a_stopped_sshd_refuses_connections_and_a_started_one_accepts(lab):
    lab.stop_sshd("bastion")
    done = ssh(lab, "bastion", "true")
    assert done.returncode == 255 and "refused" in done.stderr
    lab.start_sshd("bastion")
    assert ssh(lab, "bastion", "true").returncode == 0


def test_a_frozen_sshd_accepts_nothing_until_thawed(lab):
    pid = lab.sshd_pid("bastion")
    lab.freeze(pid)
    done = subprocess.run(["ssh", "-F", lab.ssh_config, "-o", "ConnectTimeout=2", "bastion", "true"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 255
    lab.thaw(pid)
    assert ssh(lab, "bastion", "true").returncode == 0


def test_processes_lists_what_runs_in_a_host(lab, marker):
    proc = lab.popen("runner", ["sh", "-c", f"sleep 1000; : {marker}"])
    try:
        # nsenter forks into the VM's PID namespace, then its child execs sh
        [(pid, argv)] = wait_until(
            lambda: [p for p in find(lab, "runner", marker) if p[1][0] == "sh"], what="the process")
        assert argv == ["sh", "-c", f"sleep 1000; : {marker}"]
        assert find(lab, "mgmt", marker) == []
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_env_and_runtime_config_point_at_the_lab(lab):
    env = lab.env()
    assert env["DAP_RUNNER_SSH_HOST"] == lab.ssh_host == f"root@{lab.address('mgmt')}"
    assert env["DAP_RUNNER_SSH_GATEWAY"] == lab.gateway == f"root@{lab.address('bastion')}"
    text = open(lab.runtime_config).read()
    for name, value in env.items():
        if name.startswith("DAP_"):  # XDG_RUNTIME_DIR (where keepers live) is no setting
            assert f'"{value}"' in text
    assert oct(os.stat(lab.ssh_key).st_mode & 0o777) == "0o600"


def test_runner_config_fixture_matches_the_lab(lab, runner_config):
    assert (runner_config.ssh_host, runner_config.gateway, runner_config.vm_name) == (
        lab.ssh_host, lab.gateway, lab.vm_name)
    assert runner_config.known_hosts == lab.known_hosts
