"""The cluster's control socket (``DIR/control.sock``) and its client functions.

One request line, one answer line (JSON). Requests: ``restart NAMESPACE/NAME``,
``status``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"


def request(state_dir: str | Path, line: str, timeout: float = 60.0) -> dict[str, Any]:
    """Send one control request to the cluster in ``state_dir``; return its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(Path(state_dir) / SOCKET_NAME))
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    if not answer.get("ok"):
        raise RuntimeError(f"cluster control: {line}: {answer.get('error', 'no answer')}")
    return answer


def restart_pod(state_dir: str | Path, name: str, namespace: str = "default", gap: float = 0.5) -> int:
    """Restart a pod: its process stops, stays down ``gap`` s, a new one starts listening.

    Returns the pod's new generation (restart count). Open connections to the old process
    are cut; port-forwards that were using them see the error the kubelet would report.
    """
    return int(request(state_dir, f"restart {namespace}/{name} {gap}")["generation"])


def cluster_status(state_dir: str | Path) -> dict[str, Any]:
    """Pods (with pid and generation), addresses and port of the running cluster."""
    return request(state_dir, "status")
