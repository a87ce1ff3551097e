"""The thin ``dap`` (docs/design.md §17): with a record and a live keeper, ``dap
k8s.kubectl -- ARGS`` and ``dap k8s.curl URL`` import no Invoke, Fabric, paramiko or YAML, give byte for byte
what the full path gives, and falls back to the full path when anything it recorded
changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trust_helpers import REPO, cli_env

from dapfab.remote.launcher import HEARTBEAT_TIMEOUT
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

HEAVY = {"invoke", "fabric", "paramiko", "yaml"}
GET = ("k8s.kubectl", "--", "get", "pods", "-o", "name")
# The thin dap as its sh part starts it (without site), its imports on stderr; on a miss it
# execs the full program with the same -X option.
THIN = [sys.executable, "-X", "importtime", "-I", "-S", str(REPO / "dapfab" / "thin.py")]


@pytest.fixture
def project(lab, tmp_path):
    """An ops repository two levels below a scratch directory, with a home of its own, so
    that config files can be changed up the tree without touching the machine's."""
    home, repo = tmp_path / "home", tmp_path / "ops" / "repo"
    home.mkdir()
    repo.mkdir(parents=True)
    (repo / "invoke.yaml").write_text("# the ops repository's settings\n")
    env = cli_env(lab, {"DAP_SSH_PERSIST": "60", "HOME": str(home)})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return repo, home, env


