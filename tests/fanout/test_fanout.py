"""Fan-out on the grown lab: one k8s.kubectl or k8s.curl over the runners behind two
management hosts at once (8 on the netns backend, 6 on the LXD one: ``dapfab.testing.fleet``),
next to profiles that fail at a hop: a VM that does not exist, a management host that does
not answer, a stopped VM and a host cut off from the bastion.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

LINES = 10_000
PLUGINS = {
    "kubectl-many_lines": f"#!/bin/bash\nfor ((i=0;i<{LINES};i++)); do echo \"line $i of a runner\"; done\n",
    "kubectl-sha": "#!/bin/bash\nsha256sum | cut -c1-64\n",
    "kubectl-fan_stream": "#!/bin/bash\nwhile :; do echo tick; sleep 0.5; done\n",
    "kubectl-exit_with": "#!/bin/bash\nexit \"$1\"\n",
    "kubectl-forge": "#!/bin/bash\nprintf 'a\\tb\\033[2K\\033[G[prod-eu] forged \\302\\233 \\233 \\342\\200\\256 \\303\\251\\n'\n",
    "kubectl-span": "#!/bin/bash\necho \"start $(date +%s.%N)\"; sleep \"$1\"; echo \"end $(date +%s.%N)\"\n",
}
BIG = 256 << 20
LINE_BOUND = 1 << 20  # the longest piece of a line fan-out prints (README)
TICKS = 40
# The same plugin names do other things on the first runner than on the others.
FIRST_PLUGINS = {
    "kubectl-take": "#!/bin/bash\nhead -c 10 | wc -c\n",  # reads 10 bytes and closes stdin
    "kubectl-flood": f"#!/bin/bash\nhead -c {BIG} /dev/zero | tr '\\0' x; echo\n",  # one line
}
OTHER_PLUGINS = {
    "kubectl-take": PLUGINS["kubectl-sha"],
    "kubectl-flood": f"#!/bin/bash\nfor ((i=0;i<{TICKS};i++)); do echo \"tick $i\"; sleep 0.1; done\n",
}


@pytest.fixture(scope="module")
def runners(dapfab_lab) -> dict[str, dict]:
    """The grown lab's runner profiles, each with the test plugins installed."""
    from dapfab.config import RunnerConfig
    from dapfab.testing import fleet
    from dapfab.testing.kubectl_plugins import install_kubectl_plugins

    fleet.grow(dapfab_lab)
    dapfab_lab.reset()  # a reused lab: every VM up
    profiles = fleet.profiles(dapfab_lab)
    for index, p in enumerate(profiles.values()):
        install_kubectl_plugins(RunnerConfig(
            ssh_host=p["ssh_host"], ssh_key=p["ssh_key"], gateway=p["gateway"], vm_name=p["vm"],
            incus=p["incus"], known_hosts=dapfab_lab.known_hosts, host_key_policy="reject",
            persist=0), {**PLUGINS, **(OTHER_PLUGINS if index else FIRST_PLUGINS)})
    return profiles


@pytest.fixture
def GOOD(runners) -> list[str]:  # noqa: N802 (a constant of the module, per lab backend)
    return list(runners)


@pytest.fixture
def project(lab, runners, tmp_path) -> Path:
    """A project whose invoke.yaml defines the profiles (and nothing comes from DAP_*)."""
    import yaml

    first = next(iter(runners.values()))
    profiles = {**runners, "novm": {**first, "vm": "no-such-vm"},
                "nohost": {**first, "ssh_host": "root@198.51.100.7", "ssh": {"connect_timeout": 3}}}
    (tmp_path / "invoke.yaml").write_text(yaml.safe_dump({"dap": {
        "ssh": {"known_hosts": lab.known_hosts, "persist": 0, "connect_timeout": 5},
        "runners": profiles,
        "groups": {"all": list(runners), "mixed": ["m1-r1", "novm", "m2-r1", "nohost"]},
    }}))
    (tmp_path / "tasks.py").write_text(
        "from invoke import Collection\nfrom dapfab.tasks import ns as d\n"
        "ns = Collection(d.collections['k8s'], d.collections['config'])\n")
    return tmp_path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}


def inv(project: Path, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=project, env=env(),
                          capture_output=True, timeout=180, **kwargs)


def test_every_line_arrives_whole_with_its_runners_prefix(project, GOOD):
    done = inv(project, "k8s.kubectl", "--runner", "@all", "--", "many-lines")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split(b"\n")
    assert lines.pop() == b""
    for name in GOOD:
        mine = [line for line in lines if line.startswith(f"[{name}] ".encode())]
        assert mine == [f"[{name}] line {i} of a runner".encode() for i in range(LINES)]
    assert len(lines) == LINES * len(GOOD)  # nothing else, nothing split or mixed
    summary = done.stderr.decode().splitlines()
    assert [line.split(" exit ")[0] for line in summary] == [f"dapfab: [{n}]" for n in GOOD]
    assert all(" exit 0 in " in line for line in summary)


