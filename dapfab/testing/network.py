"""The lab's hosts as network namespaces, their addresses and the veth links between them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dapfab.testing.system import SYSCTLS, LabError, ip

if TYPE_CHECKING:
    from dapfab.testing.lab import Lab

HOSTS = ("laptop", "bastion", "mgmt", "runner", "cluster", "mgmt2")  # mgmt2: a grown lab
DEFAULT_PEER = {"laptop": "bastion", "bastion": "laptop", "mgmt": "bastion",
                "mgmt2": "bastion", "runner": "mgmt", "cluster": "runner"}

Ends = tuple[tuple[str, str], tuple[str, str]]


class Network:
    """Lab ``N``'s namespaces (``dfl{N}-<host>``), the addresses of 198.18.{16N}.0/20 and the
    links: laptop–bastion–mgmt and the cluster's namespace here; the runner backend adds
    mgmt–runner–cluster, a grown lab (``dapfab.testing.fleet``) bastion–mgmt2 and more."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.prefix = lab.prefix
        self.block = ipaddress.ip_network(f"198.18.{16 * lab.lab_id}.0/20")
        o = 16 * lab.lab_id
        #: Every address of the lab, ``"<host>@<peer>"`` -> ``"a.b.c.d/len"``.
        self.addresses = {
            "laptop@bastion": f"198.18.{o}.1/24", "bastion@laptop": f"198.18.{o}.2/24",
            "bastion@mgmt": f"198.18.{o + 1}.1/24", "mgmt@bastion": f"198.18.{o + 1}.2/24",
            "bastion@mgmt2": f"198.18.{o + 3}.1/24", "mgmt2@bastion": f"198.18.{o + 3}.2/24",
            "mgmt@runner": f"198.18.{o + 2}.1/24", "runner@mgmt": f"198.18.{o + 2}.2/24",
            "runner@cluster": f"198.18.{o + 8}.1/21", "cluster@runner": f"198.18.{o + 8}.2/21",
        }

    def address(self, host: str, peer: str | None = None) -> str:
        """The address of ``host`` (on its link to ``peer``; default: the one others use)."""
        return self.addresses[f"{host}@{peer or DEFAULT_PEER[host]}"].split("/")[0]

    @property
    def cluster_network(self) -> ipaddress.IPv4Network:
        """The cluster's network: the cluster may add any of these addresses to its eth0."""
        return ipaddress.ip_network(self.addresses["cluster@runner"], strict=False)

    def netns(self, host: str) -> str:
        """The network namespace name of ``host`` (not for the laptop: the root namespace)."""
        if host not in HOSTS or host == "laptop":
            raise LabError(f"no namespace for host {host!r}")
        return f"{self.prefix}{host}"

    @property
    def laptop_interface(self) -> str:
        """The laptop's end of its link to the bastion."""
        return f"{self.prefix}eth"

    def links(self) -> dict[frozenset[str], Ends]:
        """Each link: {a, b} -> ((a, interface of a), (b, interface of b))."""
        return {
            frozenset(("laptop", "bastion")): (("laptop", self.laptop_interface), ("bastion", "eth0")),
            frozenset(("bastion", "mgmt")): (("bastion", "eth1"), ("mgmt", "eth0")),
            frozenset(("bastion", "mgmt2")): (("bastion", "eth2"), ("mgmt2", "eth0")),
            frozenset(("mgmt", "runner")): (("mgmt", "incusbr0"), ("runner", "eth0")),
            frozenset(("runner", "cluster")): (("runner", "eth1"), ("cluster", "eth0")),
        }

    def link(self, a: str, b: str) -> Ends:
        """The ends of the link a–b."""
        try:
            return self.links()[frozenset((a, b))]
        except KeyError:
            raise LabError(f"no link between {a} and {b}") from None

    def set_link(self, ends: Ends, state: str) -> None:
        """Set both ends of a link ``up`` or ``down``."""
        for host, iface in ends:
            ip("link", "set", iface, state, netns=None if host == "laptop" else self.netns(host))

    def build(self) -> None:
        """The namespaces of bastion, mgmt and the cluster, and the laptop–bastion–mgmt links;
        an ``unreachable`` route for the lab's block on the laptop."""
        a = self.addresses
        bastion, mgmt = self.netns("bastion"), self.netns("mgmt")
        lap = self.laptop_interface
        ip(batch=[
            f"netns add {bastion}", f"netns add {mgmt}", f"netns add {self.netns('cluster')}",
            f"link add {lap} type veth peer name eth0 netns {bastion}",
            f"addr add {a['laptop@bastion']} dev {lap}", f"link set {lap} up",
            f"route add unreachable {self.block}",
        ])
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{lap}/disable_ipv6").write_text("1")
        ip(netns=bastion, batch=[
            "link set lo up", f"link add eth1 type veth peer name eth0 netns {mgmt}",
            f"addr add {a['bastion@laptop']} dev eth0", f"addr add {a['bastion@mgmt']} dev eth1",
            "link set eth0 up", "link set eth1 up",
        ])
        ip(netns=mgmt, batch=["link set lo up", f"addr add {a['mgmt@bastion']} dev eth0",
                              "link set eth0 up"])
        ip(netns=self.netns("cluster"), batch=["link set lo up"])
        for host in ("bastion", "mgmt", "cluster"):
            self.lab.procs.run(host, SYSCTLS, env=None, check=True, via_netns=True)

    def namespaces(self) -> list[str]:
        """Names of the lab's namespaces that exist (its own and a stale run's)."""
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.prefix))

    def inode(self, name: str) -> str:
        """The namespace named ``name`` as ``/proc/<pid>/ns/net`` names it."""
        # nsfs files under /run/netns are bind mounts: stat gives the namespace's inode
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"

    def exists(self) -> bool:
        """True if a namespace or the laptop's link of this lab id exists."""
        return bool(self.namespaces()) or Path(f"/sys/class/net/{self.laptop_interface}").exists()

    def remove(self) -> None:
        """Delete the laptop's link, the route and every namespace of this lab id."""
        ip("link", "del", self.laptop_interface, check=False)
        ip("route", "del", "unreachable", str(self.block), check=False)
        for name in self.namespaces():
            ip("netns", "del", name, check=False)
