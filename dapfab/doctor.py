"""``config.doctor``: test every hop to the runner, in order, and say which one fails and how.

Each check is a small function over a :class:`~dapfab.config.RunnerConfig` returning a
:class:`Check`: OK or FAIL, what it found, the fix, and the exit code of its hop (docs/design.md §5):

=====================================================  ====
config valid; key readable                             2
gateway reachable, host key known                      255
management host reachable, host key known, auth works  255
login shell is POSIX; incus present; VM exists and     125
running; ``bash -lc`` works in the VM; the launcher's
coreutils/util-linux tools are present
kubectl present; curl present                          127 (bash's code for a missing command)
kubeconfig present; API server answers                 kubectl's own code (1)
=====================================================  ====

A check that cannot run because one it depends on failed is reported as SKIP. The doctor's
exit code is the code of the first failing check (0 when all pass).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dapfab.connection import POOL, check_key_file
from dapfab.errors import DapError, DapTimeout, SSHError, shown
from dapfab.quoting import join, quote
from dapfab.remote import scripts
from dapfab.remote.incus import client_words, exec_argv
from dapfab.run import run_in_runner

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

# Tools with a check of their own (with its own exit code and fix).
OWN_CHECKS = ("curl", "socat", "kubectl")
REMOTE_TIMEOUT = 30.0  # seconds for one doctor command on mgmt or in the VM
API_TIMEOUT = 5  # kubectl --request-timeout for the API server check


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``ok`` True/False, or None when it was skipped."""

    name: str
    ok: bool | None
    detail: str = ""
    fix: str = ""
    exit_code: int = 0

    def line(self) -> str:
        """The line ``config.doctor`` prints for this check."""
        status = {True: "OK", False: "FAIL", None: "SKIP"}[self.ok]
        text = f"{status:<4}  {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if self.ok is False and self.fix:
            text += f" (fix: {self.fix})"
        return shown(text)


def passed(name: str, detail: str = "") -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str, exit_code: int) -> Check:
    return Check(name, False, detail, fix, exit_code)


def from_error(name: str, err: DapError) -> Check:
    """A FAIL made from a DapError: its message, its hint as the fix, its exit code."""
    return failed(name, err.message, err.hint or "", err.exit_code)


# ------------------------------------------------------------------ config and key file

CONFIG = "config valid"
KEY = "key readable"
GATEWAY = "gateway reachable, host key known"
MGMT = "management host reachable, host key known, auth works"
SHELL = "login shell is POSIX"
INCUS = "incus present"
VM = "VM exists and running"
BASH = "bash -lc works in the VM"
TOOLS = "launcher tools present (coreutils, util-linux)"
KUBECTL = "kubectl present"
KUBECONFIG = "kubeconfig present"
API = "API server answers (kubectl version)"
CURL = "curl present"
SOCAT = "socat present"
ORDER = (CONFIG, KEY, GATEWAY, MGMT, SHELL, INCUS, VM, BASH, TOOLS, KUBECTL, KUBECONFIG, API, CURL,
         SOCAT)


def check_config(load: Callable[[], RunnerConfig]) -> tuple[Check, RunnerConfig | None]:
    """``load`` builds the RunnerConfig (layering and validation); the placeholder fails."""
    try:
        config = load()
        config.check_configured()
    except DapError as err:
        return from_error(CONFIG, err), None
    via = f" via {config.gateway}" if config.gateway else ""
    return passed(CONFIG, f"{config.ssh_host}{via}, VM {config.vm_name}"), config


def check_key(config: RunnerConfig) -> Check:
    try:
        path = check_key_file(config)
    except DapError as err:
        return from_error(KEY, err)
    if path is None:
        return passed(KEY, "no key file configured; ssh-agent and ssh_config keys are used")
    return passed(KEY, path)


# ------------------------------------------------------------------ SSH hops


def check_hops(config: RunnerConfig) -> tuple[Check, Check]:
    """Connect every hop: the gateway's check and the management host's check."""
    try:
        with POOL.session(config) as (link, _channel):
            hops = link.hops
    except SSHError as err:
        check = from_error(MGMT, err)
        if err.hop.startswith("ssh gateway"):
            return from_error(GATEWAY, err), Check(MGMT, None, "the gateway failed")
        gateway = passed(GATEWAY, "reached" if config.gateway else "none configured")
        return gateway, check
    except DapError as err:
        return from_error(GATEWAY, err), Check(MGMT, None, "the gateway failed")
    if hops == 1:
        gateway = passed(GATEWAY, "none configured")
    else:
        gateway = passed(GATEWAY, config.gateway or "ProxyJump from ssh_config")
    return gateway, passed(MGMT, config.ssh_host)


