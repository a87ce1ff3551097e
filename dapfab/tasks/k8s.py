"""``k8s.*`` tasks: kubectl, port-forwards and in-cluster HTTP through the runner VM."""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
import threading
from typing import Any

from invoke import Collection, Context, Exit, task

from dapfab.commands import (
    KUBECTL_LOOKUP,
    incus_command,
    kubectl_argv,
    kubectl_missing,
    validate_namespace,
    validate_port,
    validate_seconds,
    validate_url,
    wants_pty,
)
from dapfab.config import DEFAULTS, RunnerConfig
from dapfab.curl import DEFAULT_TIMEOUT as CURL_TIMEOUT
from dapfab.curl import curl_dry_argv, header_lines, runner_curl
from dapfab.curl import exit_code as curl_exit_code
from dapfab.curl import show as show_response
from dapfab.errors import CommandError, ConfigError, DapError, render, shown
from dapfab.quoting import join, quote
from dapfab.streams import on_terminal
from dapfab.tasks.display import ForwardDisplay, close, wait_for_signal
from dapfab.tasks.edge import (
    CONTEXT_HELP,
    NAMESPACE_HELP,
    PARALLEL_HELP,
    RUNNER_HELP,
    Call,
    DapTask,
    announce,
    command_line_remainder,
    fan_out_parallel,
    reported,
    resolve_call,
    resolve_runners,
    run_options,
    single_runner,
)

# What runs commands (dapfab.run, .terminal, .fanout, .forward), what needs cryptography
# (dapfab.bridge, .apiproxy) and dapfab.laptopfiles (tarfile) are imported in the tasks:
# `inv --list` and `--help` import this module and need none of them.


@task(
    klass=DapTask,
    auto_shortflags=False,
    iterable=["args"],
    help={
        "namespace": NAMESPACE_HELP,
        "context": CONTEXT_HELP,
        "runner": RUNNER_HELP,
        "parallel": PARALLEL_HELP,
        "no_laptop_files": "pass file arguments (-f, -k, --from-file, cp) to kubectl as VM "
        "paths instead of shipping the laptop's files (dap.kubectl.laptop_files: false)",
        "args": "for Python callers only: kubectl(c, args=[...]); on the command line put "
        "kubectl's arguments after `--`, where they arrive byte for byte",
    },
)
@reported
def kubectl(
    c: Context,
    namespace: str | None = None,
    context: str | None = None,
    runner: str | None = None,
    parallel: str | None = None,
    no_laptop_files: bool = False,
    args: list[str] | None = None,
) -> None:
    """Run kubectl in the runner VM: inv k8s.kubectl [-n NS] -- ARGS...

    kubectl's arguments go after `--` (without it Invoke says "No idea what 'get' is!").
    stdout/stderr stream, stdin passes through (`apply -f -`), the exit code is kubectl's;
    on a terminal, `exec -it`, `edit` and `attach` get a pty. File arguments that name
    laptop paths (-f deploy/, -k, --from-file, cp) are shipped to the VM.
    """
    from dapfab import thinrecord  # the keeper client: not at `inv --list`
    from dapfab.run import kubectl_in_runner

    words = command_line_remainder(kubectl)
    if words is None:
        words = list(args or [])
    names = resolve_runners(c, runner)
    if names is not None and len(names) > 1:
        if wants_pty(words):
            single_runner(names, "a terminal session (exec -it, edit, attach)")
        _kubectl_fan_out(c, names, words, namespace, context, parallel, not no_laptop_files)
        return
    call = resolve_call(c, names[0] if names else None, namespace, context)
    if not any(run_options(c).values()):
        thinrecord.remember(call)
    pty = wants_pty(words) and on_terminal()
    laptop = not no_laptop_files and call.laptop_files
    try:
        kubectl_in_runner(
            call.config, words, namespace=call.namespace, context=call.context, pty=pty,
            laptop_files=laptop, **run_options(c),
        )
    except CommandError as err:
        # kubectl (or bash) already said why on stderr: pass its exit code through; when
        # bash could not find kubectl itself (127), add where to look.
        if err.exit_code == 127 and not _kubectl_present(call.config):
            print(render(kubectl_missing(call.config.vm_name)), file=sys.stderr, flush=True)
        raise Exit(code=err.exit_code) from None


