"""The lab's state file: what it recorded (PIDs, backend, grown parts) in ``lab.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dapfab.testing.system import LabError


class StateFile:
    """``<state dir>/lab.json``, read once and kept; any process that drives the same lab
    id sees what the one that built it recorded."""

    def __init__(self, lab_id: int, state_dir: Path) -> None:
        self.lab_id = lab_id
        self.path = state_dir / "lab.json"
        self._data: dict[str, Any] | None = None

    def data(self) -> dict[str, Any]:
        """The recorded state (loaded from the file when another process built the lab)."""
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
            except FileNotFoundError:
                raise LabError(f"lab {self.lab_id} is not up (run lab.up)") from None
        return self._data

    def begin(self, data: dict[str, Any]) -> None:
        """Start the state of a lab being built (saved with :meth:`save`)."""
        self._data = data

    def save(self) -> None:
        """Write the state (atomically) to the file."""
        tmp = self.path.with_name("lab.json.tmp")
        tmp.write_text(json.dumps(self.data()))
        tmp.replace(self.path)

    def forget(self) -> None:
        """Drop what was read: the next :meth:`data` reads the file again."""
        self._data = None
