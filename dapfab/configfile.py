"""Writing the ``dap:`` section of an ``invoke.yaml`` safely, and ``--env`` export lines.

Round-trip YAML (ruamel): every other key and every comment of an existing file stays;
a different existing value is never overwritten without ``force``; the file is replaced
atomically (temporary file in the same directory, fsync, rename) and is mode 0600.

On a shared machine the target may have been prepared by someone else: a path that is, or
resolves through, a symlink owned by another user (root's links are trusted), or a file owned
by another user, is refused. A user's own symlink (a dotfile manager's ``~/.invoke.yaml``)
is followed and the file it points to is written. Once checked, the directory is opened link
by link with ``O_NOFOLLOW`` and the file is read and replaced relative to it, so a link
planted after the check is never followed.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dapfab.config import KEYS_BY_PATH
from dapfab.errors import ConfigError
from dapfab.quoting import quote


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"runner": {"vm": "x"}}`` -> ``{"runner.vm": "x"}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _yaml() -> Any:
    from ruamel.yaml import YAML  # ruamel.yaml here and below: `inv --list` imports this module

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _parse(path: Path, text: str) -> tuple[Any, Any]:
    """``(document, yaml)`` for the text of ``path``; ``document`` is None if empty or
    comments only."""
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    yaml = _yaml()
    if not text:
        return None, yaml
    try:
        _, indent, block_seq_indent = load_yaml_guess_indent(text)
        document = yaml.load(text)
    except YAMLError as error:
        lines = str(error).strip().splitlines() or ["parse error"]
        raise ConfigError(
            f"{path} is not valid YAML: {lines[0]}", hint="fix the file or use --path"
        ) from None
    if document is not None and not isinstance(document, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping", hint="fix the file or use --path")
    indent = indent or 2
    offset = block_seq_indent or 0
    yaml.indent(mapping=indent, sequence=indent + offset, offset=offset)
    return document, yaml


def write_dap_section(
    path: str | os.PathLike[str], values: Mapping[str, Any], *, force: bool = False
) -> Path:
    """Set ``values`` (nested, relative to ``dap``) in the YAML file at ``path``; return it.

    Keys whose value is ``None`` are skipped. A key that already holds a different value
    raises ConfigError (exit 2, file untouched) unless ``force``. Creates a missing file.
    Refuses another user's file or symlink on the way (see the module docs).
    """
    target = own_target(Path(os.path.expanduser(os.fspath(path))))
    flat = {key: value for key, value in _flatten(values).items() if value is not None}
    directory = _open_directory(target.parent)
    try:
        text_before = _read_at(directory, target)
        document, yaml = _parse(target, text_before)
        body = _updated(target, text_before, document, yaml, flat, force=force)
        _replace_at(directory, target, body)
    finally:
        os.close(directory)
    return target


def _updated(
    target: Path, text_before: str, document: Any, yaml: Any, flat: dict[str, Any], *, force: bool
) -> str:
    """The new text of ``target`` with ``flat`` set in its ``dap`` section."""
    from ruamel.yaml.comments import CommentedMap

    # A missing, empty or comments-only file: start a mapping, keep those comments in front.
    preamble = text_before.rstrip("\n") + "\n" if document is None and text_before.strip() else ""
    if document is None:
        document = CommentedMap()

    dap = document.get("dap")
    if dap is None:
        dap = document["dap"] = CommentedMap()
    elif not isinstance(dap, dict):
        raise ConfigError(f"dap in {target} is not a mapping", hint="fix the file or use --path")

    conflicts = []
    for dotted, value in flat.items():
        node = dap
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = CommentedMap()
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"dap.{dotted} in {target}: {part} is not a mapping",
                    hint="fix the file or use --path",
                )
            node = child
        old = node.get(leaf)
        if old is not None and old != value and not force:
            conflicts.append((dotted, old, value))
        node[leaf] = value
    if conflicts:
        dotted, old, new = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise ConfigError(
            f"{target} already sets dap.{dotted} to {str(old)!r}, not {str(new)!r}{more}",
            hint="pass --force to overwrite it, or edit the file",
        )
    return preamble + _dump(yaml, document)


def _dump(yaml: Any, document: Any) -> str:
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


def own_target(path: Path) -> Path:
    """The real path of ``path``, resolved one link at a time; ConfigError (exit 2) for a
    link owned by someone other than this user or root. (Whose the file itself is, is
    checked on the descriptor it is read through: :func:`_read_at`.)"""
    uid = os.geteuid()
    resolved, pending, links = Path("/"), list(Path(os.path.abspath(path)).parts[1:]), 0
    while pending:
        candidate = resolved / pending.pop(0)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return _joined(candidate, pending)
        except OSError as error:
            raise ConfigError(f"cannot use {path}: {error.strerror}", hint="use --path") from None
        if not stat.S_ISLNK(info.st_mode):
            resolved = candidate
            continue
        if info.st_uid not in (uid, 0):
            raise ConfigError(
                f"refusing {path}: {candidate} is a symlink owned by another user "
                f"(uid {info.st_uid})",
                hint="remove that link, or write elsewhere with --path",
            )
        links += 1
        if links > 40:
            raise ConfigError(f"refusing {path}: too many symlinks", hint="use --path")
        link = Path(os.readlink(candidate))
        pending = list(link.parts[1:] if link.is_absolute() else link.parts) + pending
        resolved = Path("/") if link.is_absolute() else resolved
    return resolved


def _joined(head: Path, rest: list[str]) -> Path:
    return head.joinpath(*rest) if rest else head


def _check_owner(target: Path, info: os.stat_result) -> None:
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"refusing {target}: it belongs to another user (uid {info.st_uid})",
            hint="write your own file with --path, or --user",
        )


def _open_directory(directory: Path) -> int:
    """A descriptor of ``directory`` (created if missing), opened component by component
    without following any symlink."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        for part in directory.parts[1:]:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            finally:
                os.close(fd)
            fd = next_fd
        return fd
    except OSError as error:
        raise ConfigError(
            f"cannot write in {directory}: {error.strerror} (a symlink there is refused)",
            hint="check the directory, or write elsewhere with --path",
        ) from None


