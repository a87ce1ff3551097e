"""Where keepers and proxy kubeconfigs live: a private per-user directory, checked as
OpenSSH checks its ControlPath (docs/design.md §12, §14)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from dapfab import thin
from dapfab.errors import ConfigError

log = logging.getLogger("dapfab.keeper")

SUN_PATH_MAX = 104  # bytes of a Unix socket path, NUL included (macOS; Linux has 108)
SUFFIX = ".sock"
NAME = "dapfab"
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def base() -> Path:
    """The directory that holds ``dapfab/``: :func:`dapfab.thin.keeper_base`."""
    found = thin.keeper_base()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and found != runtime:
        log.debug("XDG_RUNTIME_DIR %s is not a private directory of this user: using ~/.cache",
                  runtime)
    return Path(found)


def directory(create: bool = True) -> Path:
    """``<base>/dapfab`` (see :func:`base`): mode 0700, owned by this user, no symlink;
    ConfigError (exit 2) if it is anything else."""
    place, fd = open_directory(create)
    os.close(fd)
    return place


def open_directory(create: bool = True) -> tuple[Path, int]:
    """``<base>/dapfab`` and a descriptor of it, opened without following a symlink at
    either step and checked on the descriptor (:func:`check`'s rules): files created
    relative to it (``dir_fd=``) land in that directory even if its name is replaced."""
    parent = base()
    place = parent / NAME
    if create:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    hint = _hint(place)
    try:
        parent_fd = os.open(parent, _DIRECTORY_FLAGS)
    except OSError as exc:
        raise ConfigError(f"cannot open {parent} ({exc.strerror})", hint=hint) from None
    try:
        info = os.fstat(parent_fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise ConfigError(f"refusing {parent}: another user can write it", hint=hint)
        if create:
            try:
                os.mkdir(NAME, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                pass
        try:
            fd = os.open(NAME, _DIRECTORY_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            raise ConfigError(f"directory {place} does not exist", hint=hint) from None
        except OSError:
            check(place)  # a symlink or not a directory: say which
            raise
    finally:
        os.close(parent_fd)
    try:
        _refuse(place, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return place, fd


def _hint(place: Path) -> str:
    return f"remove {place} (dapfab recreates it, mode 0700) or set DAP_SSH_PERSIST=0"


def check(place: Path) -> None:
    """Refuse a directory that another user could reach or replace."""
    try:
        info = os.lstat(place)
    except FileNotFoundError:
        raise ConfigError(f"directory {place} does not exist", hint=_hint(place)) from None
    _refuse(place, info)


def _refuse(place: Path, info: os.stat_result) -> None:
    hint = _hint(place)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"refusing directory {place}: not a directory (a symlink?)", hint=hint)
    if info.st_uid != os.getuid():
        raise ConfigError(f"refusing directory {place}: owned by uid {info.st_uid}", hint=hint)
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(f"refusing directory {place}: mode {mode:04o}, not 0700", hint=hint)


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
