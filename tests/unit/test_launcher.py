"""The remote launcher run by real bash and util-linux `unshare` on this machine (as the VM would)."""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapfab.remote import launcher, protocol, scripts
from dapfab.remote.incus import runner_failure
from dapfab.remote.protocol import MarkerScanner

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --pid needs root")


# A VM's clean login environment: this machine's root ~/.bashrc runs `pyenv rehash`, and
# killing a login shell inside it (which these tests do) leaves pyenv's lock behind.
CLEAN_HOME = tempfile.mkdtemp(prefix="dapfab-launcher-home-")
atexit.register(shutil.rmtree, CLEAN_HOME, True)
VM_ENV = {"HOME": CLEAN_HOME, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# The heartbeat timeout is a parameter of the launcher: short here, so silence tests are quick.
TIMEOUT = 2
RUNNER = SimpleNamespace(incus="incus", project="proj", vm_name="vm1")


def start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        launcher.boot_argv(heartbeat_timeout=TIMEOUT), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=VM_ENV,
    )
    proc.stdin.write(launcher.command_frame(code))
    proc.stdin.flush()
    return proc


def alive(marker: str) -> bool:
    """Whether any process on this machine has `marker` in its command line."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return bool(out.strip())


def gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(marker):
            return True
        time.sleep(0.2)
    return False


def test_frames_are_length_prefixed():
    assert launcher.command_frame("echo hi") == b"dapfab1 7\necho hi"
    assert launcher.data_frame(b"\0\n") == b"d 2\n\0\n"


def test_launch_command_shows_only_the_incus_invocation():
    line = launcher.launch_command(RUNNER)
    assert line.startswith("incus --project proj exec vm1 -T -- unshare --pid")
    assert "kubectl" not in line


@pytest.mark.parametrize("helper", [False, True])
def test_the_boot_program_sent_is_exactly_the_stripped_file(helper):
    """What the management host's command line carries is the script less its comments."""
    name = "helper" if helper else "boot"
    source = (Path(scripts.__file__).parent / "sh" / f"{name}.sh").read_text()
    argv = shlex.split(launcher.launch_command(RUNNER, helper=helper, heartbeat_timeout=7))
    program = argv[argv.index("-c") + 1]
    assert program == scripts.strip(source) == scripts.load(name).text
    assert "#" in source and not any(line.lstrip().startswith("#") for line in program.splitlines())
    assert "" not in [line.strip() for line in program.splitlines()]
    assert argv[argv.index("-c") + 2 :] == ["dapfab-helper" if helper else "dapfab", "7",
                                             str(launcher.INLINE_MAX)]


def test_strip_drops_comment_and_blank_lines_only():
    source = "#!/bin/bash\n# a comment\n\nx=1  \n  # indented comment\n  echo \"#not\" # tail\n"
    assert scripts.strip(source) == 'x=1\n  echo "#not" # tail'


@needs_root
def test_launcher_runs_the_code_with_stdin_and_exit_code():
    proc = start("cat; echo; echo err >&2; exit 5")
    proc.stdin.write(launcher.data_frame(b"\xffdata"))
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(10) == 5
    assert out == launcher.STARTED + b"\xffdata\n"
    assert err == b"err\n"
    proc.stdin.close()


@needs_root
def test_code_with_trailing_newlines_and_quotes_arrives_exactly():
    code = "printf '%s|' \"$0\" 'a\"b' \"it's\"\n\n"
    proc = start(code)
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    assert proc.stdout.read() == launcher.STARTED + b"bash|a\"b|it's|"
    assert proc.wait(10) == 0


