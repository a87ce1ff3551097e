"""The thin ``dap`` (docs/design.md §17): ``dap k8s.kubectl -- ARGS`` goes straight to a
live keeper, without importing Invoke, Fabric, paramiko or YAML.

After such a call, the full path (``dap`` through Invoke) leaves a *record* of what it
resolved (the runner's config, kubectl's namespace and context, whether laptop files are
on) for this working directory and these environment variables, with the content of every
config file it could have read, present or absent. The thin path finds the record of its
own directory and environment, checks those files again, and hands the command to the
keeper of that config. Any miss or doubt (no record, a changed file, a flag, a word that
wants a pty or laptop files, no live keeper) runs the full path instead, which behaves
exactly as it always did; ``DAPFAB_THIN=0`` turns the thin path off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dapfab import exits
from dapfab.commands import KUBECTL_LOOKUP, kubectl_command, kubectl_missing, wants_pty
from dapfab.config import RunnerConfig
from dapfab.errors import DapError, render
from dapfab.identity import stamp
from dapfab.keeper import client as keeper
from dapfab.keeper import place
from dapfab.streams import caller_stdin, on_terminal

if TYPE_CHECKING:
    from dapfab.tasks.edge import Call

VERSION = 1
OFF = "DAPFAB_THIN"  # "0": always the full path
TASK = "k8s.kubectl"
CONFIG_NAMES = ("invoke.yaml", "invoke.yml", "invoke.json", "invoke.py")
ENV_PREFIXES = ("DAP_", "INVOKE_")
RECORD_MAX = 1 << 20


@dataclasses.dataclass(frozen=True)
class Situation:
    """Where a call is made: its directory, the variables that can change what the full
    path resolves, and the content of every config file it could read."""

    cwd: str
    environment: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]

    @classmethod
    def now(cls, environ: Mapping[str, str] | None = None) -> Situation:
        """The situation of this process."""
        environ = os.environ if environ is None else environ
        cwd = os.getcwd()
        names = sorted(name for name in environ if name != OFF and (
            name.startswith(ENV_PREFIXES) or name in keeper.KEEPER_ENV))
        files = tuple(stamp(path) for path in config_files(cwd, environ.get("HOME", "")))
        return cls(cwd, tuple((name, environ[name]) for name in names), files)

    def key(self) -> str:
        """The name of this directory's and environment's record (not of the files)."""
        text = json.dumps([VERSION, self.cwd, self.environment])
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def config_files(cwd: str, home: str) -> list[str]:
    """Every file whose content changes what ``dap`` resolves in ``cwd``: Invoke's system,
    user and project config files (in each directory from ``cwd`` up, so that a new one
    nearer than the last is seen) and ``tasks.py`` up the tree."""
    paths = [f"/etc/{name}" for name in CONFIG_NAMES]
    if home:
        paths += [os.path.join(home, "." + name) for name in CONFIG_NAMES]
    here = cwd
    while True:
        paths += [os.path.join(here, name) for name in (*CONFIG_NAMES, "tasks.py")]
        parent = os.path.dirname(here)
        if parent == here:
            return paths
        here = parent


def _shape(argv: Sequence[str]) -> list[str] | None:
    """kubectl's words if ``argv`` is exactly ``k8s.kubectl -- WORDS``, else None."""
    if len(argv) < 2 or argv[0] != TASK or argv[1] != "--":
        return None
    if os.environ.get(OFF) == "0" or os.environ.get("DAP_DEBUG") or os.environ.get(
            "INVOKE_RUNTIME_CONFIG"):
        return None
    return list(argv[2:])


# -- the full path's side ---------------------------------------------------------------

_armed: Situation | None = None  # set by a miss of try_run: what remember() records


def remember(call: Call) -> None:
    """Record what the full path resolved for the armed call (a keeper's config only);
    never fails the call."""
    situation = _armed
    if situation is None or not call.config.persist:
        return
    record = {
        "version": VERSION, "cwd": situation.cwd, "files": situation.files,
        "config": dataclasses.asdict(call.config), "namespace": call.namespace,
        "context": call.context, "laptop_files": call.laptop_files,
    }
    try:
        _write(situation.key(), json.dumps(record).encode())
    except (OSError, ValueError, DapError) as exc:
        keeper.log.debug("no thin-path record: %s", exc)


def _write(key: str, data: bytes) -> None:
    """Write the record whole or not at all: a 0600 file renamed into place."""
    where, fd = place.open_directory()
    name, partial = f"thin-{key}.json", f".thin-{key}.{os.getpid()}"
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


# -- the thin path ----------------------------------------------------------------------

def _record(situation: Situation) -> dict[str, Any] | None:
    """The record of ``situation`` if its files are as recorded, else None."""
    try:
        _, fd = place.open_directory(create=False)
    except (OSError, DapError):
        return None
    try:
        record_fd = os.open(f"thin-{situation.key()}.json", os.O_RDONLY | os.O_NOFOLLOW,
                            dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(os.read(record_fd, RECORD_MAX))
    except ValueError:
        return None
    finally:
        os.close(record_fd)
    if not isinstance(record, dict) or record.get("version") != VERSION or record.get(
            "cwd") != situation.cwd:
        return None
    if [tuple(item) for item in record.get("files", [])] != list(situation.files):
        return None
    return record


def try_run(argv: Sequence[str]) -> int | None:
    """Run ``argv`` (without the program's name) on the thin path and return its exit
    code; None when the full path must run it (nothing has run then). A miss of the thin
    path's shape arms :func:`remember` with the situation taken here, before the full path
    reads any config file."""
    global _armed
    _armed = None
    words = _shape(argv)
    if words is None:
        return None
    situation = Situation.now()
    code = _run(words, situation)
    if code is None:
        _armed = situation
    return code


def _run(words: list[str], situation: Situation) -> int | None:
    """:func:`try_run` once the shape is right: the exit code, or None for the full path."""
    if wants_pty(words) and on_terminal():
        return None
    record = _record(situation)
    if record is None:
        return None
    try:
        config = RunnerConfig(**record["config"])
        command = kubectl_command(words, namespace=record["namespace"],
                                  context=record["context"])
        if record["laptop_files"]:
            from dapfab import laptopfiles  # only when laptop files are on: tarfile & co.

            if laptopfiles.plan(words).needed:
                return None
    except (DapError, KeyError, TypeError):
        return None
    with exits.ended() as outcome:
        result = keeper.run(config, command, hide_out=False, hide_err=False,
                            in_stream=caller_stdin(None), timeout=None, out_stream=None,
                            err_stream=None)
        if result is None:
            return None
        if result.exited == 127 and not _kubectl_present(config):
            print(render(kubectl_missing(config.vm_name)), file=sys.stderr, flush=True)
    return result.exited if outcome.code is None else outcome.code


def _kubectl_present(config: RunnerConfig) -> bool:
    """Whether the VM's login shell finds kubectl, asked through the keeper."""
    try:
        found = keeper.run(config, KUBECTL_LOOKUP, hide_out=True, hide_err=True, in_stream=None,
                           timeout=None, out_stream=None, err_stream=None)
    except DapError:
        return True  # cannot tell: say nothing rather than something wrong
    return found is None or found.exited == 0
