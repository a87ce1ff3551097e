"""What every dapfab task does at its edge, in one place.

:func:`reported` wraps a task body in :func:`dapfab.cli.cli_edge` (DapErrors become one
line and their exit code; Ctrl-C, SIGTERM and a closed output their own codes);
:func:`resolve_call` turns the task's ``--runner``, ``-n`` and ``--context`` into what to
run against; :func:`announce` prints a remote command for Invoke's ``--dry`` / ``--echo``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from invoke import Context

from dapfab.cli import cli_edge
from dapfab.config import RunnerConfig, kubectl_defaults

RUNNER_HELP = "named runner profile (dap.runners.NAME); default: $DAP_RUNNER or dap.runner"
NAMESPACE_HELP = "kubectl --namespace (default: dap.kubectl.namespace)"
CONTEXT_HELP = "kubectl --context (default: dap.kubectl.context)"


def reported(body: Callable[..., Any]) -> Callable[..., Any]:
    """Run the task body at the CLI edge (see :func:`dapfab.cli.cli_edge`)."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cli_edge():
            return body(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Call:
    """What one task call runs against: the runner, and kubectl's namespace and context."""

    config: RunnerConfig
    namespace: str | None
    context: str | None


def resolve_call(
    c: Context, runner: str | None, namespace: str | None = None, context: str | None = None
) -> Call:
    """Config files, ``DAP_*`` variables, the ``--runner`` profile, then the task's flags
    (``-n`` and ``--context`` beat every configured value)."""
    from dapfab.commands import validate_context, validate_namespace

    config = RunnerConfig.from_invoke_config(c.config, runner=runner)
    default_ns, default_ctx = kubectl_defaults(c.config, runner=runner)
    return Call(
        config,
        validate_namespace(namespace) if namespace is not None else default_ns,
        validate_context(context) if context is not None else default_ctx,
    )


def run_options(c: Context) -> dict[str, bool]:
    """Invoke's own ``--dry`` and ``--echo`` flags, as run() options."""
    run = c.config.get("run", {})
    return {"dry": bool(run.get("dry")), "echo": bool(run.get("echo"))}


def announce(c: Context, reference: str) -> bool:
    """Print ``reference`` for ``--dry`` (stdout) or ``--echo`` (stderr); True if dry, when
    the task must run nothing."""
    options = run_options(c)
    if options["dry"] or options["echo"]:
        print(reference, file=sys.stdout if options["dry"] else sys.stderr, flush=True)
    return options["dry"]
