"""Running shell code and kubectl in the runner VM: :func:`run_in_runner` and
:func:`kubectl_in_runner`, the public entry points (docs/design.md §3).

Commands without a pty run through :func:`dapfab.calls.run_command`; with ``pty=True``
through :func:`dapfab.terminal.run_with_pty`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from dapfab import laptopfiles
from dapfab.calls import run_command
from dapfab.commands import incus_command, kubectl_argv, kubectl_command, validate_seconds
from dapfab.errors import CommandError
from dapfab.quoting import join
from dapfab.result import Result
from dapfab.streams import caller_stdin, hide_flags
from dapfab.terminal import run_with_pty

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig


def show_reference(reference: str, *, dry: bool, echo: bool) -> bool:
    """Print the reference command for ``dry`` (stdout) or ``echo`` (stderr); whether the
    caller must run nothing (``dry``). The one place where ``--dry``/``--echo`` print."""
    if dry or echo:
        print(reference, file=sys.stdout if dry else sys.stderr, flush=True)
    return dry


def run_in_runner(
    config: RunnerConfig,
    command: str,
    *,
    hide: Any = None,
    warn: bool = False,
    in_stream: Any = None,
    timeout: float | None = None,
    echo: bool = False,
    dry: bool = False,
    pty: bool = False,
    out_stream: IO[Any] | None = None,
    err_stream: IO[Any] | None = None,
) -> Result:
    """Run shell code in the runner VM (``bash -lc``) and return its :class:`Result`.

    Output that ``hide`` keeps off the terminal is captured as bytes; shown output streams
    and is not kept. ``in_stream``: a file-like object for the command's stdin (default: the
    process's stdin unless it is a terminal; ``False`` for none). A non-zero exit raises
    :class:`~dapfab.errors.CommandError` unless ``warn``. ``dry`` prints the reference
    command instead of running it.
    """
    if timeout is not None:
        timeout = validate_seconds(timeout, what="timeout")
    if show_reference(incus_command(config, command, pty=pty), dry=dry, echo=echo):
        return Result(command=command, exited=0)
    if pty:
        result = run_with_pty(config, command)
    else:
        result = run_command(
            config, command, hide=hide, in_stream=in_stream, timeout=timeout,
            out_stream=out_stream, err_stream=err_stream,
        )
    if result.exited != 0 and not warn:
        raise CommandError(
            f"command exited with {result.exited}", exit_code=result.exited, result=result
        )
    return result


def kubectl_in_runner(
    config: RunnerConfig,
    args: Sequence[str],
    *,
    namespace: str | None = None,
    context: str | None = None,
    laptop_files: bool = True,
    **opts: Any,
) -> Result:
    """Run ``kubectl`` in the runner with ``args`` (see :func:`run_in_runner`).

    With ``laptop_files`` (the default), file arguments that name existing laptop paths
    (``-f deploy/``, ``-k``, ``--from-file``, ``cp``) are shipped to the VM and rewritten to
    their VM paths, and ``cp POD:PATH LOCAL`` writes LOCAL here (docs/design.md §15); every
    other word goes as given. Without a pty only.
    """
    if isinstance(args, str):
        raise TypeError("args must be a sequence of strings, not one string")
    files = laptopfiles.plan(list(args)) if laptop_files and not opts.get("pty") else None
    try:
        if files is not None and files.needed:
            return _kubectl_with_files(config, files, namespace, context, opts)
        code = kubectl_command(list(args), namespace=namespace, context=context)
        return run_in_runner(config, code, **opts)
    except CommandError as err:
        err.hop = "kubectl"
        raise


def _kubectl_with_files(config: RunnerConfig, files: Any, namespace: str | None,
                        context: str | None, opts: dict[str, Any]) -> Result:
    """kubectl with laptop files: the bundle goes in front of the command's stdin, the
    command is ``sh/files.sh`` around kubectl; ``cp POD:PATH LOCAL`` is written here."""
    argv = kubectl_argv(files.args, namespace=namespace, context=context)
    reference = join(argv)
    dry, echo = bool(opts.pop("dry", False)), bool(opts.pop("echo", False))
    warn = bool(opts.pop("warn", False))
    data = laptopfiles.bundle(files)  # over the cap: exit 2 before anything is sent
    if dry or echo:
        print("\n".join(files.lines()), file=sys.stdout if dry else sys.stderr, flush=True)
    if show_reference(incus_command(config, reference), dry=dry, echo=echo):
        return Result(command=reference, exited=0)
    nonce = laptopfiles.new_nonce()
    code = laptopfiles.runner_code(files, argv, len(data), nonce)
    opts["in_stream"] = laptopfiles.stdin_for(data, caller_stdin(opts.get("in_stream")))
    sink = None
    if files.fetch is not None and not hide_flags(opts.get("hide"))[0]:
        sink = laptopfiles.FetchSink(nonce, opts.get("out_stream") or sys.stdout)
        opts["out_stream"] = sink
    result = run_in_runner(config, code, warn=True, **opts)
    result.command = reference
    if files.fetch is not None:
        fetched = sink.fetched if sink is not None else None
        if sink is None:
            result.stdout_bytes, fetched = laptopfiles.split_fetched(result.stdout_bytes, nonce)
        if result.exited == 0 and fetched is not None:
            laptopfiles.receive(files.fetch, fetched)
    if result.exited != 0 and not warn:
        raise CommandError(
            f"command exited with {result.exited}", exit_code=result.exited, result=result
        )
    return result
