"""What the full path leaves for the thin ``dap`` (:mod:`dapfab.thin`, docs/design.md §17):
a record of what it resolved for one working directory and environment, taken before it
read any config file, so that the next such call can skip Invoke."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

from dapfab import thin
from dapfab.commands import (
    ARG_MAX_BYTES,
    INTERACTIVE_SUBCOMMANDS,
    KUBECTL_LOOKUP,
    TTY_SUBCOMMANDS,
    kubectl_command,
    kubectl_missing,
)
from dapfab.errors import DapError, render
from dapfab.identity import ConnectionIdentity
from dapfab.keeper import client as keeper
from dapfab.keeper import place
from dapfab.remote.launcher import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT

if TYPE_CHECKING:
    from dapfab.tasks.edge import Call

_armed: thin.Situation | None = None  # set by arm(): what remember() records


def arm(argv: list[str]) -> None:
    """At the start of the full program: take the situation if ``argv`` has the thin
    path's shape (before any config file is read, so that a file changed meanwhile makes
    the record stale rather than wrong)."""
    global _armed
    _armed = thin.Situation() if thin.takes(argv) else None


def remember(call: Call) -> None:
    """Record what the full path resolved for the armed call (a keeper's config only);
    never fails the call."""
    situation = _armed
    if situation is None or not call.config.persist:
        return
    try:
        digest = ConnectionIdentity.of(call.config).digest()  # stamps the SSH config files
        record = {
            "version": thin.VERSION, "cwd": situation.cwd, "files": situation.files,
            "socket": place.socket_path(place.directory(), digest),
            "digest": digest,
            "config": dataclasses.asdict(call.config),
            "prefix": kubectl_command([], namespace=call.namespace, context=call.context),
            "laptop_files": call.laptop_files,
            "pty_words": sorted(INTERACTIVE_SUBCOMMANDS | TTY_SUBCOMMANDS),
            "arg_max": ARG_MAX_BYTES,
            "heartbeat": [HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT],
            "hello_wait": keeper.HELLO_WAIT, "quit_wait": keeper.QUIT_WAIT,
            "start_wait": keeper.START_WAIT,
            "lookup": KUBECTL_LOOKUP,
            "lines": {
                "kubectl_missing": render(kubectl_missing(call.config.vm_name)),
                "keeper_lost": render(keeper.keeper_lost("{pid}", "{what}")),
            },
        }
        _write(situation.record_name(), json.dumps(record).encode())
    except (OSError, ValueError, DapError) as exc:
        keeper.log.debug("no thin-path record: %s", exc)


def _write(name: str, data: bytes) -> None:
    """Write the record whole or not at all: a 0600 file renamed into place."""
    where, fd = place.open_directory()
    partial = f".{name}.{os.getpid()}"
    try:
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=fd)
        try:
            os.write(out, data)
        finally:
            os.close(out)
        os.replace(partial, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        try:
            os.unlink(partial, dir_fd=fd)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
