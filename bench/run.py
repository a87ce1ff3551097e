"""dapfab against OpenSSH on the lab path (laptop → bastion → mgmt → incus → runner).

Run as root from the repository: ``python3 bench/run.py`` (options: ``--lab-id N`` (default
``$DAPFAB_LAB_ID`` or 7), ``--reuse`` to use a lab that is already up and leave it up,
``--rows 1,2,...``, ``--quick`` for fewer repetitions, ``--no-write``).

Every row runs both sides in the same process run, pairs interleaved (A B A B ...) so drift
cancels, and reports medians. The table goes to stdout and into ``bench/RESULTS.md`` (the
part above the ``<!-- notes -->`` marker; the notes below it are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKERS = str(REPO / "bench" / "workers.py")
RESULTS = REPO / "bench" / "RESULTS.md"
MIB = 1 << 20
NOTES_MARKER = "<!-- notes -->"
SOURCE_PORT = 9002  # the demo pod's port that sends N pattern bytes after a line with N


@dataclass
class Row:
    """One line of the table."""

    number: int
    name: str
    ours: str = "-"
    theirs: str = "-"
    ratio: float | None = None
    goal: str = ""
    passed: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        # A row with a ratio and a plain goal (``<= x``/``>= x``) is judged by them; others
        # set ``passed`` themselves.
        if self.passed is None and self.ratio is not None and len(self.goal.split()) == 2:
            self.passed = check(self.ratio, self.goal)

    def cells(self) -> list[str]:
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[self.passed]
        return [str(self.number), self.name, self.ours, self.theirs, ratio, self.goal, verdict]


def check(value: float, goal: str) -> bool:
    """Whether ``value`` meets ``goal`` (``<= x`` or ``>= x``)."""
    op, limit = goal.split()
    return value <= float(limit) if op == "<=" else value >= float(limit)


def run_process(argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.DEVNULL,
                sink: bool = False) -> tuple[float, int, int, bytes]:
    """Run argv; (wall seconds, peak RSS KiB of the process itself, exit code, stdout bytes
    counted when ``sink``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin,
                            stdout=subprocess.PIPE if sink else stdout)
    out = b""
    if sink:
        assert proc.stdout is not None
        total = 0
        while chunk := os.read(proc.stdout.fileno(), MIB):
            total += len(chunk)
        proc.stdout.close()
        out = str(total).encode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss, proc.returncode, out


