"""Pure command builders and input validation: no I/O, every word quoted once per shell.

The reference remote form (docs/design.md §1), what ``inv --dry`` shows::

    incus [--project P] exec <vm> -T -- bash -lc '<command>'

``<command>`` is shell code for ``bash -lc`` in the VM (for kubectl: :func:`kubectl_command`,
every word quoted once); the whole line is quoted once more for the management host's
login shell (:func:`incus_command`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from dapfab.errors import CommandError, ConfigError
from dapfab.quoting import join
from dapfab.remote.incus import exec_argv

NAME_MAX = 63
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PORT = re.compile(r"[0-9]+")
_INCUS_CLIENT = re.compile(r"[A-Za-z0-9_./+][A-Za-z0-9_./+-]*")

INTERACTIVE_SUBCOMMANDS = {"edit"}
TTY_SUBCOMMANDS = {"exec", "attach", "run", "debug"}
GLOBAL_VALUE_FLAGS = {
    "-n", "--namespace", "--context", "--cluster", "--user", "--kubeconfig", "-s", "--server",
    "--token", "--as", "--as-group", "--cache-dir", "--certificate-authority", "-v", "--v",
    "--request-timeout", "--tls-server-name", "--client-certificate", "--client-key",
}


def validate_name(kind: str, value: Any, *, allow_remote: bool = False) -> str:
    """Return ``value`` if it is a valid VM/project/profile name (docs/design.md §6), else ConfigError.

    ``[A-Za-z0-9][A-Za-z0-9-]*``, at most 63 characters; with ``allow_remote`` an optional
    ``remote:`` prefix (itself a valid name) is accepted.
    """
    hint = f"a {kind} name is letters, digits and '-', starting with a letter or digit, at most {NAME_MAX} characters"
    if not isinstance(value, str):
        raise ConfigError(f"invalid {kind} name {value!r}: not a string", hint=hint)
    parts = value.split(":", 1) if allow_remote else [value]
    if allow_remote and len(parts) == 2:
        hint = f"{hint}; an optional 'remote:' prefix follows the same rule"
    for part in parts:
        if not part or len(part) > NAME_MAX or not _NAME.fullmatch(part) or not part.isascii():
            raise ConfigError(f"invalid {kind} name {value!r}", hint=hint)
    return value


def validate_port(value: Any, *, allow_zero: bool = False, what: str = "port") -> int:
    """Return ``value`` (str or int) as a TCP port 1-65535 (0 too with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    hint = f"give a {what} number from {low} to 65535"
    if isinstance(value, bool):
        raise ConfigError(f"invalid {what} {value!r}", hint=hint)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _PORT.fullmatch(value.strip()) and len(value.strip()) <= 5:
        number = int(value.strip())
    else:
        raise ConfigError(f"invalid {what} {value!r}: not a number", hint=hint)
    if not low <= number <= 65535:
        raise ConfigError(f"invalid {what} {value!r}: out of range", hint=hint)
    return number


SECONDS_MAX = 86400.0


def validate_seconds(value: Any, *, what: str, allow_zero: bool = False) -> float:
    """Return ``value`` (str, int or float) as a finite number of seconds, more than 0 (or
    0 too with ``allow_zero``) and at most a day; ConfigError otherwise (``nan``, ``-5``)."""
    low = "0" if allow_zero else "more than 0"
    hint = f"give {what} in seconds, {low} and at most {SECONDS_MAX:g}"
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {what} {value!r}: not a number", hint=hint) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero) or (
        number > SECONDS_MAX
    ):
        raise ConfigError(f"invalid {what} {value!r}: out of range", hint=hint)
    return number


def validate_namespace(value: Any) -> str:
    """Return ``value`` if it is a Kubernetes namespace name (DNS-1123 label), else ConfigError."""
    if not isinstance(value, str) or len(value) > NAME_MAX or not _NAMESPACE.fullmatch(value):
        raise ConfigError(
            f"invalid namespace {value!r}",
            hint="a namespace is lower-case letters, digits and '-', at most 63 characters",
        )
    return value


def validate_incus_client(value: Any) -> str:
    """Return ``value`` if it can name the Incus client command (``incus``, ``lxc``, a path), else ConfigError."""
    if not isinstance(value, str) or not _INCUS_CLIENT.fullmatch(value):
        raise ConfigError(
            f"invalid incus client {value!r}",
            hint="set dap.runner.incus to a command name such as incus or lxc",
        )
    return value


def validate_context(value: Any) -> str:
    """Return ``value`` if it can be a kubeconfig context name, else ConfigError."""
    if not isinstance(value, str) or not value or value.startswith("-") or _has_control(value):
        raise ConfigError(
            f"invalid kubectl context {value!r}",
            hint="give a context name from `kubectl config get-contexts` in the runner",
        )
    return value


def validate_url(value: Any) -> str:
    """Return ``value`` if it is an http(s) URL curl may fetch: no whitespace or controls."""
    hint = "give a URL such as http://service.namespace:8080/path"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"invalid URL {value!r}", hint=hint)
    if _has_control(value) or any(ch.isspace() for ch in value):
        raise ConfigError(f"invalid URL {value!r}: whitespace or control characters", hint=hint)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ConfigError(f"invalid URL {value!r}: {error}", hint=hint) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(f"invalid URL {value!r}: scheme must be http or https", hint=hint)
    if not parts.hostname:
        raise ConfigError(f"invalid URL {value!r}: no host", hint=hint)
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