def test_stdin_is_fed_to_every_runner(project, GOOD):
    blob = os.urandom(3 << 20)
    done = inv(project, "k8s.kubectl", "--runner", "@all", "--", "sha", input=blob, stdin=None)
    want = hashlib.sha256(blob).hexdigest()
    assert sorted(done.stdout.decode().splitlines()) == sorted(f"[{n}] {want}" for n in GOOD)
    assert done.returncode == 0


def test_failed_hops_are_summarised_and_the_others_finish(project):
    done = inv(project, "k8s.kubectl", "--runner", "@mixed", "--", "exit-with", "0")
    summary = dict(line.split(" exit ", 1) for line in done.stderr.decode().splitlines()
                   if line.startswith("dapfab: ["))
    assert list(summary) == ["dapfab: [m1-r1]", "dapfab: [novm]", "dapfab: [m2-r1]", "dapfab: [nohost]"]
    assert summary["dapfab: [m1-r1]"].startswith("0 in ") and summary["dapfab: [m2-r1]"].startswith("0 in ")
    assert summary["dapfab: [novm]"].startswith("125 in ") and "no-such-vm" in summary["dapfab: [novm]"]
    assert summary["dapfab: [nohost]"].startswith("255 in ") and "198.51.100.7" in summary["dapfab: [nohost]"]
    assert done.returncode == 125  # the first runner, in the order given, that failed


def test_a_host_cut_off_and_a_stopped_vm_fail_alone_while_the_others_finish(project, lab, GOOD):
    from dapfab.testing import fleet

    stopped = [n for n in GOOD if n.startswith("m1-")][-1]  # a VM behind the healthy host
    fleet.stop(lab, stopped)
    with lab.link_cut("bastion", "mgmt2"):  # packets dropped: no answer, no refusal
        done = inv(project, "k8s.kubectl", "--runner", "@all", "--", "exit-with", "0")
    summary = dict(line.split(" exit ", 1) for line in done.stderr.decode().splitlines()
                   if line.startswith("dapfab: ["))
    assert list(summary) == [f"dapfab: [{n}]" for n in GOOD]
    for name in GOOD:
        line = summary[f"dapfab: [{name}]"]
        if name == stopped:
            assert line.startswith("125 in ") and "is not running" in line, line
        elif name.startswith("m2-"):
            assert line.startswith("255 in ") and f"management host {lab.address('mgmt2')}" in line, line
            # One attempt for the host, its failure shared by its runners: not 5 s each in turn.
            assert float(line.split()[2]) < 2 * 5, line
        else:
            assert line.startswith("0 in "), line
    assert done.returncode == 125  # the stopped VM comes before mgmt2's runners in the group


def test_the_exit_code_is_the_first_failure_in_order(project):
    done = inv(project, "k8s.kubectl", "--runner", "m1-r1,m2-r1", "--", "exit-with", "0")
    assert done.returncode == 0
    done = inv(project, "k8s.kubectl", "--runner", "m1-r1,m2-r1", "--parallel", "1", "--", "exit-with", "4")
    assert done.returncode == 4


@pytest.mark.parametrize("argv, says", [
    (("k8s.kubectl", "--runner", "m1-r1,nope", "--", "version"), "unknown runner profile 'nope'"),
    (("k8s.kubectl", "--runner", "m1-r1,m2-r1", "--", "exec", "-it", "web", "--", "sh"), "one runner, not 2"),
    (("k8s.forward", "pod/web", "8080", "--runner", "m1-r1,m2-r1,novm"), "one runner, not 3"),
])
def test_what_cannot_fan_out_is_refused_before_anything_runs(project, lab, argv, says):
    done = inv(project, *argv)
    assert done.returncode == 2 and says in done.stderr.decode(), done.stderr
    assert done.stdout == b""


def test_curl_json_prints_one_object_per_runner(project, lab):
    url = f"http://{lab.cluster_address}:8080/status/404"
    done = inv(project, "k8s.curl", url, "--runner", "m1-r1,m2-r1", "--json")
    objects = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert sorted(o["runner"] for o in objects) == ["m1-r1", "m2-r1"]
    assert all(list(o)[:2] == ["runner", "status"] and o["status"] == 404 for o in objects)
    assert done.returncode == 22
    plain = inv(project, "k8s.curl", url, "--runner", "m1-r1,m2-r1", "--no-fail")
    assert sorted(plain.stdout.decode().splitlines()) == ['[m1-r1] {"status": 404}', '[m2-r1] {"status": 404}']
    assert {"[m1-r1] HTTP 404", "[m2-r1] HTTP 404"} <= set(plain.stderr.decode().splitlines())
    assert plain.returncode == 0


