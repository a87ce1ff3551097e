"""Where keepers live: a private per-user directory, checked as OpenSSH checks its
ControlPath (docs/design.md §12)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dapfab.errors import ConfigError

SUN_PATH_MAX = 104  # bytes of a Unix socket path, NUL included (macOS; Linux has 108)
SUFFIX = ".sock"


def directory(create: bool = True) -> Path:
    """``$XDG_RUNTIME_DIR/dapfab``, else ``~/.cache/dapfab``: mode 0700, owned by this user,
    no symlink; ConfigError (exit 2) if it is anything else."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isabs(runtime) else Path.home() / ".cache"
    place = base / "dapfab"
    if create:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            place.mkdir(mode=0o700)
        except FileExistsError:
            pass
    check(place)
    return place


def check(place: Path) -> None:
    """Refuse a keeper directory that another user could reach or replace."""
    hint = f"remove {place} (dapfab recreates it, mode 0700) or set DAP_SSH_PERSIST=0"
    try:
        info = os.lstat(place)
    except FileNotFoundError:
        raise ConfigError(f"keeper directory {place} does not exist", hint=hint) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"refusing keeper directory {place}: not a directory (a symlink?)", hint=hint)
    if info.st_uid != os.getuid():
        raise ConfigError(f"refusing keeper directory {place}: owned by uid {info.st_uid}", hint=hint)
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(f"refusing keeper directory {place}: mode {mode:04o}, not 0700", hint=hint)


def socket_path(place: Path, digest: str) -> str:
    """The keeper socket for an identity digest; ConfigError if the path is too long for a
    Unix socket."""
    path = str(place / (digest + SUFFIX))
    if len(os.fsencode(path)) >= SUN_PATH_MAX:
        raise ConfigError(
            f"keeper socket path {path} is too long for a Unix socket",
            hint="set XDG_RUNTIME_DIR to a shorter directory, or DAP_SSH_PERSIST=0",
        )
    return path


def lock_path(socket: str) -> str:
    """The lock file that makes one keeper per socket."""
    return socket[: -len(SUFFIX)] + ".lock"


def sockets(place: Path) -> list[str]:
    """Every keeper socket in ``place``."""
    return sorted(str(p) for p in place.glob("*" + SUFFIX))