def _kubectl_fan_out(c: Context, names: list[str], words: list[str], namespace: str | None,
                     context: str | None, parallel: str | None, laptop_files: bool) -> None:
    """``k8s.kubectl`` on several runners at once: prefixed lines, a summary, the exit code
    of the first runner (in order) that failed. Laptop files go to every runner, unless
    ``laptop_files`` is off or the first runner's profile turns them off."""
    from dapfab import laptopfiles
    from dapfab.fanout import run_in_runners

    calls = {name: resolve_call(c, name, namespace, context) for name in names}
    laptop_files = laptop_files and calls[names[0]].laptop_files
    files = laptopfiles.for_fan_out(words) if laptop_files else laptopfiles.Plan(list(words))
    argvs = {name: kubectl_argv(files.args, namespace=call.namespace, context=call.context)
             for name, call in calls.items()}
    data = laptopfiles.bundle(files) if files.needed else b""
    references = [f"[{name}] {incus_command(call.config, join(argvs[name]))}"
                  for name, call in calls.items()]
    if announce(c, "\n".join(files.lines() + references)):
        return
    commands = {name: laptopfiles.runner_code(files, argv, len(data), "")
                if files.needed else join(argv) for name, argv in argvs.items()}
    outcomes = run_in_runners({name: call.config for name, call in calls.items()}, commands,
                              parallel=fan_out_parallel(c, parallel), warn=True,
                              stdin_prefix=data)
    _finish_fan_out(outcomes)


def _finish_fan_out(outcomes: dict[str, Any]) -> None:
    """The summary on stderr, one line per runner; exit with the first failure's code."""
    from dapfab.fanout import exit_code

    for outcome in outcomes.values():
        print(shown(f"dapfab: {outcome.summary()}"), file=sys.stderr, flush=True)
    code = exit_code(outcomes)
    if code:
        raise Exit(code=code)


def _kubectl_present(config: RunnerConfig) -> bool:
    """Whether the VM's login shell finds kubectl (asked only after an exit 127)."""
    from dapfab.run import run_in_runner

    try:
        found = run_in_runner(config, KUBECTL_LOOKUP, hide=True, warn=True, in_stream=False)
    except DapError:
        return True  # cannot tell: say nothing rather than something wrong
    return found.exited == 0


@task(
    klass=DapTask,
    auto_shortflags=False,
    help={
        "target": "what to forward to: pod/NAME, svc/NAME, deploy/NAME (kubectl's TYPE/NAME)",
        "port": "the target's port (for svc/ the service port)",
        "namespace": NAMESPACE_HELP,
        "context": CONTEXT_HELP,
        "runner": RUNNER_HELP,
        "local_port": "port on the runner's 127.0.0.1 (default 0: a free one)",
        "laptop_port": "also listen on this laptop's 127.0.0.1:N (and [::1]:N) and carry "
        "connections to the runner's forward (0: a port free on both)",
    },
)
@reported
def forward(
    c: Context,
    target: str,
    port: str,
    namespace: str | None = None,
    context: str | None = None,
    runner: str | None = None,
    local_port: str | None = None,
    laptop_port: str | None = None,
) -> None:
    """Keep kubectl port-forward running in the runner until Ctrl-C: inv k8s.forward pod/web 8080

    Prints `Forwarding from 127.0.0.1:<port> -> <TARGET>:<PORT> (runner)` once ready (and
    `(laptop)` lines with --laptop-port); restarts kubectl on the same port when it exits.
    """
    from dapfab.forward import forward_command, forward_dry_command, validate_target

    target = validate_target(target)
    remote_port = validate_port(port, what="port")
    runner_port = validate_port(
        local_port if local_port is not None else 0, allow_zero=True, what="--local-port"
    )
    wanted_laptop = (
        None
        if laptop_port is None
        else validate_port(laptop_port, allow_zero=True, what="--laptop-port")
    )
    call = resolve_call(c, single_runner(resolve_runners(c, runner), "a forward"), namespace, context)
    dry = forward_dry_command(forward_command(
        target, remote_port, local_port=runner_port, namespace=call.namespace, context=call.context
    ))
    if announce(c, incus_command(call.config, dry)):
        return
    call.config.check_configured()
    _serve_forward(call, target, remote_port, runner_port, wanted_laptop)