def test_dry_prints_each_runners_command_with_its_prefix(project):
    done = inv(project, "--dry", "k8s.kubectl", "--runner", "m1-r1,novm", "--", "get", "pods")
    lines = done.stdout.decode().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["[m1-r1]", "[novm]"]
    assert "exec no-such-vm -T -- bash -lc 'kubectl get pods'" in lines[1]


def streaming(lab) -> list[str]:
    """The runners where the streaming plugin still runs."""
    from dapfab.testing import fleet

    return fleet.running(lab, "kubectl-fan_stream")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGKILL, None)])
def test_interrupt_or_kill_with_every_runner_busy_leaves_nothing(project, lab, sig, code, GOOD):
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "k8s.kubectl", "--runner", "@all",
                             "--", "fan-stream"], cwd=project, env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[bytes] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, b"")), daemon=True).start()
    try:
        wait_until(lambda: {line.split(b"]")[0] for line in seen} >= {f"[{n}".encode() for n in GOOD},
                   what="every runner ticking")
        os.kill(proc.pid, sig)
        returned = proc.wait(30)
        if code is not None:
            assert returned == code
            assert streaming(lab) == []  # gone before dapfab returned
        else:
            wait_until(lambda: not streaming(lab), timeout=20, what="every remote command gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_api_results_per_runner(project, lab):
    code = textwrap.dedent(f"""
        import os
        from invoke import Config
        from dapfab.config import RunnerConfig
        from dapfab.fanout import FanOutError, kubectl_in_runners
        config = Config(project_location={str(project)!r}); config.load_project()
        runners = {{n: RunnerConfig.from_invoke_config(config, runner=n) for n in ("m1-r1", "novm")}}
        results = kubectl_in_runners(runners, ["exit-with", "0"], hide=True, warn=True)
        print([(n, r.succeeded, r.failed, r.exited) for n, r in results.items()])
        try:
            kubectl_in_runners(runners, ["exit-with", "0"], hide=True)
        except FanOutError as err:
            print(err.exit_code, sorted(err.results))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env(), capture_output=True,
                          timeout=120)
    assert done.stdout.decode().splitlines() == [
        "[('m1-r1', True, False, 0), ('novm', False, True, 125)]", "125 ['m1-r1', 'novm']"], done.stderr


def test_config_show_and_doctor_take_a_group(project):
    shown = inv(project, "config.show", "--runner", "m1-r1,novm").stdout.decode()
    assert "== runner m1-r1 ==" in shown and "== runner novm ==" in shown and "no-such-vm" in shown
    doctor = inv(project, "config.doctor", "--runner", "m1-r1,novm")
    out = doctor.stdout.decode()
    first, novm = out.split("== runner novm ==")
    assert "== runner m1-r1 ==" in first and "FAIL" not in first and "OK    curl present" in first
    assert "FAIL  VM exists and running" in novm
    assert doctor.returncode == 125  # the first failing runner's hop


FLOOD_DEADLINE = 120  # seconds: linear printing ends in about 15 (the quadratic one in hours)
FLOOD_RSS = 300 << 20  # bytes: dapfab itself takes about 60 MiB; the line is 256 MiB
# A process's ru_maxrss also counts the process it was exec'd from (the kernel keeps the old
# image's high-water mark), and late in a full run pytest itself holds over 400 MiB: so a small
# Python starts dapfab and writes its child's peak RSS (KiB) to the file named first.
PEAK_RSS = textwrap.dedent("""
    import os, subprocess, sys
    child = subprocess.Popen(sys.argv[2:])
    _, status, usage = os.wait4(child.pid, 0)
    with open(sys.argv[1], "w") as report:
        report.write(str(usage.ru_maxrss))
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)
""")


def test_a_256_mib_line_comes_in_pieces_while_another_runners_lines_flow(project, GOOD, tmp_path):
    """The first runner prints one 256 MiB line while another prints a short line every 0.1 s:
    the long line comes as prefixed pieces of at most 1 MiB with the other runner's lines
    between them, every byte of it, in bounded memory and time."""
    big, ticking = GOOD[0], GOOD[-1]
    events: list[tuple[str, bytes | int]] = []  # ("big", piece size) or ("tick", the line)

    def read(stream) -> None:
        for line in stream:
            if line.startswith(f"[{big}] ".encode()):
                piece = line[len(big) + 3:-1]
                assert line.endswith(b"\n") and piece.count(b"x") == len(piece), line[:80]
                events.append(("big", len(piece)))
            else:
                events.append(("tick", line))

    report = tmp_path / "peak-rss"
    proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS, report, sys.executable, "-m", "invoke",
                             "k8s.kubectl", "--runner", f"{big},{ticking}", "--", "flood"],
                            cwd=project, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    stderr: list[bytes] = []
    errors = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    errors.start()
    deadline = threading.Timer(FLOOD_DEADLINE, os.killpg, (proc.pid, signal.SIGKILL))
    deadline.start()
    try:
        proc.wait()
    finally:
        deadline.cancel()
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(30)
    errors.join(30)
    assert proc.returncode != -signal.SIGKILL, f"did not end within {FLOOD_DEADLINE} s"
    assert proc.returncode == 0, stderr
    peak = int(report.read_text()) << 10
    assert peak < FLOOD_RSS, f"peak RSS {peak >> 20} MiB"
    pieces = [size for kind, size in events if kind == "big"]
    assert sum(pieces) == BIG and max(pieces) <= LINE_BOUND and len(pieces) >= BIG // LINE_BOUND
    ticks = [line for kind, line in events if kind == "tick"]
    assert ticks == [f"[{ticking}] tick {i}\n".encode() for i in range(TICKS)]
    kinds = [kind for kind, _ in events]
    first, last = kinds.index("big"), len(kinds) - 1 - kinds[::-1].index("big")
    assert "tick" in kinds[first:last], "no line of the other runner came while the long one did"


def test_one_runner_closing_its_stdin_leaves_stdin_open_for_the_others(project, GOOD):
    """The first runner reads 10 bytes and exits; every other one still reads all of stdin."""
    blob = os.urandom(8 << 20)
    done = inv(project, "k8s.kubectl", "--runner", "@all", "--", "take", input=blob, stdin=None)
    want = hashlib.sha256(blob).hexdigest()
    assert sorted(done.stdout.decode().splitlines()) == sorted(
        [f"[{GOOD[0]}] 10"] + [f"[{n}] {want}" for n in GOOD[1:]]), done.stderr[-2000:]
    assert done.returncode == 0


def spans(output: bytes) -> list[tuple[float, float]]:
    """Each runner's ``start``/``end`` times (the span plugin's lines, the VMs' clock)."""
    times: dict[str, dict[str, float]] = {}
    for line in output.decode().splitlines():
        name, word, at = line.split()
        times.setdefault(name, {})[word] = float(at)
    return [(t["start"], t["end"]) for t in times.values()]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


def test_parallel_bounds_how_many_commands_run_at_once(project, GOOD):
    """Measured in the runners: with --parallel 2 two commands run at once, never more; with
    the default (10) every runner's command runs at the same time."""
    two = inv(project, "k8s.kubectl", "--runner", "@all", "--parallel", "2", "--", "span", "1")
    assert two.returncode == 0, two.stderr[-2000:]
    assert len(spans(two.stdout)) == len(GOOD) and most_at_once(spans(two.stdout)) == 2
    every = inv(project, "k8s.kubectl", "--runner", "@all", "--", "span", "2")
    assert every.returncode == 0, every.stderr[-2000:]
    assert most_at_once(spans(every.stdout)) == len(GOOD)


FORGED = "a\tb\x1b[2K\x1b[G[prod-eu] forged \x9b \udc9b \u202e é".encode("utf-8", "surrogateescape")


def test_a_runner_cannot_forge_another_runners_line_on_a_terminal(project, GOOD):
    """On a terminal, what follows the prefix shows control characters (C0 but tab, C1 as
    UTF-8 or as a raw byte), and bidi overrides, escaped."""
    names = [GOOD[0], GOOD[-1]]
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "k8s.kubectl", "--runner", ",".join(names),
                             "--", "forge"], cwd=project, env=env(), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    output = b""
    try:
        while chunk := _read_terminal(master):
            output += chunk
        assert proc.wait(60) == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = output.split(b"\r\n")
    for name in names:
        shown = rb"\x1b[2K\x1b[G[prod-eu] forged \x9b \x9b \u202e " + "é".encode()
        assert f"[{name}] a\tb".encode() + shown in lines, output
    assert b"\x1b" not in output and b"\x9b" not in output and "\u202e".encode() not in output


def _read_terminal(master: int) -> bytes:
    """What the terminal shows next; b"" once every writer has closed it (EIO)."""
    try:
        return os.read(master, 65536)
    except OSError:
        return b""


def test_output_that_is_not_a_terminal_keeps_every_byte(project, GOOD):
    names = [GOOD[0], GOOD[-1]]
    done = inv(project, "k8s.kubectl", "--runner", ",".join(names), "--", "forge")
    assert sorted(done.stdout.split(b"\n")) == sorted([b""] + [f"[{n}] ".encode() + FORGED for n in names])