def on_mgmt(config: RunnerConfig, command: str, timeout: float = REMOTE_TIMEOUT) -> tuple[int, str, str]:
    """Run ``command`` with the management host's login shell: (exit code, stdout, stderr)."""
    with POOL.session(config) as (link, channel):
        channel.exec_command(command)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(1 << 16)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(1 << 16)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if not link.transport.is_active():
                raise link.lost_error()
            if time.monotonic() > deadline:
                raise DapTimeout(f"`{command[:40]}` on the management host took over {timeout:g} s",
                                 hop="doctor", hint="check the management host's load")
            time.sleep(0.01)
        code = channel.recv_exit_status()
    if code == -1:
        raise link.lost_error()
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1][:200]
    return ""


def check_shell(config: RunnerConfig) -> Check:
    """The login shell parses POSIX: ``$((...))`` arithmetic and ``${x:-y}`` expansions."""
    code, out, err = on_mgmt(config, 'echo "dapfab-$((6 * 7))-${DAPFAB_UNSET:-posix}"')
    if code == 0 and out.strip() == "dapfab-42-posix":
        return passed(SHELL)
    return failed(SHELL, f"the login shell did not run POSIX sh code (exit {code}: "
                  f"{_last_line(err, out) or 'no output'})",
                  "give the SSH user a POSIX login shell (sh, bash, dash, zsh)", 125)


def launcher_tools() -> tuple[str, ...]:
    """Every external tool dapfab's VM scripts declare (``# tools:``), less those checked
    on their own."""
    return tuple(tool for tool in scripts.tools_needed() if tool not in OWN_CHECKS)


def check_incus(config: RunnerConfig) -> Check:
    code, out, _ = on_mgmt(config, f"command -v {quote(config.incus)}")
    if code == 0 and out.strip():
        return passed(INCUS, out.strip())
    return failed(INCUS, f"`{config.incus}` is not installed on the management host "
                  "(not on its login PATH)",
                  "install incus there, or set dap.runner.incus (e.g. `lxc` for LXD)", 125)


def check_vm(config: RunnerConfig) -> Check:
    code, out, err = on_mgmt(config, join([*client_words(config), "info", config.vm_name]))
    status = ""
    for line in out.splitlines():
        if line.strip().lower().startswith("status:"):
            status = line.split(":", 1)[1].strip().upper()
    if code == 0 and status == "RUNNING":
        return passed(VM, f"{config.vm_name} is RUNNING")
    if code == 0:
        return failed(VM, f"VM {config.vm_name} is not running ({status or 'unknown state'})",
                      f"start it: {config.incus} start {config.vm_name}", 125)
    return failed(VM, f"VM {config.vm_name} not found ({_last_line(err, out)})",
                  f"check dap.runner.vm / dap.runner.project; `{config.incus} list` shows the "
                  "instances", 125)


def in_vm_directly(config: RunnerConfig, code: str) -> tuple[int, str, str]:
    """``incus exec VM -T -- bash -lc CODE`` without the launcher (to test what it needs)."""
    return on_mgmt(config, join(exec_argv(config, ["bash", "-lc", code])))


def check_bash(config: RunnerConfig) -> Check:
    code, out, err = in_vm_directly(config, "echo dapfab-bash-ok")
    if code == 0 and out.strip().endswith("dapfab-bash-ok"):
        return passed(BASH)
    return failed(BASH, f"`bash -lc` failed in the VM (exit {code}: {_last_line(err, out)})",
                  "install bash in the VM and check its login files (~/.profile, ~/.bash_profile)",
                  125)


def check_tools(config: RunnerConfig) -> Check:
    tools = launcher_tools()
    probe = "for t in " + " ".join(tools) + '; do command -v "$t" >/dev/null || printf "%s " "$t"; done'
    code, out, err = in_vm_directly(config, probe)
    missing = out.split()
    if code == 0 and not missing:
        return passed(TOOLS, " ".join(tools))
    if code != 0:
        return failed(TOOLS, f"could not look for the tools (exit {code}: {_last_line(err)})",
                      "check bash and the VM's login PATH", 125)
    return failed(TOOLS, f"missing in the VM: {' '.join(missing)}",
                  "install coreutils and util-linux in the VM", 125)


# ------------------------------------------------------------------ in the VM, through the launcher


