"""Fake kubectl subcommands in the lab's runner, for tests: kubectl runs ``kubectl-NAME`` plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dapfab.quoting import join
from dapfab.run import run_in_runner


def install_kubectl_plugins(config: Any, plugins: Mapping[str, str]) -> None:
    """Write each ``{"kubectl-name": script}`` to the runner user's ~/bin, on its login PATH.

    ``kubectl name ARGS`` then runs the script with ARGS, exactly as kubectl passes them.
    """
    script = [
        "mkdir -p ~/bin",
        "{ grep -qs dapfab-test ~/.profile || echo 'PATH=$HOME/bin:$PATH # dapfab-test' >> ~/.profile; }",
    ]
    for name, body in plugins.items():
        script.append(f"printf %s {join([body])} > ~/bin/{name} && chmod +x ~/bin/{name}")
    run_in_runner(config, " && ".join(script), hide=True)
