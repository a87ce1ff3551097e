"""What a finished remote command left: :class:`Result`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    """What a finished remote command left: exit code and the output that was captured."""

    command: str
    exited: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""

    @property
    def stdout(self) -> str:
        """Captured stdout, decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """Captured stderr, decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def return_code(self) -> int:
        """Alias of :attr:`exited`, as in Invoke."""
        return self.exited

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exited == 0

    @property
    def failed(self) -> bool:
        """Whether the command exited non-zero."""
        return not self.ok
