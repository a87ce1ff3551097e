"""dapfab: kubectl, port-forwards and in-cluster HTTP through SSH, a bastion and ``incus exec``.

The public API is imported lazily so that ``import dapfab`` and ``inv --list`` stay cheap
(paramiko is only loaded when a connection is really needed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "CommandError",
    "ConfigError",
    "CurlError",
    "DapError",
    "DapTimeout",
    "HostKeyError",
    "Interrupted",
    "RunnerConfig",
    "RunnerError",
    "SSHError",
    "api_proxy",
    "incus_command",
    "kubectl_command",
    "kubectl_in_runner",
    "port_forward",
    "run_in_runner",
    "runner_curl",
]

_HOMES = {
    "RunnerConfig": "dapfab.config",
    "incus_command": "dapfab.commands",
    "kubectl_command": "dapfab.commands",
    "run_in_runner": "dapfab.run",
    "kubectl_in_runner": "dapfab.run",
    "port_forward": "dapfab.forward",
    "runner_curl": "dapfab.curl",
    "api_proxy": "dapfab.apiproxy",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    if name in __all__:
        return getattr(import_module("dapfab.errors"), name)
    raise AttributeError(f"module 'dapfab' has no attribute {name!r}")
