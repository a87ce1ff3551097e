"""The lab grown for fan-out (docs/design.md §8): a second management host and more runners.

::

    laptop --- bastion --- mgmt   lab-runner (the lab's own), runner-2, runner-3, runner-4
                      \\--- mgmt2  runner-1, runner-2, runner-3, runner-4

:func:`grow` adds them to a lab that is up; it is idempotent, and ``lab.down`` removes them
with everything else (their names carry the lab's prefix). mgmt2 runs its own sshd behind
the same bastion and has the lab's ``incus``; the runners it adds are :class:`NetnsVM`\\ s,
each with a link to its management host and one to the cluster. On the LXD backend mgmt's
``lxc`` reaches LXD containers only, so there mgmt gets one more container (``runner-2``)
instead of three namespace VMs: 2 containers and 6 runners in all.

Profiles are named ``m1-r1`` .. ``m1-r4`` (mgmt) and ``m2-r1`` .. ``m2-r4`` (mgmt2); the same
VM names behind both hosts are on purpose (a runner is its host plus its VM).
"""

from __future__ import annotations

from typing import Any

from dapfab.testing.lab import Lab
from dapfab.testing.runners import NetnsVM, install_incus
from dapfab.testing.system import SYSCTLS, LabError, ip, vm_processes

HOST = "mgmt2"
NAMES = ("runner-1", "runner-2", "runner-3", "runner-4")


def grown(lab: Lab) -> bool:
    """Whether :func:`grow` has run on this lab."""
    return "fleet" in lab.state()


def grow(lab: Lab) -> None:
    """Add mgmt2 and the extra runners to ``lab`` (which is up); nothing when already grown."""
    if grown(lab):
        return
    _add_host(lab)
    fleet: dict[str, dict[str, Any]] = {
        "m1-r1": {"host": "mgmt", "vm": lab.vm_name, "key": None, "address": None}}
    extra = [("mgmt", name) for name in NAMES[1:]] if lab.backend_name == "netns" else []
    extra += [(HOST, name) for name in NAMES]
    kubeconfig = lab.state_dir / "cluster" / "kubeconfig"
    for index, (host, name) in enumerate(extra, start=1):
        vm = _add_vm(lab, index, host, name)
        if kubeconfig.exists():
            vm.write_file("/root/.kube/config", kubeconfig.read_bytes())
        fleet[_profile_name(host, name)] = {"host": host, "vm": name, "key": vm.key,
                                            "address": vm.address, "routes": vm.routes}
    if lab.backend_name != "netns":
        lab.backend.add_container("runner-2")
        fleet["m1-r2"] = {"host": "mgmt", "vm": "runner-2", "key": None, "address": None}
    lab.state()["fleet"] = dict(sorted(fleet.items()))
    lab.statefile.save()


def _profile_name(host: str, name: str) -> str:
    return f"{'m2' if host == HOST else 'm1'}-r{NAMES.index(name) + 1}"


def _add_host(lab: Lab) -> None:
    """mgmt2: a namespace behind the bastion with its own sshd, host key and ``incus``."""
    a = lab.net.addresses
    lab.sshd.make_dirs(HOST)
    keygen = lab.sshd.host_keygen(HOST)
    ns = lab.netns(HOST)
    ip("netns", "add", ns)
    ip(netns=lab.netns("bastion"), batch=[
        f"link add eth2 type veth peer name eth0 netns {ns}",
        f"addr add {a['bastion@mgmt2']} dev eth2", "link set eth2 up"])
    ip(netns=ns, batch=["link set lo up", f"addr add {a['mgmt2@bastion']} dev eth0",
                        "link set eth0 up"])
    lab.run(HOST, SYSCTLS, env=None, check=True, via_netns=True)
    lab.sshd.write_host_files(HOST)
    if keygen.wait():
        raise LabError(f"ssh-keygen for {HOST} failed")
    lab.sshd.await_holder(HOST, *lab.sshd.start_holder(HOST))
    lab.sshd.spawn_sshd(HOST)
    lab.sshd.wait_sshd(HOST)
    install_incus(lab, HOST)
    lab.sshd.add_client_entry(HOST)