def in_vm(config: RunnerConfig, code: str) -> Any:
    """Run ``code`` in the VM through the launcher, as every dapfab command runs."""
    direct = dataclasses.replace(config, persist=0)  # a live keeper must not hide a broken path
    return run_in_runner(direct, code, hide=True, warn=True, in_stream=False,
                         timeout=REMOTE_TIMEOUT)


def check_command(config: RunnerConfig, name: str, program: str, fix: str) -> Check:
    result = in_vm(config, f"command -v {quote(program)}")
    if result.exited == 0 and result.stdout.strip():
        return passed(name, result.stdout.strip())
    return failed(name, f"`{program}` is not on the VM's login PATH", fix, 127)


def check_kubeconfig(config: RunnerConfig) -> Check:
    result = in_vm(config, "kubectl config current-context")
    if result.exited == 0 and result.stdout.strip():
        return passed(KUBECONFIG, f"context {result.stdout.strip()}")
    return failed(KUBECONFIG, f"no usable kubeconfig in the VM ({_last_line(result.stderr)})",
                  "put a kubeconfig at ~/.kube/config of the VM user (or set KUBECONFIG in its "
                  "login profile)", result.exited or 1)


def check_api(config: RunnerConfig) -> Check:
    result = in_vm(config, f"kubectl version --request-timeout={API_TIMEOUT}s")
    if result.exited == 0:
        server = [line for line in result.stdout.splitlines() if line.startswith("Server")]
        return passed(API, server[0] if server else "answered")
    return failed(API, f"kubectl version failed with exit {result.exited} "
                  f"({_last_line(result.stderr, result.stdout)})",
                  "check that the API server runs and that the VM reaches it "
                  "(kubectl cluster-info in the VM)", result.exited)


# ------------------------------------------------------------------ the whole run


def run_checks(load: Callable[[], RunnerConfig]) -> Iterator[Check]:
    """Every check in order; a check whose prerequisite failed is yielded as SKIP."""
    config_check, config = check_config(load)
    yield config_check
    if config is None:
        yield from _skipped(ORDER[1:], CONFIG)
        return
    key = check_key(config)
    yield key
    if not key.ok:
        yield from _skipped(ORDER[2:], KEY)
        return
    gateway, mgmt = check_hops(config)
    yield gateway
    yield mgmt
    if not mgmt.ok:
        yield from _skipped(ORDER[4:], GATEWAY if not gateway.ok else MGMT)
        return
    staged: tuple[tuple[str, Callable[[RunnerConfig], Check]], ...] = (
        (SHELL, check_shell), (INCUS, check_incus), (VM, check_vm), (BASH, check_bash),
        (TOOLS, check_tools),
    )
    for name, check in staged:
        result = _guarded(name, check, config)
        yield result
        if not result.ok:
            yield from _skipped(ORDER[ORDER.index(name) + 1 :], name)
            return
    kubectl = _guarded(KUBECTL, lambda c: check_command(
        c, KUBECTL, "kubectl", "install kubectl in the VM or put it on its login PATH"), config)
    yield kubectl
    if kubectl.ok:
        kubeconfig = _guarded(KUBECONFIG, check_kubeconfig, config)
        yield kubeconfig
        yield _guarded(API, check_api, config) if kubeconfig.ok else Check(API, None, f"after: {KUBECONFIG}")
    else:
        yield from _skipped((KUBECONFIG, API), KUBECTL)
    yield _guarded(CURL, lambda c: check_command(
        c, CURL, "curl", "install curl in the VM (k8s.curl and runner_curl use it)"), config)
    yield _guarded(SOCAT, lambda c: check_command(
        c, SOCAT, "socat", "install socat in the VM (k8s.proxy relays to its socket with it)"), config)


def _guarded(name: str, check: Callable[[RunnerConfig], Check], config: RunnerConfig) -> Check:
    """Run one check; a DapError while running it (a hop died, a timeout) is its FAIL."""
    try:
        return check(config)
    except DapError as err:
        return from_error(name, err)


def _skipped(names: tuple[str, ...], after: str) -> Iterator[Check]:
    for name in names:
        yield Check(name, None, f"after: {after}")


def doctor(load: Callable[[], RunnerConfig], emit: Callable[[str], None] = print) -> int:
    """Run every check, emitting one line each; the exit code of the first failing check."""
    code = 0
    for check in run_checks(load):
        emit(check.line())
        if check.ok is False and code == 0:
            code = check.exit_code or 1
    return code


__all__ = ["Check", "doctor", "run_checks"]