def interleave(runs: int, ours: Callable[[], float], theirs: Callable[[], float]) -> tuple[list[float], list[float]]:
    """A B A B ...: ``runs`` figures of each side."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        a.append(ours())
        b.append(theirs())
    return a, b


class Bench:
    """The lab, the two projects (dapfab's tasks, an empty tasks.py) and the rows."""

    def __init__(self, lab: object, quick: bool) -> None:
        self.lab = lab
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="dapfab-bench-"))
        self.project = self.tmp / "project"
        self.empty = self.tmp / "empty"
        self.project.mkdir()
        self.empty.mkdir()
        (self.project / "tasks.py").write_text(
            "from invoke import Collection\n\n"
            "from dapfab.tasks import config_ns, k8s_ns\n\n"
            "ns = Collection(k8s_ns, config_ns)\n"
        )
        # Invoke refuses a tasks.py without tasks: the baseline has one trivial task.
        (self.empty / "tasks.py").write_text(
            "from invoke import task\n\n\n@task\ndef hello(c):\n    pass\n"
        )
        self.curl_url = f"http://{lab.cluster_address}:8080/status/200"  # type: ignore[attr-defined]
        self.env = dict(os.environ, **lab.env())  # type: ignore[attr-defined]
        self.env.pop("DAP_RUNNER", None)
        self.vm = lab.vm_name  # type: ignore[attr-defined]
        self.incus = lab.incus  # type: ignore[attr-defined]
        self.ssh = ["ssh", "-F", lab.ssh_config]  # type: ignore[attr-defined]
        self.control = str(self.tmp / "cm.sock")
        self.inv = [sys.executable, "-m", "invoke"]
        which = subprocess.run(["sh", "-c", "command -v inv"], capture_output=True, text=True)
        if which.stdout.strip():
            self.inv = [which.stdout.strip()]

    def remote(self, code: str) -> str:
        """What OpenSSH runs on mgmt: ``incus exec VM -- bash -lc CODE``."""
        return f"{self.incus} exec {self.vm} -- bash -lc {shlex.quote(code)}"

    # -- ControlMaster -------------------------------------------------------------------
    def master_up(self) -> None:
        subprocess.run(self.ssh + ["-o", "ControlMaster=yes", "-o", f"ControlPath={self.control}",
                                   "-o", "ControlPersist=yes", "-N", "-f", "mgmt"], check=True,
                       stdin=subprocess.DEVNULL)

    def master_down(self) -> None:
        subprocess.run(self.ssh + ["-o", f"ControlPath={self.control}", "-O", "exit", "mgmt"],
                       capture_output=True)

    def via_master(self) -> list[str]:
        return self.ssh + ["-o", f"ControlPath={self.control}", "-o", "ControlMaster=no"]

    # -- rows ----------------------------------------------------------------------------
    def cold(self, runs: int) -> tuple[Row, Row]:
        """Rows 1 and 8: a cold ``inv k8s.kubectl -- get pods`` as a whole process."""
        rss: list[int] = []

        def ours() -> float:
            wall, peak, code, _ = run_process(self.inv + ["k8s.kubectl", "--", "get", "pods"],
                                              cwd=str(self.project), env=self.env)
            assert code == 0, f"inv k8s.kubectl exited {code}"
            rss.append(peak)
            return wall

        def theirs() -> float:
            wall, _, code, _ = run_process(self.ssh + ["mgmt", self.remote("kubectl get pods")])
            assert code == 0, f"ssh exited {code}"
            return wall

        a, b = interleave(runs, ours, theirs)
        ma, mb = statistics.median(a), statistics.median(b)
        row1 = Row(1, "cold `inv k8s.kubectl -- get pods`", f"{ma * 1000:.0f} ms",
                   f"{mb * 1000:.0f} ms", ma / mb, "<= 1.25")
        peak = max(rss) / 1024
        row8 = Row(8, "peak RSS, cold `inv k8s.kubectl -- get pods`", f"{peak:.1f} MiB", "-",
                   None, "<= 60 MiB", peak <= 60)
        return row1, row8

    def warm(self, runs: int, calls: int) -> Row:
        """Row 2: per call, ``run_in_runner(cfg, 'true')`` vs ssh over a ControlMaster."""

        def ours() -> float:
            out = subprocess.run([sys.executable, WORKERS, "warm", str(calls)], env=self.env,
                                 capture_output=True, text=True, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])["per_call"]

        def theirs() -> float:
            argv = self.via_master() + ["mgmt", self.remote("true")]
            start = time.perf_counter()
            for _ in range(calls):
                subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
            return (time.perf_counter() - start) / calls

        self.master_up()
        try:
            a, b = interleave(runs, ours, theirs)
        finally:
            self.master_down()
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(2, f"warm: {calls} × `run_in_runner(cfg, 'true')`, per call",
                  f"{ma * 1000:.1f} ms", f"{mb * 1000:.1f} ms", ma / mb, "<= 0.8")
        return row

    def stdin(self, runs: int, size: int, number: int = 3, env: dict | None = None) -> Row:
        """Row 3 (14 through a keeper): ``size`` bytes of stdin into ``cat >/dev/null``."""
        env = env or self.env

        def piped(argv: list[str]) -> float:
            start = time.perf_counter()
            head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
            wall, _, code, _ = run_process(argv, env=env, stdin=head.stdout)
            assert head.stdout is not None
            head.stdout.close()
            head.wait()
            assert code == 0, f"{argv[0]} exited {code}"
            del wall
            return time.perf_counter() - start

        a, b = interleave(
            runs,
            lambda: piped([sys.executable, WORKERS, "stdin"]),
            lambda: piped(self.ssh + ["mgmt", f"{self.incus} exec {self.vm} -- sh -c 'cat >/dev/null'"]),
        )
        ta, tb = size / MIB / statistics.median(a), size / MIB / statistics.median(b)
        how = " through a keeper" if number != 3 else ""
        row = Row(number, f"stdin: {size // MIB} MiB into `cat >/dev/null`{how}", f"{ta:.0f} MiB/s",
                  f"{tb:.0f} MiB/s", ta / tb, ">= 0.7")
        return row

    def stdout(self, runs: int, size: int, number: int = 4, env: dict | None = None) -> Row:
        """Row 4 (15 through a keeper): ``size`` bytes from the runner to the laptop's
        stdout; peak RSS of ours."""
        rss: list[int] = []
        env = env or self.env

        def ours() -> float:
            wall, peak, code, out = run_process([sys.executable, WORKERS, "stdout", str(size)],
                                                env=env, sink=True)
            assert code == 0 and int(out) == size, (code, out)
            rss.append(peak)
            return wall

        def theirs() -> float:
            argv = self.ssh + ["mgmt", f"{self.incus} exec {self.vm} -- head -c {size} /dev/zero"]
            wall, _, code, out = run_process(argv, sink=True)
            assert code == 0 and int(out) == size, (code, out)
            return wall

        a, b = interleave(runs, ours, theirs)
        ta, tb = size / MIB / statistics.median(a), size / MIB / statistics.median(b)
        peak = max(rss) / 1024
        how = " through a keeper" if number != 4 else ""
        row = Row(number, f"stdout: {size // MIB} MiB to the laptop{how} (peak RSS {peak:.0f} MiB, goal <= 80)",
                  f"{ta:.0f} MiB/s", f"{tb:.0f} MiB/s", ta / tb, ">= 0.7")
        row.passed = row.passed and peak <= 80
        return row

    def bridge(self, runs: int, size: int) -> Row:
        """Row 5: ``size`` bytes through ``k8s.forward --laptop-port`` vs socat + ssh relays."""
        row = Row(5, f"laptop bridge: {size // MIB} MiB through `k8s.forward --laptop-port`",
                  goal=">= 0.75")
        forward = subprocess.Popen(
            self.inv + ["k8s.forward", "pod/web", str(SOURCE_PORT), "--laptop-port", "0"],
            cwd=str(self.project), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True)
        socat = None
        try:
            ports: dict[str, int] = {}
            deadline = time.monotonic() + 60
            assert forward.stdout is not None
            while len(ports) < 2 and time.monotonic() < deadline:
                line = forward.stdout.readline()
                if not line:
                    break
                if line.startswith("Forwarding from 127.0.0.1:"):
                    port = int(line.split(":", 2)[1].split()[0])
                    ports["laptop" if "(laptop)" in line else "runner"] = port
            if len(ports) < 2:
                row.note = "k8s.forward --laptop-port did not report both ports"
                return row
            # The background cat must not hold the exec's stderr: like LXD's exec server, the
            # lab's incus waits for the last writer of the output before it returns.
            relay = (f"exec 3<>/dev/tcp/127.0.0.1/{ports['runner']} || exit 111\n"
                     "cat <&0 >&3 2>/dev/null &\nexec cat <&3\n")
            script = self.tmp / "relay.sh"
            script.write_text("#!/bin/sh\nexec " + shlex.join(
                self.ssh + ["mgmt", f"{self.incus} exec {self.vm} -- bash -c {shlex.quote(relay)}"]
            ) + "\n")
            script.chmod(0o755)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                socat_port = probe.getsockname()[1]
            socat = subprocess.Popen(
                ["socat", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork",
                 f"EXEC:{script}"], stdin=subprocess.DEVNULL)
            time.sleep(0.3)

            def pull(port: int) -> float:
                start = time.perf_counter()
                with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
                    conn.sendall(b"%d\n" % size)
                    total = 0
                    buf = bytearray(MIB)
                    while n := conn.recv_into(buf):
                        total += n
                wall = time.perf_counter() - start
                if total != size:
                    said = ""
                    if port == ports["laptop"]:  # what k8s.forward says about it
                        forward.terminate()
                        said = "; k8s.forward: " + " | ".join(
                            forward.communicate(timeout=30)[1].strip().splitlines()[-3:])
                    raise AssertionError(f"got {total} of {size} bytes{said}")
                return wall

            a, b = interleave(runs, lambda: pull(ports["laptop"]), lambda: pull(socat_port))
        finally:
            if socat is not None:
                socat.terminate()
                socat.wait()
            forward.terminate()
            try:
                forward.wait(30)
            except subprocess.TimeoutExpired:
                forward.kill()
                forward.wait()
        ta, tb = size / MIB / statistics.median(a), size / MIB / statistics.median(b)
        row.ours, row.theirs, row.ratio = f"{ta:.0f} MiB/s", f"{tb:.0f} MiB/s", ta / tb
        row.passed = check(row.ratio, row.goal)
        return row

    def curl(self, runs: int, count: int) -> Row:
        """Row 6: ``count`` runner_curl calls at once vs ``xargs -P 10`` over a ControlMaster."""
        failed = {"ours": 0, "theirs": 0}

        def ours() -> float:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, WORKERS, "curl", self.curl_url, str(count)],
                                 env=self.env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            failed["ours"] += json.loads(out.stdout.strip().splitlines()[-1])["failures"]
            return wall

        def theirs() -> float:
            start = time.perf_counter()
            self.master_up()
            cmd = shlex.join(self.via_master() + [
                "mgmt", f"{self.incus} exec {self.vm} -- curl -sS -f -o /dev/null {self.curl_url}"])
            proc = subprocess.run(["xargs", "-P", "10", "-I{}", "sh", "-c", cmd + " || echo FAIL"],
                                  input="\n".join(str(i) for i in range(count)) + "\n",
                                  text=True, capture_output=True)
            self.master_down()
            wall = time.perf_counter() - start
            failed["theirs"] += proc.stdout.count("FAIL") + (proc.returncode != 0)
            return wall

        a, b = interleave(runs, ours, theirs)
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(6, f"{count} `runner_curl` at once (failures: ours {failed['ours']}, "
                  f"OpenSSH {failed['theirs']})", f"{ma * 1000:.0f} ms", f"{mb * 1000:.0f} ms",
                  ma / mb, "<= 1.0")
        row.passed = row.passed and failed["ours"] == 0
        return row

    def listing(self, runs: int, rounds: int = 3) -> Row:
        """Row 7: ``inv --list`` with the dapfab collection vs an empty tasks.py; the
        median ratio of ``rounds`` rounds of interleaved runs (one round moves by +-0.1)."""

        def listed(cwd: Path) -> float:
            wall, _, code, _ = run_process(self.inv + ["--list"], cwd=str(cwd), env=self.env)
            assert code == 0, f"inv --list exited {code}"
            return wall

        measured = []
        for _ in range(rounds):
            a, b = interleave(runs, lambda: listed(self.project), lambda: listed(self.empty))
            measured.append((statistics.median(a) / statistics.median(b),
                             statistics.median(a), statistics.median(b)))
        ratio, ma, mb = sorted(measured)[len(measured) // 2]
        ratios = ", ".join(f"{r:.2f}" for r, _, _ in measured)
        row = Row(7, f"`inv --list`: dapfab collection vs empty tasks.py (median of {rounds} "
                  f"rounds: {ratios})", f"{ma * 1000:.0f} ms", f"{mb * 1000:.0f} ms", ratio, "<= 1.1")
        return row

    def import_share(self, runs: int) -> Row:
        """Row 9: dapfab's own import time under ``python3 -X importtime -m invoke --list``
        (the self time of every ``dapfab`` module, summed; median of ``runs``)."""
        shares = []
        for _ in range(runs):
            done = subprocess.run([sys.executable, "-X", "importtime", "-m", "invoke", "--list"],
                                  cwd=str(self.project), env=self.env, capture_output=True,
                                  text=True, check=True)
            shares.append(dapfab_import_ms(done.stderr))
        share = statistics.median(shares)
        return Row(9, "dapfab's modules, self time under `-X importtime -m invoke --list`",
                   f"{share:.1f} ms", "-", None, "<= 25 ms", share <= 25)


    # -- the keeper (rows 10-15) ---------------------------------------------------------
    @property
    def kept(self) -> dict[str, str]:
        """The environment of calls that use a keeper."""
        return dict(self.env, DAP_SSH_PERSIST="60")

    def keeper_up(self) -> None:
        """A live keeper for the lab's connection (one call starts it; wait for it)."""
        from dapfab.config import RunnerConfig
        from dapfab.keeper import client

        config = RunnerConfig.from_env(self.kept)
        self.kubectl(self.kept)
        deadline = time.monotonic() + 20
        while client.status(config) is None:
            assert time.monotonic() < deadline, "no keeper came up"
            time.sleep(0.05)
        self.kubectl(self.kept)  # its connection and helper are warm now

    def keepers_down(self) -> None:
        from dapfab.keeper import client

        client.stop()

    def kubectl(self, env: dict[str, str]) -> float:
        """One ``inv k8s.kubectl -- get pods`` process; its wall time."""
        wall, _, code, _ = run_process(self.inv + ["k8s.kubectl", "--", "get", "pods"],
                                       cwd=str(self.project), env=env)
        assert code == 0, f"inv k8s.kubectl exited {code}"
        return wall

    def ssh_call(self, master: bool) -> float:
        argv = (self.via_master() if master else self.ssh) + ["mgmt", self.remote("kubectl get pods")]
        wall, _, code, _ = run_process(argv)
        assert code == 0, f"ssh exited {code}"
        return wall

    def keeper_calls(self, runs: int) -> list[Row]:
        """Rows 10 and 11: ``inv k8s.kubectl -- get pods`` with a live keeper: dapfab's cost
        above Invoke's own start-up against a ControlMaster call, and the whole call
        against a cold ``ssh -J``."""
        self.keeper_up()
        self.master_up()
        calls: dict[str, list[float]] = {"kept": [], "list": [], "master": [], "cold": []}
        for _ in range(runs):
            calls["kept"].append(self.kubectl(self.kept))
            calls["list"].append(run_process(self.inv + ["--list"], cwd=str(self.empty),
                                             env=self.env)[0])
            calls["master"].append(self.ssh_call(master=True))
            calls["cold"].append(self.ssh_call(master=False))
        self.master_down()
        kept, listing, master, cold = (statistics.median(v) for v in calls.values())
        above = kept - listing
        row10 = Row(10, f"keeper: `inv k8s.kubectl -- get pods` ({kept * 1000:.0f} ms) less "
                    f"`inv --list` ({listing * 1000:.0f} ms), vs a ControlMaster call",
                    f"{above * 1000:.0f} ms", f"{master * 1000:.0f} ms", above / master, "<= 1.5")
        row11 = Row(11, "keeper: `inv k8s.kubectl -- get pods` vs a cold `ssh -J`",
                    f"{kept * 1000:.0f} ms", f"{cold * 1000:.0f} ms", kept / cold, "<= 0.5")
        return [row10, row11]

    def runbook(self, runs: int, calls: int = 50) -> Row:
        """Row 12: ``calls`` sequential ``inv k8s.kubectl`` from a shell loop (the first
        starts the keeper) vs the same number of ``ssh -J`` calls."""

        def loop(argv: list[str], env: dict[str, str], cwd: str | None) -> float:
            script = f"for i in $(seq {calls}); do {shlex.join(argv)} >/dev/null || exit 1; done"
            wall, _, code, _ = run_process(["bash", "-c", script], env=env, cwd=cwd)
            assert code == 0, f"the loop exited {code}"
            return wall

        def ours() -> float:
            self.keepers_down()
            return loop(self.inv + ["k8s.kubectl", "--", "get", "pods"], self.kept, str(self.project))

        a, b = interleave(runs, ours, lambda: loop(
            self.ssh + ["mgmt", self.remote("kubectl get pods")], self.env, None))
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(12, f"{calls} sequential `inv k8s.kubectl -- get pods` (keeper) vs {calls} `ssh -J`",
                  f"{ma:.1f} s", f"{mb:.1f} s", ma / mb, "<= 0.5")
        return row

    def first_call(self, runs: int) -> Row:
        """Row 13: the first call (no keeper yet; it starts one after its output) vs the same
        call with persist 0; keepers are stopped before every sample."""

        def first() -> float:
            self.keepers_down()
            return self.kubectl(self.kept)

        def without() -> float:
            self.keepers_down()
            return self.kubectl(dict(self.env, DAP_SSH_PERSIST="0"))

        a, b = interleave(runs, first, without)
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(13, "first call (starts a keeper) vs persist 0: `inv k8s.kubectl -- get pods`",
                  f"{ma * 1000:.0f} ms", f"{mb * 1000:.0f} ms (persist 0)", ma / mb, "<= 1.1")
        self.keepers_down()
        return row

    def kept_streams(self, runs: int, size: int) -> list[Row]:
        """Rows 14 and 15: rows 3 and 4 through a live keeper."""
        self.keeper_up()
        rows = [self.stdin(runs, size, 14, self.kept), self.stdout(runs, size, 15, self.kept)]
        self.keepers_down()
        return rows


    # -- the thin dap (rows 20-24) ---------------------------------------------------------
    @property
    def dap(self) -> list[str]:
        """The installed ``dap`` script next to this interpreter (no pyenv-style shim in
        front), else the same entry point through ``python -c``."""
        script = Path(sys.executable).with_name("dap")
        if script.exists():
            return [str(script)]
        return [sys.executable, "-c", "from dapfab.cli import main; main()"]

    @property
    def thin_env(self) -> dict[str, str]:
        """Calls that use a keeper, importing this checkout's dapfab."""
        return dict(self.kept, PYTHONPATH=str(REPO))

    def dap_call(self, env: dict[str, str] | None = None) -> float:
        """One ``dap k8s.kubectl -- get pods`` process in the project; its wall time."""
        wall, _, code, _ = run_process(self.dap + ["k8s.kubectl", "--", "get", "pods"],
                                       cwd=str(self.project), env=env or self.thin_env)
        assert code == 0, f"dap k8s.kubectl exited {code}"
        return wall

    def thin_up(self) -> None:
        """A live keeper and a record, so that the next ``dap`` call is thin."""
        from dapfab.config import RunnerConfig
        from dapfab.keeper import client

        self.dap_call()
        config = RunnerConfig.from_env(self.thin_env)
        deadline = time.monotonic() + 20
        while client.status(config) is None:
            assert time.monotonic() < deadline, "no keeper came up"
            time.sleep(0.05)
        self.dap_call()

    def persist_argv(self, command: str = "kubectl get pods") -> list[str]:
        """An OpenSSH call that starts or reuses a ControlPersist master (ServerAliveInterval 5)."""
        return self.ssh + ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
                           "-o", "ControlPersist=60", "-o", "ServerAliveInterval=5",
                           "mgmt", self.remote(command)]

    def persist_call(self) -> tuple[float, int]:
        wall, _, code, _ = run_process(self.persist_argv())
        return wall, code

    def thin_calls(self, runs: int) -> list[Row]:
        """Rows 20 and 21: a warm thin ``dap k8s.kubectl -- get pods`` against an OpenSSH
        ControlPersist call of the same command, and against a cold ``ssh -J``."""
        self.thin_up()
        assert self.persist_call()[1] == 0  # the master is up from here on
        calls: dict[str, list[float]] = {"dap": [], "persist": [], "cold": []}
        for _ in range(runs):
            calls["dap"].append(self.dap_call())
            calls["persist"].append(self.persist_call()[0])
            calls["cold"].append(self.ssh_call(master=False))
        self.master_down()
        ours, persist, cold = (statistics.median(v) for v in calls.values())
        row20 = Row(20, "thin `dap k8s.kubectl -- get pods` vs an OpenSSH ControlPersist call",
                    f"{ours * 1000:.0f} ms", f"{persist * 1000:.0f} ms", ours / persist, "<= 0.8")
        row21 = Row(21, "thin `dap k8s.kubectl -- get pods` vs a cold `ssh -J`",
                    f"{ours * 1000:.0f} ms", f"{cold * 1000:.0f} ms", ours / cold, "<= 0.25")
        return [row20, row21]

    def thin_loop(self, runs: int, calls: int = 50) -> Row:
        """Row 22: ``calls`` sequential ``dap`` calls from a shell loop vs as many OpenSSH
        ControlPersist calls; neither a keeper nor a master before the first."""

        def loop(argv: list[str], env: dict[str, str], cwd: str | None) -> float:
            script = f"for i in $(seq {calls}); do {shlex.join(argv)} >/dev/null || exit 1; done"
            wall, _, code, _ = run_process(["bash", "-c", script], env=env, cwd=cwd)
            assert code == 0, f"the loop exited {code}"
            return wall

        def ours() -> float:
            self.keepers_down()
            return loop(self.dap + ["k8s.kubectl", "--", "get", "pods"], self.thin_env,
                        str(self.project))

        def theirs() -> float:
            self.master_down()
            return loop(self.persist_argv(), self.env, None)

        a, b = interleave(runs, ours, theirs)
        self.master_down()
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(22, f"{calls} sequential `dap k8s.kubectl -- get pods` vs {calls} "
                  "ControlPersist calls", f"{ma:.1f} s", f"{mb:.1f} s", ma / mb, "<= 0.8")
        return row

    def thin_start(self, runs: int) -> Row:
        """Row 23: the thin client's own time, from exec to its ``run`` request at the
        keeper's socket (a stand-in keeper that answers ``hello`` and notes the time),
        against the whole of ``python3 -I -S -c pass``."""
        from dapfab.config import RunnerConfig
        from dapfab.identity import ConnectionIdentity
        from dapfab.keeper import place, wire

        self.thin_up()
        config = RunnerConfig.from_env(self.thin_env)
        path = place.socket_path(place.directory(), ConnectionIdentity.of(config).digest())
        self.keepers_down()  # the stand-in takes the keeper's socket path

        def ours() -> float:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                server.bind(path)
                server.listen(1)
                started = time.perf_counter()
                client = subprocess.Popen(self.dap + ["k8s.kubectl", "--", "get", "pods"],
                                          cwd=str(self.project), env=self.thin_env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                try:
                    conn, _ = server.accept()
                    with conn:
                        reader = wire.Reader(conn)
                        assert reader.next(10)[0].get("op") == "hello"
                        wire.send(conn, {"op": "hello"})
                        message = reader.next(10)
                        took = time.perf_counter() - started
                        assert message[0].get("op") == "run", message[0]
                finally:
                    client.kill()
                    client.wait()
                    os.unlink(path)
            return took

        def bare() -> float:
            return run_process([sys.executable, "-I", "-S", "-c", "pass"])[0]

        a, b = interleave(runs, ours, bare)
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(23, f"thin client, exec to request sent ({ma * 1000:.1f} ms), above "
                  "`python3 -I -S -c pass` (goal <= 15 ms above)", f"{(ma - mb) * 1000:.1f} ms",
                  f"{mb * 1000:.1f} ms", None, "<= 15 ms")
        row.passed = (ma - mb) * 1000 <= 15
        return row

    def after_sleep(self, runs: int, asleep: float = 10.0) -> Row:
        """Row 24: the first call after the connection died silently (the bastion's and
        mgmt's sshd sessions frozen, the keeper stopped ``asleep`` seconds meanwhile) vs a
        cold call; OpenSSH's ControlPersist master (ServerAliveInterval 5) through the same
        is in the note."""

        def sessions() -> list[int]:
            return [pid for host in ("bastion", "mgmt")
                    for pid, argv in self.lab.processes(host)  # type: ignore[attr-defined]
                    if argv[0].startswith("sshd") and "[listener]" not in " ".join(argv)]

        def after(stop: list[int], call: Callable[[], tuple[float, int]]) -> tuple[float, int]:
            frozen = sessions()
            for pid in frozen + stop:
                os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(asleep)
                for pid in stop:
                    os.kill(pid, signal.SIGCONT)
                return call()
            finally:
                for pid in frozen + stop:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

        def dap_once() -> tuple[float, int]:
            wall, _, code, _ = run_process(self.dap + ["k8s.kubectl", "--", "get", "pods"],
                                           cwd=str(self.project), env=self.thin_env)
            return wall, code

        ours, cold, theirs = [], [], []
        for _ in range(runs):
            self.thin_up()
            (keeper,) = self.lab.keepers()  # type: ignore[attr-defined]
            wall, code = after([keeper], dap_once)
            assert code == 0, f"dap exited {code} after the sleep"
            ours.append(wall)
            cold.append(self.dap_call(dict(self.thin_env, DAP_SSH_PERSIST="0")))
            assert self.persist_call()[1] == 0
            master = int(subprocess.run(
                self.ssh + ["-o", f"ControlPath={self.control}", "-O", "check", "mgmt"],
                capture_output=True, text=True).stderr.split("pid=")[1].split(")")[0])
            theirs.append(after([master], self.persist_call))
            self.master_down()
        ma, mc = statistics.median(ours), statistics.median(cold)
        bound = 1.1 * mc + 2
        row = Row(24, f"first call after a silent-dead connection ({asleep:.0f} s asleep) vs a "
                  f"cold call (goal <= 1.1 x cold + 2 s = {bound:.2f} s)", f"{ma:.2f} s",
                  f"{mc:.2f} s (cold dapfab)", ma / mc, "<= 1.1 x + 2 s")
        row.passed = ma <= bound
        row.note = "OpenSSH ControlPersist: " + ", ".join(
            f"{wall:.1f} s exit {code}" for wall, code in theirs)
        return row

    # -- fan-out (rows 16, 17) ------------------------------------------------------------
    def fleet(self) -> dict[str, dict]:
        """The grown lab's runner profiles (8 VMs behind 2 management hosts), grown once."""
        from dapfab.testing import fleet

        fleet.grow(self.lab)
        return fleet.profiles(self.lab)

    def fanout_sleep(self, runs: int) -> Row:
        """Row 16: a 3-second command on the grown lab's 8 runners (2 management hosts) at
        once vs on one of them."""
        profiles = self.tmp / "profiles.json"
        profiles.write_text(json.dumps(self.fleet()))

        def wall(runners: int) -> float:
            done = subprocess.run([sys.executable, WORKERS, "fanout", str(profiles), str(runners), "3"],
                                  env=self.env, capture_output=True, text=True, check=True)
            return json.loads(done.stdout.strip().splitlines()[-1])["wall"]

        a, b = interleave(runs, lambda: wall(8), lambda: wall(1))
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(16, "fan-out: `sleep 3` on 8 runners vs on 1 runner (both dapfab)",
                  f"{ma:.2f} s", f"{mb:.2f} s (1 runner)", ma / mb, "<= 1.3")
        return row

    def fanout_kubectl(self, runs: int) -> Row:
        """Row 17: ``inv k8s.kubectl --runner @eight -- get pods`` over the grown lab's 8
        runners vs a shell loop of 8 ``ssh -J`` calls to the same runners."""
        group = self.tmp / "group"
        group.mkdir(exist_ok=True)
        profiles = self.fleet()
        (group / "tasks.py").write_text((self.project / "tasks.py").read_text())
        (group / "invoke.yaml").write_text(json.dumps({"dap": {
            "runners": profiles, "groups": {"eight": list(profiles)}}}))
        hosts = {self.lab.ssh_host: "mgmt"}  # type: ignore[attr-defined]
        ssh = "; ".join(
            shlex.join(self.ssh + [hosts.get(p["ssh_host"], "mgmt2"),
                                   f"{p['incus']} exec {p['vm']} -- bash -lc 'kubectl get pods'"])
            + " >/dev/null || exit 1" for p in profiles.values())

        def ours() -> float:
            wall, _, code, _ = run_process(self.inv + ["k8s.kubectl", "--runner", "@eight", "--",
                                                       "get", "pods"], cwd=str(group), env=self.env)
            assert code == 0, f"inv exited {code}"
            return wall

        def theirs() -> float:
            wall, _, code, _ = run_process(["bash", "-c", ssh], env=self.env)
            assert code == 0, f"the loop exited {code}"
            return wall

        a, b = interleave(runs, ours, theirs)
        ma, mb = statistics.median(a), statistics.median(b)
        row = Row(17, "fan-out: `inv k8s.kubectl --runner @eight -- get pods` vs 8 `ssh -J` in a loop",
                  f"{ma * 1000:.0f} ms", f"{mb * 1000:.0f} ms", ma / mb, "<= 0.3")
        return row


    # -- the API proxy (rows 18, 19) ------------------------------------------------------
    def api_proxy(self, runs: int, log_size: int) -> list[Row]:
        """Rows 18 and 19, keeper off, kubectl's discovery cache warm on both sides: a local
        ``kubectl get pods`` through ``k8s.proxy`` vs ``inv k8s.kubectl -- get pods``, per
        call; ``log_size`` bytes of ``logs`` both ways."""
        env = {**self.env, "DAP_SSH_PERSIST": "0"}
        proxy = subprocess.Popen(self.inv + ["k8s.proxy"], cwd=str(self.project), env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        try:
            assert proxy.stdout is not None
            first = proxy.stdout.readline()
            kubeconfig = first.rsplit("(kubeconfig ", 1)[1].rstrip(")\n")
            home = self.tmp / "proxy-home"
            home.mkdir(exist_ok=True)
            local_env = {**env, "KUBECONFIG": kubeconfig, "HOME": str(home)}
            kubectl = shutil.which("kubectl") or "kubectl"

            def local(*args: str, sink: bool = False) -> tuple[float, bytes]:
                wall, _, code, out = run_process([kubectl, *args], env=local_env, sink=sink)
                assert code == 0, f"local kubectl exited {code}"
                return wall, out

            def inv(*args: str, sink: bool = False) -> tuple[float, bytes]:
                wall, _, code, out = run_process(self.inv + ["k8s.kubectl", "--", *args],
                                                 cwd=str(self.project), env=env, sink=sink)
                assert code == 0, f"inv exited {code}"
                return wall, out

            local("get", "pods")  # both discovery caches warm
            inv("get", "pods")
            a, b = interleave(runs * 5, lambda: local("get", "pods")[0], lambda: inv("get", "pods")[0])
            ma, mb = statistics.median(a), statistics.median(b)
            calls = Row(18, "API proxy: local `kubectl get pods` through `k8s.proxy` vs "
                        "`inv k8s.kubectl -- get pods`, per call (both dapfab)",
                        f"{ma * 1000:.0f} ms", f"{mb * 1000:.0f} ms", ma / mb, "<= 0.3")
            log = self.lab.state_dir / "cluster" / "pods" / "default_web.log"  # type: ignore[attr-defined]
            line = b"x" * 63 + b"\n"
            with open(log, "ab") as f:
                for _ in range(log_size // (len(line) << 14)):
                    f.write(line * (1 << 14))
            size = log.stat().st_size

            def count(out: bytes) -> None:
                assert int(out) >= size - (1 << 20), (int(out), size)

            def ours() -> float:
                wall, out = local("logs", "web", sink=True)
                count(out)
                return wall

            def theirs() -> float:
                wall, out = inv("logs", "web", sink=True)
                count(out)
                return wall

            a, b = interleave(runs, ours, theirs)
            ta, tb = size / MIB / statistics.median(a), size / MIB / statistics.median(b)
            logs = Row(19, f"API proxy: {size // MIB} MiB of `logs` through `k8s.proxy` vs through "
                       "`inv k8s.kubectl -- logs` (both dapfab)", f"{ta:.0f} MiB/s", f"{tb:.0f} MiB/s",
                       ta / tb, ">= 0.7")
            return [calls, logs]
        finally:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()


def dapfab_import_ms(report: str) -> float:
    """The summed self time (ms) of dapfab's modules in a ``-X importtime`` report."""
    total = 0
    for line in report.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|")
        if name.strip().split(".")[0] == "dapfab":
            total += int(self_us)
    return total / 1000


def table(rows: list[Row]) -> str:
    head = ["#", "benchmark", "dapfab", "OpenSSH", "ratio", "goal", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in sorted(rows, key=lambda r: r.number):
        cells = row.cells()
        if row.note:
            cells[-1] += f" ({row.note})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(text: str, command: str) -> None:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "dapfab"],
                           capture_output=True, text=True).stdout.strip()
    notes = ""
    if RESULTS.exists():
        old = RESULTS.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(
        "# dapfab against OpenSSH on the lab path\n\n"
        f"Measured {when} at commit {commit}{' (dapfab/ modified)' if dirty else ''}, "
        f"with `{command}` (ratio = dapfab / OpenSSH for times, dapfab / OpenSSH for "
        "throughput; medians of interleaved runs).\n\n"
        f"{text}\n\n" + (notes or NOTES_MARKER + "\n")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-id", type=int, default=int(os.environ.get("DAPFAB_LAB_ID") or 7))
    parser.add_argument("--reuse", action="store_true", help="use a lab that is up; leave it up")
    parser.add_argument("--rows", default=",".join(str(n) for n in range(1, 25)))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    os.environ["DAPFAB_LAB_ID"] = str(args.lab_id)
    sys.path.insert(0, str(REPO))
    from dapfab.testing.lab import Lab

    wanted = {int(n) for n in args.rows.split(",")}
    lab = Lab(args.lab_id)
    reuse = args.reuse and lab.status().get("up")
    if not reuse:
        print(f"bringing lab {args.lab_id} up ...", file=sys.stderr)
        lab.up()
    os.environ["XDG_RUNTIME_DIR"] = str(lab.runtime_dir())  # the lab's keepers live there
    bench = Bench(lab, args.quick)
    q = args.quick
    rows: list[Row] = []
    steps: list[tuple[set[int], Callable[[], None]]] = [
        ({1, 8}, lambda: rows.extend(r for r in bench.cold(3 if q else 7) if r.number in wanted)),
        ({7}, lambda: rows.append(bench.listing(5 if q else 11))),
        ({9}, lambda: rows.append(bench.import_share(3 if q else 7))),
        ({10, 11}, lambda: rows.extend(r for r in bench.keeper_calls(5 if q else 11)
                                       if r.number in wanted)),
        ({12}, lambda: rows.append(bench.runbook(1 if q else 3))),
        ({13}, lambda: rows.append(bench.first_call(3 if q else 7))),
        ({14, 15}, lambda: rows.extend(r for r in bench.kept_streams(1 if q else 3, 256 * MIB)
                                       if r.number in wanted)),
        ({16}, lambda: rows.append(bench.fanout_sleep(1 if q else 3))),
        ({17}, lambda: rows.append(bench.fanout_kubectl(3 if q else 7))),
        ({18, 19}, lambda: rows.extend(r for r in bench.api_proxy(1 if q else 3, 256 * MIB)
                                       if r.number in wanted)),
        ({20, 21}, lambda: rows.extend(r for r in bench.thin_calls(5 if q else 11)
                                       if r.number in wanted)),
        ({22}, lambda: rows.append(bench.thin_loop(1 if q else 3))),
        ({23}, lambda: rows.append(bench.thin_start(5 if q else 11))),
        ({24}, lambda: rows.append(bench.after_sleep(1 if q else 3))),
        ({2}, lambda: rows.append(bench.warm(1 if q else 3, 50 if q else 200))),
        ({3}, lambda: rows.append(bench.stdin(1 if q else 3, 256 * MIB))),
        ({4}, lambda: rows.append(bench.stdout(1 if q else 3, 256 * MIB))),
        ({5}, lambda: rows.append(bench.bridge(1 if q else 3, 1024 * MIB))),
        ({6}, lambda: rows.append(bench.curl(1 if q else 5, 50))),
    ]
    try:
        for numbers, step in steps:
            if numbers & wanted:
                started = time.monotonic()
                try:
                    step()
                except Exception as exc:  # one broken row must not lose the others
                    for n in sorted(numbers & wanted):
                        rows.append(Row(n, f"row {n}", note=f"failed: {exc!r}"[:200]))
                print(f"rows {sorted(numbers & wanted)}: {time.monotonic() - started:.0f} s",
                      file=sys.stderr)
    finally:
        bench.master_down()
        lab.stop_keepers()
        shutil.rmtree(bench.tmp, ignore_errors=True)
        if not reuse:
            lab.down()
    text = table(rows)
    print(text)
    if not args.no_write:
        command = "python3 bench/run.py" + "".join(
            f" {a}" for a in sys.argv[1:])
        write_results(text, command)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