@needs_root
@pytest.mark.parametrize("how", ["quit", "eof", "silence"])
def test_the_whole_tree_is_killed_when_the_caller_goes(how):
    marker = f"dapfab-test-{how}-{os.getpid()}"
    # The marker is $0 of shells that stay parents of their sleep: a tree three deep.
    hold = "bash -c 'sleep 1000; :' {}"
    proc = start(f"{hold.format(marker)} & ({hold.format(marker)}) & {hold.format(marker)}")
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    assert proc.stdout.read(len(launcher.STARTED)) == launcher.STARTED
    deadline = time.monotonic() + 5
    while not alive(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(marker)
    if how == "quit":
        proc.stdin.write(launcher.QUIT_FRAME)
        proc.stdin.flush()
        bound = 5
    elif how == "eof":
        proc.stdin.close()
        bound = 5
    else:  # no heartbeat: a frozen laptop or a dropped link
        bound = TIMEOUT + 8
    try:
        assert gone_within(marker, bound)
        assert proc.wait(5) != 0
    finally:
        subprocess.run(["pkill", "-9", "-f", marker])
        proc.kill()


@needs_root
def test_heartbeats_keep_a_quiet_command_alive():
    proc = start(f"sleep {TIMEOUT * 3}; echo done")
    proc.stdin.write(launcher.EOF_FRAME)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        proc.stdin.write(launcher.HEARTBEAT_FRAME)
        proc.stdin.flush()
        time.sleep(TIMEOUT / 4)
    assert proc.stdout.read() == launcher.STARTED + b"done\n"
    assert proc.wait(5) == 0


def test_runner_failure_names_a_missing_vm():
    err = runner_failure(
        1, b'Error: Failed to fetch instance "nope" in project "default": Instance not found\n',
        incus="incus", vm_name="nope")
    assert err.exit_code == 125 and "not found" in err.message and "incus list" in err.hint


def test_runner_failure_names_a_stopped_vm():
    err = runner_failure(1, b"Error: Instance is not running\n", incus="incus",
                                  vm_name="vm")
    assert err.exit_code == 125 and "not running" in err.message and "incus start vm" in err.hint


def test_runner_failure_names_a_missing_incus_client():
    err = runner_failure(127, b"bash: line 1: incus: command not found\n",
                                  incus="incus", vm_name="vm")
    assert err.exit_code == 125 and "not installed" in err.message


# -- the persistent helper -------------------------------------------------------------
MARK = launcher.end_markers("0123456789abcdef")[0]


def test_request_frame_carries_sizes_nonce_code_and_stdin():
    assert launcher.request_frame("echo hi", b"\0x", "ab12") == b"c 7 2 ab12\necho hi\0x"


def test_helper_launch_command_differs_only_in_the_program():
    plain = launcher.launch_command(RUNNER)
    helper = launcher.launch_command(RUNNER, helper=True)
    assert helper.startswith(plain.split(" bash -c ")[0])
    assert helper.endswith(f"dapfab-helper 10 {launcher.INLINE_MAX}") and "kubectl" not in helper


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), min_size=1, max_size=40))
def test_scanner_passes_everything_before_the_marker_exactly(payload, cuts):
    stream = payload + MARK + b"3\n"
    out: list[bytes] = []
    scanner = MarkerScanner(MARK, out.append)
    at, found = 0, False
    for size in cuts * (len(stream) // len(cuts) + 1):
        found = scanner.feed(stream[at : at + size]) or found
        at += size
        if at >= len(stream):
            break
    assert found and b"".join(out) == payload and scanner.after == b"3\n"


def test_scanner_holds_back_only_a_possible_marker_start():
    out: list[bytes] = []
    scanner = MarkerScanner(MARK, out.append)
    assert not scanner.feed(b"plain text")
    assert out == [b"plain text"]
    assert not scanner.feed(b"x\0dapfab-en")
    assert out[-1] == b"x"
    assert not scanner.feed(b"d but not ours\n")
    assert b"".join(out) == b"plain textx\0dapfab-end but not ours\n"


class Helper:
    """HELPER_BOOT in a fresh PID namespace, fed one request at a time, as the laptop does."""

    def __init__(self) -> None:
        argv = launcher.boot_argv(helper=True, heartbeat_timeout=TIMEOUT)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=VM_ENV)
        assert os.read(self.proc.stdout.fileno(), len(launcher.STARTED)) == launcher.STARTED

    def run(self, code: str, stdin: bytes = b"", nonce: str = "n") -> tuple[int, bytes, bytes]:
        """Exit code, stdout and stderr of one command, markers checked and removed."""
        import selectors

        self.proc.stdin.write(launcher.request_frame(code, stdin, nonce))
        self.proc.stdin.flush()
        out_end, err_end = launcher.end_markers(nonce)
        got = {self.proc.stdout: b"", self.proc.stderr: b""}
        with selectors.DefaultSelector() as sel:
            for stream in got:
                sel.register(stream, selectors.EVENT_READ)
            while not (got[self.proc.stderr].endswith(err_end)
                       and out_end in got[self.proc.stdout]
                       and got[self.proc.stdout].endswith(b"\n")):
                for key, _ in sel.select(10):
                    chunk = os.read(key.fd, 65536)
                    assert chunk, got
                    got[key.fileobj] += chunk
        out, err = got[self.proc.stdout], got[self.proc.stderr]
        begin = launcher.begin_marker(nonce)
        assert out.startswith(begin)
        body, _, code = out[len(begin):].rpartition(out_end)
        return int(code), body, err[: -len(err_end)]

    def quit(self) -> int:
        self.proc.stdin.write(launcher.QUIT_FRAME)
        self.proc.stdin.close()
        return self.proc.wait(10)