def _serve_forward(
    call: Call, target: str, remote_port: int, runner_port: int, wanted_laptop: int | None
) -> None:
    """Run the forward (and the laptop bridge, with ``wanted_laptop``) until a signal."""
    from dapfab.bridge import LaptopBridge
    from dapfab.forward import Forward

    display = ForwardDisplay()
    bridge = None
    if wanted_laptop is not None:
        bridge = LaptopBridge(call.config, laptop_port=wanted_laptop, on_event=display.event)
        bridge.bind()  # a laptop port in use fails here, before anything is sent
    fwd = Forward(
        call.config, target, remote_port, namespace=call.namespace, context=call.context,
        local_port=runner_port, reconnect=True, on_event=display.event,
    )
    label = f"{target}:{remote_port}"
    try:
        fwd.open()
        display.line(f"Forwarding from 127.0.0.1:{fwd.runner_port} -> {label} (runner)")
        if bridge is not None:
            assert fwd.runner_port is not None
            bridge.start(fwd.runner_port, listener=lambda: fwd.listener)
            for address in bridge.addresses:
                display.line(f"Forwarding from {address}:{bridge.laptop_port} -> {label} (laptop)")
        wait_for_signal(label, fwd, bridge, display)
    finally:
        close(fwd, bridge, display)


def _laptop_file(flag: str, path: str, what: str) -> bytes:
    """The bytes of ``path`` on this machine, for a ``--FLAG @FILE`` value."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {flag} file {path} ({exc.strerror})",
            hint=f"give @FILE with a readable file on this machine{what}",
        ) from None


def _request_body(data: str | None) -> bytes | None:
    """``--data``: the text itself, ``@FILE`` a laptop file, ``@-`` this process's stdin."""
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        return _laptop_file("--data", data[1:], ", or @- for stdin")
    return data.encode("utf-8", "surrogateescape")


def _header_args(values: list[str]) -> list[str]:
    """``--header`` values with each ``@FILE`` replaced by that file's lines (one header a
    line, blank lines skipped, as ``curl -H @file``), so a secret need not be typed."""
    headers: list[str] = []
    for value in values:
        if not value.startswith("@"):
            headers.append(value)
            continue
        text = _laptop_file("--header", value[1:], ", one 'Name: value' a line")
        lines = text.decode("utf-8", "surrogateescape").splitlines()
        headers += [line for line in lines if line.strip()]
    return headers


def response_json(response: Any) -> dict[str, Any]:
    """``{status, headers, body}``, or ``body_base64`` when the body is not UTF-8."""
    out: dict[str, Any] = {"status": response.status, "headers": response.headers}
    try:
        out["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_base64"] = base64.b64encode(response.body).decode("ascii")
    return out


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON with non-ASCII text kept readable, except C1 controls and bidi
    overrides: those become ``\\uXXXX`` escapes (the same JSON) so that a remote body cannot
    drive the terminal (``json.dumps`` escapes C0 itself)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    return re.sub("[\x80-\x9f\u202a-\u202e\u2066-\u2069]",
                  lambda m: f"\\u{ord(m.group()):04x}", text)


@task(
    klass=DapTask,
    auto_shortflags=False,
    iterable=["header"],
    help={
        "url": "the URL, as the runner resolves it (http://web.default.svc:8080/path)",
        "runner": RUNNER_HELP,
        "method": "HTTP method (default GET, POST with --data)",
        "header": "a request header as curl -H takes it (repeatable): 'Name: value' sent as "
        "given, 'Name:' removes one, 'Name;' sends it empty, @FILE reads one a line (keeps "
        "tokens off command lines); never on a remote command line",
        "data": "request body: text, @FILE (a file on this machine) or @- (stdin)",
        "no_fail": "exit 0 for HTTP status >= 400 too (default: exit 22)",
        "json": "print {status, headers, body} as JSON: headers maps each lower-cased name to "
        "the list of its values; body_base64 instead of body when not UTF-8",
        "timeout": f"seconds curl may take, more than 0 (default {CURL_TIMEOUT:g})",
        "parallel": PARALLEL_HELP,
    },
)
@reported
def curl(
    c: Context,
    url: str,
    runner: str | None = None,
    method: str | None = None,
    header: list[str] | None = None,
    data: str | None = None,
    no_fail: bool = False,
    json: bool = False,
    timeout: str | None = None,
    parallel: str | None = None,
) -> None:
    """Run curl in the runner: body to stdout, `HTTP <status>` to stderr; exit 22 on >= 400."""
    url = validate_url(url)
    headers = header_lines(_header_args(header or []))
    seconds = validate_seconds(timeout if timeout is not None else CURL_TIMEOUT,
                               what="--timeout")
    names = resolve_runners(c, runner)
    body = _request_body(data)
    verb = (method or ("POST" if body is not None else "GET")).upper()
    size = None if body is None else len(body)
    dry = curl_dry_argv(url, method=verb, headers=headers, timeout=seconds, body_size=size)
    request = {"method": verb, "headers": headers, "data": body, "timeout": seconds}
    if names is not None and len(names) > 1:
        _curl_fan_out(c, names, url, request, join(dry), json=json, no_fail=no_fail,
                      parallel=parallel)
        return
    from dapfab import thinrecord  # the keeper client: not at `inv --list`

    call = resolve_call(c, names[0] if names else None)
    if announce(c, incus_command(call.config, join(dry))):
        return
    if not any(run_options(c).values()):
        thinrecord.remember(call)
    response = runner_curl(call.config, url, **request)
    if json:
        print(f"HTTP {response.status}", file=sys.stderr, flush=True)
        print(json_text(response_json(response), indent=2), flush=True)
        code = curl_exit_code(response, no_fail=no_fail)
    else:
        code = show_response(response, sys.stdout.buffer, sys.stderr.buffer, no_fail=no_fail)
    if code:
        raise Exit(code=code)