# Linux's MAX_ARG_STRLEN: one argument of exec() is at most 32 pages, its NUL included.
ARG_MAX_BYTES = 131072 - 1


def _words(args: Sequence[str], what: str) -> list[str]:
    if isinstance(args, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    words = list(args)
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"{what} must be strings, got {word!r}")
        if "\x00" in word:
            raise ConfigError(
                f"{what} contain a NUL character",
                hint="a command-line argument cannot hold NUL; pass such data on stdin",
            )
    return words


def _check_sizes(words: Sequence[str], what: str) -> None:
    """Refuse, before sending, an argument that the VM's kernel would refuse to exec."""
    for position, word in enumerate(words, 1):
        size = len(word.encode("utf-8", "surrogateescape"))
        if size > ARG_MAX_BYTES:
            raise ConfigError(
                f"{what} {position} is {size} bytes, over the kernel's limit of "
                f"{ARG_MAX_BYTES} bytes for one argument",
                hint="pass large data on stdin or in a file (e.g. -f -)",
            )


def kubectl_argv(
    args: Sequence[str], *, namespace: str | None = None, context: str | None = None
) -> list[str]:
    """``kubectl``, dapfab's ``--namespace``/``--context`` (validated), then ``args`` unchanged."""
    argv = ["kubectl"]
    if namespace is not None:
        argv += ["--namespace", validate_namespace(namespace)]
    if context is not None:
        argv += ["--context", validate_context(context)]
    words = _words(args, "kubectl arguments")
    _check_sizes(words, "kubectl argument")
    return argv + words


def kubectl_command(
    args: Sequence[str], *, namespace: str | None = None, context: str | None = None
) -> str:
    """The kubectl command as shell code for ``bash -lc`` in the VM: each word quoted once."""
    return join(kubectl_argv(args, namespace=namespace, context=context))


def _runner_fields(runner: Any) -> tuple[str, str | None, str]:
    """``(incus, project, vm_name)`` from a RunnerConfig or a mapping with those keys."""
    if isinstance(runner, Mapping):
        incus = runner.get("incus", "incus")
        project = runner.get("project")
        vm = runner.get("vm_name", runner.get("vm"))
    else:
        incus, project, vm = runner.incus, runner.project, runner.vm_name
    if vm is None:
        raise ConfigError("no VM name given", hint="set dap.runner.vm")
    if project is not None:
        validate_name("project", project)
    return validate_incus_client(incus), project, validate_name("VM", vm, allow_remote=True)


def incus_argv(runner: Any, command: str, *, pty: bool = False) -> list[str]:
    """The reference argv ``incus [--project P] exec <vm> -t|-T -- bash -lc <command>``.

    ``runner`` is a :class:`~dapfab.config.RunnerConfig` or a mapping with ``vm_name``
    (or ``vm``), ``incus`` and ``project``; ``command`` is shell code for the VM, already
    quoted for ``bash -lc`` (e.g. :func:`kubectl_command`).
    """
    incus, project, vm = _runner_fields(runner)
    _words([command], "the runner command")
    instance = SimpleNamespace(incus=incus, project=project, vm_name=vm)
    return exec_argv(instance, ["bash", "-lc", command], pty=pty)


def incus_command(runner: Any, command: str, *, pty: bool = False) -> str:
    """:func:`incus_argv` quoted once for the management host's login shell."""
    return join(incus_argv(runner, command, pty=pty))


__all__ = [
    "incus_argv",
    "incus_command",
    "kubectl_argv",
    "kubectl_command",
    "validate_context",
    "validate_name",
    "validate_namespace",
    "validate_port",
    "validate_seconds",
    "validate_url",
]


def wants_pty(args: Sequence[str]) -> bool:
    """Whether kubectl ``args`` ask for a terminal (``edit``, or ``exec``/``attach`` with -t)."""
    words = list(args)
    sub = _subcommand(words)
    if sub in INTERACTIVE_SUBCOMMANDS:
        return True
    if sub not in TTY_SUBCOMMANDS:
        return False
    before_dashdash = words[: words.index("--")] if "--" in words else words
    for word in before_dashdash:
        if word in ("--tty", "--tty=true"):
            return True
        if word.startswith("-") and not word.startswith("--") and "t" in word[1:]:
            return True
    return False


def _subcommand(words: list[str]) -> str | None:
    """kubectl's subcommand: the first word that is neither a flag nor a global flag's value."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in GLOBAL_VALUE_FLAGS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


KUBECTL_LOOKUP = "command -v kubectl"  # asked after an exit 127: was it kubectl that was missing?


def kubectl_missing(vm_name: str) -> CommandError:
    """What to say when the VM's login shell has no kubectl (:data:`KUBECTL_LOOKUP` failed)."""
    return CommandError(
        f"kubectl is not installed in VM {vm_name} (not on its login PATH)",
        hint="install kubectl in the VM or put it on its login PATH; "
        "`inv config.doctor` checks every hop",
    )
