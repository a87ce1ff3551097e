"""Writing the ``dap:`` section of an ``invoke.yaml`` safely, and ``--env`` export lines.

Round-trip YAML (ruamel): every other key and every comment of an existing file stays;
a different existing value is never overwritten without ``force``; the file is replaced
atomically (temporary file in the same directory, fsync, rename) and is mode 0600.
"""

from __future__ import annotations

import os
import tempfile
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
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _load(path: Path) -> tuple[str, Any, Any]:
    """``(text, document, yaml)`` for ``path``; ``document`` is None if missing or comments only."""
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    yaml = _yaml()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", None, yaml
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(
            f"cannot read {path}: {reason}", hint="check the path and its permissions"
        ) from None
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
    return text, document, yaml


def write_dap_section(
    path: str | os.PathLike[str], values: Mapping[str, Any], *, force: bool = False
) -> Path:
    """Set ``values`` (nested, relative to ``dap``) in the YAML file at ``path``; return it.

    Keys whose value is ``None`` are skipped. A key that already holds a different value
    raises ConfigError (exit 2, file untouched) unless ``force``. Creates a missing file.
    """
    from ruamel.yaml.comments import CommentedMap

    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    flat = {key: value for key, value in _flatten(values).items() if value is not None}
    text_before, document, yaml = _load(target)
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

    _write_atomically(target, preamble + _dump(yaml, document))
    return target


def _dump(yaml: Any, document: Any) -> str:
    import io

    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


def _write_atomically(target: Path, body: str) -> None:
    """Write ``body`` to ``target`` via a 0600 temporary file in its directory and rename."""
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=directory
        )
    except OSError as error:
        raise ConfigError(
            f"cannot write in {directory}: {error.strerror}",
            hint="check the directory's permissions",
        ) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise ConfigError(
                f"cannot write {target}: {error.strerror}", hint="check the file's permissions"
            ) from None
        raise
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
