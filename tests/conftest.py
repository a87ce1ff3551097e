"""This repository's tests use the lab's fixtures, opted in as any project would."""

import sys
from pathlib import Path

# tests/trust/trust_helpers.py: the CLI runs and probes that every lab tier shares.
sys.path.insert(0, str(Path(__file__).resolve().parent / "trust"))

pytest_plugins = ["dapfab.testing.plugin"]
