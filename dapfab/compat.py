"""Every use of Invoke's, Fabric's and paramiko's internals, in one place.

dapfab relies on a few things these libraries do not promise (private attributes, stack
frames, undocumented channel attributes). Each is reached only through a function here, and
``tests/unit/test_compat.py`` checks every one against the installed versions, which
``pyproject.toml`` bounds to the tested range (``.ci/oldest`` tests the oldest allowed). A
release that changes one of them fails those tests, not a user. Nothing here imports
paramiko or Fabric at module level.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

# ------------------------------------------------------------------------------ Fabric

# The ssh_config files a Fabric Connection reads when given no config of its own
# (fabric.Config's ``_system_ssh_path`` and ``_user_ssh_path``).
SSH_CONFIG_FILES = ("/etc/ssh/ssh_config", "~/.ssh/config")

# ----------------------------------------------------------------------------- paramiko


def exit_status_event(channel: Any) -> threading.Event:
    """The event paramiko sets when a channel's exit status (or its close) arrives."""
    return channel.status_event


def channel_spent(channel: Any) -> bool:
    """Whether a channel can no longer carry a command (closed, EOF, or exited)."""
    return bool(channel.closed or channel.eof_received or channel.exit_status_ready())


def transport_socket(transport: Any) -> Any:
    """The socket (or socket-like channel) a paramiko Transport reads from."""
    return getattr(transport, "sock", None)


def cap_packet_size(channel: Any, limit: int) -> None:
    """Send at most ``limit`` bytes of data per SSH packet on ``channel``."""
    channel.out_max_packet_size = min(channel.out_max_packet_size, limit)


def max_packet_size(channel: Any) -> int:
    """The largest data payload per packet the peer accepts on ``channel``."""
    return channel.out_max_packet_size


# ------------------------------------------------------------------------------ Invoke

_FILE_LAYERS = ("system", "user", "project")


def config_layers(config: Any) -> list[tuple[str, dict[str, Any]]]:
    """An Invoke Config's layers in merge order, each with a label (the file's path for
    file layers); empty if ``config`` is not an Invoke Config."""
    if not all(hasattr(config, f"_{name}") for name in ("defaults", "collection", "runtime")):
        return []
    layers: list[tuple[str, dict[str, Any]]] = [
        ("default", config._defaults),
        ("collection", config._collection),
    ]
    for name in _FILE_LAYERS:
        layers.append((getattr(config, f"_{name}_path", None) or name, getattr(config, f"_{name}")))
    layers.append(("env", config._env))
    layers.append((getattr(config, "_runtime_path", None) or "runtime", config._runtime))
    layers.append(("command line", config._overrides))
    layers.append(("set in code", getattr(config, "_modifications", {})))
    return layers


def env_prefix(config: Any) -> str:
    """The environment variable prefix of an Invoke Config (``INVOKE_`` by default)."""
    return getattr(config, "_env_prefix", None) or "INVOKE_"


def proxied_dict(obj: Any) -> dict[str, Any] | None:
    """The dict behind an Invoke config DataProxy, or None for anything else."""
    inner = getattr(obj, "_config", None)
    return inner if isinstance(inner, dict) else None


def config_file_places(config: Any) -> dict[str, str | None]:
    """Where an Invoke Config looks for its user and project files, and what it found:
    ``user_prefix``, ``user_path``, ``project_prefix``, ``project_path``."""
    return {
        name: getattr(config, f"_{name}", None)
        for name in ("user_prefix", "user_path", "project_prefix", "project_path")
    }


def running_program(body: Any) -> Any:
    """The Invoke Program whose Executor is calling the task whose body is ``body`` (found
    by walking the interpreter's stack), or None when Python code called it."""
    from invoke import Executor, Program, Task

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Task) and owner.body is body:
            caller = frame.f_back
            executor = caller.f_locals.get("self") if caller is not None else None
            if not isinstance(executor, Executor):
                return None
            while caller is not None:
                candidate = caller.f_locals.get("self")
                if isinstance(candidate, Program):
                    return candidate
                caller = caller.f_back
            return None
        frame = frame.f_back
    return None


def program_argv(program: Any) -> list[str]:
    """The argv a Program parsed, and the tasks it parsed from it (``program.tasks``)."""
    return list(program.argv) if program.argv is not None else list(sys.argv)