def dap(project, *argv: str, env: dict | None = None, thin: bool = True,
        stdin: bytes | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``dap ARGV`` in the project: its outcome and the top-level modules it imported."""
    repo, _, base = project
    run_env = {**base, **(env or {})}
    if not thin:
        run_env["DAPFAB_THIN"] = "0"
    done = subprocess.run([*THIN, *argv], cwd=repo, env=run_env, input=stdin,
                          capture_output=True, timeout=120)
    stderr, imported = split_stderr(done.stderr)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, stderr), imported


def split_stderr(data: bytes) -> tuple[bytes, set[str]]:
    """A ``-X importtime`` run's stderr: what the program wrote, and the top-level modules
    it imported."""
    imported, stderr = set(), []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"import time:"):
            imported.add(line.rsplit(b"|", 1)[-1].strip().decode().split(".")[0])
        else:
            stderr.append(line)
    return b"".join(stderr), imported


def keeper_pid(project) -> int | None:
    """The PID of the keeper that answers the project's calls, if one does."""
    repo, _, env = project
    done = subprocess.run([sys.executable, "-c", STATUS], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)
    return int(done.stdout) if done.stdout.strip() not in ("", "None") else None


STATUS = ("from dapfab.config import RunnerConfig; from dapfab.keeper import client; "
          "print(client.status(RunnerConfig.from_env()))")


def thin_ready(project) -> None:
    """A full call that records and starts the keeper (after its output: waited for), then
    one that must be thin."""
    first, _ = dap(project, *GET)
    assert first.returncode == 0, first.stderr
    wait_until(lambda: keeper_pid(project), timeout=20, what="a keeper answering")
    second, imported = dap(project, *GET)
    assert (second.returncode, second.stdout) == (0, b"pod/web\n"), second.stderr
    assert not imported & HEAVY, sorted(imported & HEAVY)


def test_a_warm_call_takes_the_thin_path_without_invoke_paramiko_or_yaml(project):
    thin_ready(project)


def _edit(path: Path) -> None:
    path.write_text((path.read_text() if path.exists() else "") + "# edited\n")


CHANGES = {
    "the project's invoke.yaml": lambda repo, home: _edit(repo / "invoke.yaml"),
    "an invoke.yaml up the tree": lambda repo, home: _edit(repo.parent / "invoke.yml"),
    "tasks.py": lambda repo, home: _edit(repo / "tasks.py"),
    "~/.invoke.yaml": lambda repo, home: _edit(home / ".invoke.yaml"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_config_file_falls_back_to_the_full_path_once(project, change):
    thin_ready(project)
    repo, home, _ = project
    CHANGES[change](repo, home)
    after, imported = dap(project, *GET)
    assert (after.returncode, after.stdout) == (0, b"pod/web\n"), after.stderr
    assert "invoke" in imported  # the full path ran it
    again, imported = dap(project, *GET)
    assert again.returncode == 0 and not imported & HEAVY  # and recorded it afresh


def test_a_changed_system_config_file_falls_back(project):
    thin_ready(project)
    system = Path("/etc/invoke.yaml")
    before = system.read_bytes() if system.exists() else None
    try:
        system.write_bytes((before or b"") + b"# edited by dapfab's tests\n")
        after, imported = dap(project, *GET)
    finally:
        if before is None:
            system.unlink()
        else:
            system.write_bytes(before)
    assert after.returncode == 0 and "invoke" in imported, after.stderr


@pytest.mark.parametrize("how", ["a DAP_ variable", "an INVOKE_ variable", "-f FILE",
                                 "a flag", "DAPFAB_THIN=0"])
def test_another_environment_or_a_flag_takes_the_full_path(project, how, tmp_path):
    thin_ready(project)
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text("run: {}\n")
    argv, env = list(GET), {}
    if how == "a DAP_ variable":
        env["DAP_KUBECTL_NAMESPACE"] = "default"
    elif how == "an INVOKE_ variable":
        env["INVOKE_RUN_WARN"] = "0"
    elif how == "-f FILE":
        argv = ["-f", str(runtime), *argv]
    elif how == "a flag":
        argv = ["k8s.kubectl", "-n", "default", *argv[1:]]
    else:
        env["DAPFAB_THIN"] = "0"
    done, imported = dap(project, *argv, env=env)
    assert (done.returncode, done.stdout) == (0, b"pod/web\n"), done.stderr
    assert "invoke" in imported


CASES = {
    "argv": (["argv-exact", "a b", "it's", "$HOME", "", "--", "-n", "é\t\\", "*"], None),
    "stdin": (["apply", "--dry-run=client", "-o", "name", "-f", "-"],
              b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: thin}\n"),
    "exit code and stderr": (["get", "pod", "no-such-pod"], None),
    "unknown command": (["no-such-subcommand"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_thin_path_gives_what_the_full_path_gives(project, plugins, case):
    thin_ready(project)
    words, stdin = CASES[case]
    full, imported_full = dap(project, "k8s.kubectl", "--", *words, thin=False, stdin=stdin)
    thin, imported_thin = dap(project, "k8s.kubectl", "--", *words, stdin=stdin)
    assert "invoke" in imported_full and not imported_thin & HEAVY
    assert (thin.returncode, thin.stdout, thin.stderr) == (
        full.returncode, full.stdout, full.stderr)
    if case == "argv":
        assert thin.stdout.split(b"\0")[:-1] == [w.encode() for w in words[1:]]
    if case != "argv" and case != "stdin":
        assert thin.returncode != 0


CURL_CASES = {
    "200 and a body": "/status/200",
    "binary body": "/binary",
    "404: exit 22": "/status/404",
    "curl fails: nothing listens": "http://127.0.0.1:1/",
    "a URL the task refuses": "http://:8080/",
}


@pytest.mark.parametrize("case", list(CURL_CASES))
def test_a_thin_curl_gives_what_the_full_path_gives(lab, project, case):
    """``dap k8s.curl URL`` after a thin-ready kubectl call (the record serves both tasks):
    no Invoke, and the same status line, body, error line and exit code as the full path."""
    thin_ready(project)
    where = CURL_CASES[case]
    url = where if "://" in where else f"http://{lab.cluster_address}:8080{where}"
    full, imported_full = dap(project, "k8s.curl", url, thin=False)
    thin, imported_thin = dap(project, "k8s.curl", url)
    assert "invoke" in imported_full and not imported_thin & HEAVY
    assert (thin.returncode, thin.stdout, thin.stderr) == (
        full.returncode, full.stdout, full.stderr)
    assert thin.returncode == {"200 and a body": 0, "binary body": 0, "404: exit 22": 22,
                               "curl fails: nothing listens": 7,
                               "a URL the task refuses": 2}[case], thin.stderr


def start_thin(project, *words: str, **kwargs) -> subprocess.Popen:
    """``dap k8s.kubectl -- WORDS`` in the background (SIGINT at its default, as in a shell's
    foreground job), in a process group of its own in this session, as a shell job is: in a
    group whose parent is outside the session (a CI job whose shell has exited) the kernel
    discards Ctrl-Z's stop."""
    repo, _, env = project
    return subprocess.Popen([*THIN, "k8s.kubectl", "--", *words], cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_remote_command_and_exits_as_the_full_path_does(
        lab, project, plugins, sig, code):
    thin_ready(project)
    proc = start_thin(project, "stream", stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"tick\n"
        os.kill(proc.pid, sig)
        assert proc.wait(20) == code
        assert not lab.running("runner", "kubectl-stream")  # gone before the client returned
        errors, imported = split_stderr(proc.stderr.read())
        name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
        assert errors == f"dapfab: laptop: interrupted by {name}\n".encode()
        assert not imported & HEAVY
    finally:
        proc.kill()
        proc.wait()


def test_a_reader_that_goes_away_ends_the_thin_call_with_141_silently(lab, project, plugins):
    thin_ready(project)
    reader, writer = os.pipe()
    proc = start_thin(project, "stream", stdout=writer)
    os.close(writer)
    try:
        assert os.read(reader, 5) == b"tick\n"
        os.close(reader)
        assert proc.wait(20) == 141
        errors, imported = split_stderr(proc.stderr.read())
        assert errors == b"" and not imported & HEAVY
        wait_until(lambda: not lab.running("runner", "kubectl-stream"), timeout=20,
                   what="the remote command gone")
    finally:
        proc.kill()
        proc.wait()


def test_a_thin_curl_whose_reader_goes_away_exits_141_silently(lab, project):
    """``dap k8s.curl URL | head -c 1`` on a body larger than a pipe holds: the keeper's
    write fails, and dap ends as the full path does (141, nothing said)."""
    thin_ready(project)
    repo, _, env = project
    url = f"http://{lab.cluster_address}:8080/bytes/300000"
    script = '"$@" | head -c 1 >/dev/null; echo "${PIPESTATUS[0]}" >&2'
    outcomes = []
    for thin in ("1", "0"):
        done = subprocess.run(["bash", "-c", script, "dap", *THIN, "k8s.curl", url], cwd=repo,
                              env=dict(env, DAPFAB_THIN=thin), capture_output=True, timeout=60)
        errors, imported = split_stderr(done.stderr)
        outcomes.append((errors, "invoke" in imported))
    assert outcomes == [(b"HTTP 200\n141\n", False), (b"HTTP 200\n141\n", True)]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_pauses_the_call_past_the_heartbeat_timeout_and_fg_resumes_it(
        lab, project, plugins):
    thin_ready(project)
    proc = start_thin(project, "stream", stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"tick\n"
        os.kill(proc.pid, signal.SIGTSTP)
        wait_until(lambda: _state(proc.pid) == "T", timeout=10, what="the thin dap stopped")
        time.sleep(HEARTBEAT_TIMEOUT + 3)  # silent longer than the keeper would allow
        assert lab.running("runner", "kubectl-stream")
        os.kill(proc.pid, signal.SIGCONT)
        for _ in range(3):
            assert proc.stdout.readline() == b"tick\n"
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(20) == 130
        errors, imported = split_stderr(proc.stderr.read())
        assert errors == b"dapfab: laptop: interrupted by Ctrl-C\n" and not imported & HEAVY
    finally:
        proc.kill()
        proc.wait()


def test_a_record_without_a_live_keeper_starts_one_and_stays_thin(project):
    """Just after `config.disconnect` (the old keeper still closing), with a record: the
    thin dap starts the keeper itself instead of going through Invoke."""
    thin_ready(project)
    repo, _, env = project
    old = keeper_pid(project)
    subprocess.run([sys.executable, "-c", "from dapfab.keeper import client; client.stop()"],
                   cwd=repo, env=env, check=True, timeout=60)
    done, imported = dap(project, *GET)
    assert (done.returncode, done.stdout) == (0, b"pod/web\n"), done.stderr
    assert not imported & HEAVY
    new = keeper_pid(project)
    assert new and new != old


def test_the_installed_dap_script_takes_the_thin_path(project):
    """The real launcher: its sh part finds the interpreter pip named and starts it without
    site (-I: PYTHONPROFILEIMPORTTIME, which the full path would honour, is ignored)."""
    installed = Path(sys.executable).with_name("dap")
    assert installed.read_bytes() == (REPO / "dapfab" / "thin.py").read_bytes(), (
        "reinstall dapfab (pip install -e .): the dap script is older than dapfab/thin.py")
    thin_ready(project)
    repo, _, env = project
    env = dict(env, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run([str(installed), *GET], cwd=repo, env=env, capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"pod/web\n", b"")
    full = subprocess.run([str(installed), *GET], cwd=repo, env=dict(env, DAPFAB_THIN="0"),
                          capture_output=True, timeout=60)
    assert full.returncode == 0 and b"import time:" in full.stderr  # the probe works
