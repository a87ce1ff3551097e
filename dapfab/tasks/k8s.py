"""``k8s.*`` tasks: kubectl, port-forwards and in-cluster HTTP through the runner VM."""

from __future__ import annotations

import copy
from typing import Any

from invoke import Collection, Context, Exit, task

from dapfab.cli import DapTask, cli_edge, command_line_remainder
from dapfab.config import DEFAULTS, RunnerConfig, kubectl_defaults

RUNNER_HELP = "named runner profile (dap.runners.NAME); default: $DAP_RUNNER or dap.runner"


def runner_config(c: Context, runner: str | None) -> RunnerConfig:
    """The RunnerConfig for this task call: config files, DAP_* env, then ``--runner``."""
    return RunnerConfig.from_invoke_config(c.config, runner=runner)


def run_options(c: Context) -> dict[str, Any]:
    """Invoke's own ``--dry`` and ``--echo`` flags, as run() options."""
    run = c.config.get("run", {})
    return {"dry": bool(run.get("dry")), "echo": bool(run.get("echo"))}


@task(
    klass=DapTask,
    auto_shortflags=False,
    iterable=["args"],
    help={
        "namespace": "kubectl --namespace (default: dap.kubectl.namespace)",
        "context": "kubectl --context (default: dap.kubectl.context)",
        "runner": RUNNER_HELP,
        "args": "kubectl arguments, for callers from Python; on the command line put them "
        "after `--`, where they arrive byte for byte",
    },
)
def kubectl(
    c: Context,
    namespace: str | None = None,
    context: str | None = None,
    runner: str | None = None,
    args: list[str] | None = None,
) -> None:
    """Run kubectl in the runner VM: inv k8s.kubectl [-n NS] -- ARGS...

    stdout/stderr stream, stdin passes through (`apply -f -`), the exit code is kubectl's;
    on a terminal, `exec -it`, `edit` and `attach` get a pty.
    """
    from dapfab.commands import validate_context, validate_namespace
    from dapfab.errors import CommandError
    from dapfab.execution import kubectl_in_runner
    from dapfab.terminal import on_terminal, wants_pty

    with cli_edge():
        words = command_line_remainder(kubectl)
        if words is None:
            words = list(args or [])
        config = runner_config(c, runner)
        default_ns, default_ctx = kubectl_defaults(c.config, runner=runner)
        namespace = validate_namespace(namespace) if namespace is not None else default_ns
        context = validate_context(context) if context is not None else default_ctx
        pty = wants_pty(words) and on_terminal()
        try:
            kubectl_in_runner(
                config, words, namespace=namespace, context=context, pty=pty, **run_options(c)
            )
        except CommandError as err:
            # kubectl already said why on stderr: pass its exit code through, nothing more.
            raise Exit(code=err.exit_code) from None


ns = Collection("k8s", kubectl)
ns.configure({"dap": copy.deepcopy(DEFAULTS)})