def _add_vm(lab: Lab, index: int, host: str, name: str) -> NetnsVM:
    """Runner ``index`` (1..7) on ``host``: /30 links to the host (198.18.{o+4}.0/24) and to
    the cluster (198.18.{o+5}.0/24), with a route to the cluster's network."""
    o = 16 * lab.lab_id
    ns, iface = f"{lab.prefix}vm{index}", f"vm{index}"
    host_side, vm_side = f"198.18.{o + 4}.{4 * index + 1}", f"198.18.{o + 4}.{4 * index + 2}"
    vm_up, cluster_side = f"198.18.{o + 5}.{4 * index + 1}", f"198.18.{o + 5}.{4 * index + 2}"
    ip("netns", "add", ns)
    ip(netns=lab.netns(host), batch=[f"link add {iface} type veth peer name eth0 netns {ns}",
                                     f"addr add {host_side}/30 dev {iface}", f"link set {iface} up"])
    ip(netns=ns, batch=["link set lo up", f"addr add {vm_side}/30 dev eth0",
                        f"link add eth1 type veth peer name {iface} netns {lab.netns('cluster')}",
                        f"addr add {vm_up}/30 dev eth1"])
    ip(netns=lab.netns("cluster"), batch=[f"addr add {cluster_side}/30 dev {iface}",
                                          f"link set {iface} up"])
    vm = NetnsVM(lab, name, host, f"vm{index}", ns, vm_side, [f"{lab.net.cluster_network} via {cluster_side}"])
    vm.make_home()
    vm.start()
    return vm


def fleet(lab: Lab) -> dict[str, dict[str, Any]]:
    """Profile name -> ``{"host", "vm", "key", "address", "routes"}`` of every runner of the
    grown lab (``key``, ``address`` and ``routes`` only for namespace VMs)."""
    if not grown(lab):
        raise LabError(f"lab {lab.lab_id} is not grown (dapfab.testing.fleet.grow)")
    return lab.state()["fleet"]


def profiles(lab: Lab) -> dict[str, dict[str, Any]]:
    """``dap.runners`` entries for every runner of the grown lab, in name order."""
    found = {}
    for name, runner in fleet(lab).items():
        main = runner["host"] == "mgmt"
        found[name] = {"ssh_host": lab.ssh_host if main else f"root@{lab.address(HOST)}",
                       "ssh_key": lab.ssh_key, "gateway": lab.gateway, "vm": runner["vm"],
                       "incus": lab.incus if main else "incus"}
    return found


def vm(lab: Lab, profile: str) -> NetnsVM:
    """The namespace VM behind ``profile`` (not the lab's own runner or a container)."""
    runner = fleet(lab)[profile]
    if not runner["key"]:
        raise LabError(f"{profile} is not a namespace VM of the fleet")
    return NetnsVM.of(lab, runner)


def running(lab: Lab, word: str) -> list[str]:
    """Profiles of the runners where a process (dapfab's nested ones too) has ``word`` in
    its command line."""
    found = []
    for name, runner in fleet(lab).items():
        init = vm(lab, name).init_pid() if runner["key"] else _backend_init(lab, runner["vm"])
        if any(word in " ".join(argv) for _, argv in vm_processes(init, nested=True)):
            found.append(name)
    return found


def _backend_init(lab: Lab, name: str) -> int | None:
    if name == lab.vm_name:
        return lab.backend.init_pid()
    return lab.backend.container_init(name)


def stop(lab: Lab, profile: str) -> None:
    """Stop the VM or container behind ``profile`` (``lab.reset`` starts it again)."""
    runner = fleet(lab)[profile]
    if runner["key"]:
        vm(lab, profile).stop()
    elif runner["vm"] == lab.vm_name:
        lab.stop_runner()
    else:
        lab.backend.stop_container(runner["vm"])
