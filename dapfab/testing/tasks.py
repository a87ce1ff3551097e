"""Invoke collection ``lab``: ``lab.up``, ``lab.down``, ``lab.status`` (root on Linux).

The repo's own ``tasks.py`` adds it; it is not part of the importable ``dapfab.tasks`` tree.
"""

from __future__ import annotations

from invoke import Collection, task

HELP = {
    "lab_id": "lab id 0..15: name prefix dfl<N>- and address block (default $DAPFAB_LAB_ID or 0)",
    "backend": "runner backend: netns (default $DAPFAB_LAB_BACKEND or netns) or lxd",
}


def _lab(lab_id: int | None, backend: str | None = None):
    from dapfab.testing.lab import Lab  # here and in demo: `inv --list` imports this module

    return Lab(lab_id=lab_id, backend=backend)


@task(help=HELP, auto_shortflags=False)
def up(c, lab_id=None, backend=None):
    """Bring the lab up (replacing a stale one) and print how to point dapfab at it."""
    lab = _lab(None if lab_id is None else int(lab_id), backend)
    seconds = lab.up()
    print(f"Lab {lab.lab_id} is up ({seconds:.1f} s). Point dapfab at it with")
    print(f"  inv -f {lab.runtime_config} k8s.kubectl -- get pods")
    print("or with these variables:")
    print(lab.export_lines(), end="")
    print(f"SSH by hand: ssh -F {lab.ssh_config} mgmt")


@task(help=HELP, auto_shortflags=False)
def down(c, lab_id=None, backend=None):
    """Take the lab down: no namespace, veth, route, process or file of it is left."""
    lab = _lab(None if lab_id is None else int(lab_id), backend)
    lab.down()
    print(f"Lab {lab.lab_id} is down.")


@task(help=HELP, auto_shortflags=False)
def status(c, lab_id=None, backend=None):
    """Show whether the lab is up, its hosts' addresses and its services."""
    lab = _lab(None if lab_id is None else int(lab_id), backend)
    info = lab.status()
    if not info.get("up"):
        print(f"Lab {lab.lab_id} is down" + (" (stale leftovers: lab.up removes them)"
                                              if info.get("stale") else "") + ".")
        return
    print(f"Lab {lab.lab_id} is up (backend {info['backend']}).")
    for host, address in info["addresses"].items():
        print(f"  {host:8} {address}")
    print("  sshd: " + ", ".join(f"{h} {'up' if ok else 'stopped'}" for h, ok in info["sshd"].items()))
    print(f"  runner: {info['runner']}; cluster: {'up' if info['cluster'] else 'not running'}")
    print(f"  inv -f {info['runtime_config']}; ssh -F {info['ssh_config']} mgmt")


@task(help=HELP, auto_shortflags=False)
def demo(c, lab_id=None, backend=None):
    """Run k8s.kubectl, k8s.curl and a k8s.forward round trip against the lab, showing each."""
    from dapfab.testing.demo import run_demo

    run_demo(_lab(None if lab_id is None else int(lab_id), backend))


lab = Collection("lab", up, down, status, demo)
ns = lab