def _curl_fan_out(c: Context, names: list[str], url: str, request: dict[str, Any], dry: str, *,
                  json: bool, no_fail: bool, parallel: str | None) -> None:
    """``k8s.curl`` on several runners at once: each body with its prefix (or one JSON
    object per line, ``runner`` first), ``[name] HTTP <status>`` on stderr, a summary."""
    from dapfab.fanout import fan_out, printers

    configs = {name: resolve_call(c, name).config for name in names}
    if announce(c, "\n".join(f"[{name}] {incus_command(config, dry)}" for name, config in configs.items())):
        return
    lock = threading.Lock()

    def work(name: str, _index: int, abort: threading.Event) -> tuple[Any, int]:
        response = runner_curl(configs[name], url, abort=abort, **request)
        out, err = printers(name, lock)
        assert out is not None and err is not None
        err.write(b"HTTP %d\n" % response.status)
        if json:
            line = json_text({"runner": name, **response_json(response)})
            with lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        else:
            out.write(response.body)
            out.close()
        return response, curl_exit_code(response, no_fail=no_fail)

    _finish_fan_out(fan_out(names, work, parallel=fan_out_parallel(c, parallel)))


@task(
    klass=DapTask,
    auto_shortflags=False,
    help={
        "laptop_port": "listen on this laptop's 127.0.0.1:N and [::1]:N (default 0: a port "
        "free on both)",
        "kubeconfig": "write the kubeconfig here (default: a file of this process in the "
        "user's runtime directory); an existing file dapfab did not write is refused",
        "namespace": "the kubeconfig context's namespace",
        "context": CONTEXT_HELP,
        "runner": RUNNER_HELP,
    },
)
@reported
def proxy(
    c: Context,
    laptop_port: str | None = None,
    kubeconfig: str | None = None,
    namespace: str | None = None,
    context: str | None = None,
    runner: str | None = None,
) -> None:
    """Serve the cluster's API on the laptop for local tools until Ctrl-C: inv k8s.proxy

    Prints `Proxying <runner> API on http://127.0.0.1:<port> (kubeconfig <path>)` and an
    `export KUBECONFIG=<path>` line; the kubeconfig holds the proxy's own token, never the
    runner's credentials, and is deleted when the proxy ends.
    """
    from dapfab.apiproxy import dry_command

    wanted = validate_port(laptop_port if laptop_port is not None else 0, allow_zero=True,
                           what="--laptop-port")
    if namespace is not None:
        validate_namespace(namespace)  # as k8s.kubectl -n: exit 2 before anything is sent
    name = single_runner(resolve_runners(c, runner), "a proxy")
    call = resolve_call(c, name, None, context)
    if announce(c, incus_command(call.config, dry_command(call.context))):
        return
    call.config.check_configured()
    _serve_proxy(call, name, wanted, kubeconfig, namespace)


def _serve_proxy(call: Call, name: str | None, laptop_port: int, kubeconfig: str | None,
                 namespace: str | None) -> None:
    """Run the API proxy until a signal."""
    from dapfab.apiproxy import ApiProxy

    display = ForwardDisplay("proxy")
    proxy = ApiProxy(call.config, laptop_port=laptop_port, kubeconfig=kubeconfig,
                     namespace=namespace, context=call.context, name=name,
                     on_event=display.event)
    try:
        path = proxy.open()
        display.line(f"Proxying {proxy.name} API on {proxy.url} (kubeconfig {path})")
        display.line(f"export KUBECONFIG={quote(str(path))}")
        wait_for_signal(proxy.name, proxy, proxy.bridge, display)
    finally:
        close(proxy, None, display)


ns = Collection("k8s", kubectl, forward, curl, proxy)
ns.configure({"dap": copy.deepcopy(DEFAULTS)})
