"""The management host's side: the one ``incus``/``lxc exec`` command line every dapfab call
uses, and what the incus client's errors mean (docs/design.md §9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dapfab.errors import RunnerError


def client_words(runner: Any) -> list[str]:
    """``incus [--project P]`` for ``runner`` (anything with ``incus`` and ``project``)."""
    return [runner.incus] + (["--project", runner.project] if runner.project else [])


def exec_argv(runner: Any, argv: Sequence[str], *, pty: bool = False) -> list[str]:
    """``incus [--project P] exec VM -t|-T -- ARGV``: how every command reaches the VM.

    ``runner`` is a :class:`~dapfab.config.RunnerConfig` or anything with ``incus``,
    ``project`` and ``vm_name``, already validated.
    """
    return [*client_words(runner), "exec", runner.vm_name, "-t" if pty else "-T", "--", *argv]


# When the top process exits 127 or 126, the Incus and LXD exec servers report an error
# that the client prints as the last line of its stderr (exit code unchanged); the command's
# own stderr never ends with it unless the command printed it itself.
EXIT_ERROR_LINES = {127: b"Error: Command not found\n", 126: b"Error: Command not executable\n"}


def runner_failure(exit_code: int, stderr: bytes, *, incus: str, vm_name: str) -> RunnerError:
    """The error for a launch that never printed the started marker: the runner hop broke.

    The incus client reports a missing or stopped VM with exit 1 and an ``Error:`` line
    whose wording differs between Incus and LXD, so only stable fragments are matched.
    """
    text = stderr.decode("utf-8", "replace").strip()
    errors = [line[6:].strip() for line in text.splitlines() if line.startswith("Error:")]
    detail = errors[-1] if errors else (text.splitlines()[-1] if text else f"exit {exit_code}")
    lowered = text.lower()
    launcher_missing = RunnerError(
        f"the launcher could not start in VM {vm_name} ({detail})",
        hint="the VM needs bash and util-linux (unshare); `inv config.doctor` checks it",
    )
    if not errors and exit_code == 127 and incus in text:
        return RunnerError(
            f"`{incus}` is not installed on the management host ({detail})",
            hint="install incus there, or set dap.runner.incus (e.g. `lxc` for LXD)",
        )
    if exit_code in EXIT_ERROR_LINES and text.endswith(EXIT_ERROR_LINES[exit_code].decode().strip()):
        # The server's own words for a top process that exits 127/126: here, the launcher's
        # `unshare` or `bash` is missing in the VM (not the VM itself).
        return launcher_missing
    if "not found" in lowered and errors:
        return RunnerError(
            f"VM {vm_name} not found ({detail})",
            hint=f"check dap.runner.vm / dap.runner.project; `{incus} list` shows the instances",
        )
    if "not running" in lowered:
        return RunnerError(
            f"VM {vm_name} is not running ({detail})",
            hint=f"start it: {incus} start {vm_name}",
        )
    if exit_code == 127:
        return launcher_missing
    return RunnerError(
        f"`{incus} exec {vm_name}` failed with exit {exit_code} ({detail})",
        hint="run `inv config.doctor` to test every hop",
    )
