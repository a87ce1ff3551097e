"""This repository's tests use the lab's fixtures, opted in as any project would."""

pytest_plugins = ["dapfab.testing.plugin"]
