"""Helpers of the trust tests: the CLI as a real process, sshd logins, leftover processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Fault -> seconds the CLI took, reported at the end of the run (conftest's terminal summary).
TIMINGS: dict[str, float] = {}

# Processes that belong to the lab itself, not to a dapfab command.
LISTENER = "[listener]"

# Kubectl plugins in the runner (`kubectl dump-argv ...` etc.), on the login PATH.
PLUGINS = {
    "kubectl-dump_argv": "#!/bin/bash\nprintf '%s\\0' \"$@\"\n",
    "kubectl-stream": "#!/bin/bash\nwhile :; do echo tick; sleep 0.5; done\n",
    "kubectl-argv_exact": "#!/bin/bash\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n",
    "kubectl-argc": "#!/bin/bash\necho \"$#\"; printf '%s' \"$@\" | sha256sum | cut -d' ' -f1\n",
}


@dataclass
class Done:
    """A finished CLI run: exit code, output, and seconds from start to exit."""

    returncode: int
    stdout: bytes
    stderr: bytes
    elapsed: float

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def cli_env(lab, env: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict:
    """The environment of a CLI run against the lab: lab's DAP_* vars, ``env`` over them."""
    full = {**os.environ, **lab.env(), **(env or {})}
    for name in ("DAP_RUNNER", "DAP_DEBUG", "SSH_AUTH_SOCK", *drop):
        if name not in (env or {}):
            full.pop(name, None)
    return full


def cli_argv(*argv: str, program: str = "invoke") -> list[str]:
    """``inv ARGV`` (with the tasks.py of the working directory), or ``dap ARGV`` as its sh
    part starts it: the thin path when it can, else the full program."""
    if program == "invoke":
        return [sys.executable, "-m", "invoke", *argv]
    return [sys.executable, "-I", "-S", str(REPO / "dapfab" / "thin.py"), *argv]


def sshd_logins(lab) -> dict[str, int]:
    """How many public-key logins each lab sshd has accepted so far."""
    counts = {}
    for host in ("bastion", "mgmt"):
        log = lab.state_dir / host / "sshd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        counts[host] = text.count("Accepted publickey")
    return counts


def leftovers(lab) -> dict[str, list]:
    """Processes a dapfab command may have left: on mgmt (beyond the listening sshd) and in
    the runner (everything but its init, dapfab's nested PID namespaces included)."""
    mgmt = [(pid, argv) for pid, argv in lab.processes("mgmt")
            if not any(LISTENER in word for word in argv)]
    return {"mgmt": mgmt, "runner": lab.processes("runner", nested=True)}


def wait_no_leftovers(lab, timeout: float = 20.0) -> dict[str, list]:
    """Poll until nothing of a command is left on mgmt or in the runner; return what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(lab)
        if not left["mgmt"] and not left["runner"]:
            return left
        if time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def start_cli(lab, *argv: str, env: dict | None = None, drop: tuple[str, ...] = (),
              prefix: tuple[str, ...] = (), **kwargs) -> subprocess.Popen:
    """Start the CLI in the background (the caller waits for or kills it by its PID), under
    ``prefix`` (e.g. :data:`UNPRIVILEGED_READS`) if given."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([*prefix, *cli_argv(*argv)], cwd=REPO, env=cli_env(lab, env, drop),
                            **kwargs)


# Root without the capabilities that let it read any file: an unprivileged reader, with the
# same Python and packages (a mode-000 key is then really unreadable).
UNPRIVILEGED_READS = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def sshd_sessions(lab, host: str) -> list[int]:
    """PIDs of the sshd processes serving connections on ``host`` (not its listener)."""
    return [pid for pid, argv in lab.processes(host)
            if argv[0].startswith("sshd") and LISTENER not in " ".join(argv)]


@contextlib.contextmanager
def frozen(lab, host: str) -> Iterator[None]:
    """Every sshd session process of ``host`` stopped (SIGSTOP) while the block runs."""
    pids = sshd_sessions(lab, host)
    assert pids, f"no sshd session on {host}"
    for pid in pids:
        lab.freeze(pid)
    try:
        yield
    finally:
        for pid in pids:
            lab.thaw(pid)