def _read_at(directory: int, target: Path) -> str:
    """The text of ``target`` in ``directory`` ("" if missing), never through a symlink."""
    try:
        fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except FileNotFoundError:
        return ""
    except OSError as error:
        raise ConfigError(
            f"cannot read {target}: {error.strerror}", hint="check the path and its permissions"
        ) from None
    with os.fdopen(fd, "rb") as stream:
        _check_owner(target, os.fstat(stream.fileno()))
        data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read {target}: {error}", hint="fix the file or use --path") from None


def _replace_at(directory: int, target: Path, body: str) -> None:
    """Write ``body`` to a new 0600 file in ``directory``, fsync it and rename it over
    ``target``'s name: whatever was there (a file, a planted link) is replaced, not followed."""
    temporary = f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory
        )
    except OSError as error:
        raise ConfigError(
            f"cannot write in {target.parent}: {error.strerror}",
            hint="check the directory's permissions",
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target.name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException as error:
        try:
            os.unlink(temporary, dir_fd=directory)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise ConfigError(
                f"cannot write {target}: {error.strerror}", hint="check the file's permissions"
            ) from None
        raise
    try:
        os.fsync(directory)
    except OSError:
        pass


def export_lines(values: Mapping[str, Any]) -> list[str]:
    """``export DAP_...=<quoted>`` lines for ``values`` (nested, relative to ``dap``)."""
    lines = []
    for dotted, value in _flatten(values).items():
        if value is None:
            continue
        key = KEYS_BY_PATH.get(dotted)
        if key is None:
            raise KeyError(f"no environment variable for dap.{dotted}")
        lines.append(f"export {key.env}={quote(str(value))}")
    return lines