@needs_root
def test_helper_runs_one_command_after_another_with_exit_codes_and_streams():
    helper = Helper()
    try:
        assert helper.run("echo one; echo err >&2; exit 3", nonce="n1") == (3, b"one\n", b"err\n")
        helper.proc.stdin.write(launcher.HEARTBEAT_FRAME)
        assert helper.run("cat; echo two", b"in\0put\n", "n2") == (0, b"in\0put\ntwo\n", b"")
        assert helper.run("echo $$ $0", nonce="n3")[1] == b"2 bash\n"  # like bash -lc in the VM
    finally:
        helper.quit()


@needs_root
def test_helper_kills_what_a_command_leaves_and_everything_on_quit():
    marker = f"dapfab-helper-test-{os.getpid()}"
    helper = Helper()
    try:
        helper.run(f"(exec -a {marker}-left sleep 1000) &")
        assert gone_within(f"{marker}-left", 5)
        helper.proc.stdin.write(launcher.request_frame(f"exec -a {marker}-busy sleep 1000", b"", "n"))
        helper.proc.stdin.flush()
        time.sleep(0.5)
        assert alive(f"{marker}-busy")
    finally:
        helper.quit()
    assert gone_within(f"{marker}-busy", 5)


@pytest.mark.parametrize("size", [0, 1, launcher.HELPER_STDIN_MAX])
@needs_root
def test_helper_stdin_is_exact_and_unread_stdin_is_drained(size):
    blob = os.urandom(size)
    helper = Helper()
    try:
        assert helper.run("true", blob, "n1") == (0, b"", b"")  # never reads it
        code, out, _ = helper.run("sha256sum | cut -c1-64", blob, "n2")
    finally:
        helper.quit()
    import hashlib

    assert (code, out) == (0, hashlib.sha256(blob).hexdigest().encode() + b"\n")


def test_an_unrecognised_incus_error_is_still_the_runner_hop():
    err = runner_failure(1, b"Error: something else\n", incus="incus", vm_name="v")
    assert (err.exit_code, err.hop) == (125, "runner")
    assert "something else" in str(err)


# coreutils, util-linux and friends a script might reach for (bash builtins excluded)
CANDIDATE_TOOLS = ("head tail cat rm mktemp touch stat sleep readlink wc tr cut ls find grep "
                   "sed awk sort uniq tee dd mkdir chmod ln mv cp date base64 sha256sum xargs "
                   "unshare setsid nsenter timeout env id stty socat python3 perl curl kubectl").split()


def _used_tools(text: str) -> set[str]:
    return {tool for tool in CANDIDATE_TOOLS
            if re.search(rf"(?<![\w.$-]){re.escape(tool)}(?![\w.-])", text)}


@pytest.mark.parametrize("name", scripts.names())
def test_every_script_declares_the_tools_it_runs(name):
    """A script that starts using an external tool must declare it (and doctor checks it)."""
    script = scripts.load(name)
    assert _used_tools(script.text) <= set(script.tools), sorted(_used_tools(script.text))


def test_config_doctor_checks_every_declared_tool():
    from dapfab.doctor import OWN_CHECKS, launcher_tools

    declared = {tool for name in scripts.names() for tool in scripts.load(name).tools}
    assert set(launcher_tools()) | set(OWN_CHECKS) == declared
    assert {"unshare", "head", "touch", "stat", "sleep", "readlink"} <= declared  # the scan works


def test_the_other_vm_snippets_use_only_declared_tools():
    """Shell that is not a script file (the --dry forward line) stays within the tools too."""
    from dapfab import forward

    declared = set(scripts.tools_needed()) | {"kubectl"}
    assert _used_tools(forward.forward_dry_command(forward.forward_command("pod/web", 80))) <= declared


def test_shellcheck_is_clean_on_every_script():
    files = sorted(str(p) for p in (Path(scripts.__file__).parent / "sh").glob("*.sh"))
    result = subprocess.run(["shellcheck", "-s", "bash", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_protocol_table_matches_what_the_scripts_print_and_read():
    printed: dict[str, set[str]] = {}
    for name in scripts.names():
        for mark in re.findall(r"\\0dapfab-([a-z]+)", scripts.load(name).text):
            printed.setdefault(mark, set()).add(f"{name}.sh")
    assert printed == {m: set(where.split()) for m, (where, _) in protocol.MARKERS.items()}
    arms = set()
    for name in ("boot", "helper"):
        arms |= set(re.findall(r"^\s*([a-z])\)", scripts.load(name).text, re.M))
    assert {kind.decode() for kind in protocol.FRAMES if len(kind) == 1} == arms | {"q"}
    assert b"dapfab1" in protocol.FRAMES and "dapfab1" in scripts.load("boot").text
