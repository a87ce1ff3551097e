"""The persistent helper in the VM: reuse, exactness, lifetimes and its failures, in the lab."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from dapfab import run_in_runner
from dapfab.errors import RunnerError
from dapfab.remote.launcher import HELPER_STDIN_MAX
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def runner_config(runner_config):
    """These tests count this process's own pooled connections and helpers: no keeper
    (dap.ssh.persist 0), whatever DAPFAB_LAB_PERSIST says."""
    import dataclasses

    return dataclasses.replace(runner_config, persist=0)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def helpers(lab) -> list[int]:
    """PIDs of the helpers running in the VM (their top process, as seen from the host)."""
    return [pid for pid, argv in lab.processes("runner") if argv[-3:-2] == ["dapfab-helper"]
            and argv[0] == "unshare"]


@pytest.fixture
def no_pool():
    """This process's connections closed before and after: no idle helper carries over."""
    from dapfab.connection import POOL

    POOL.close_all()
    yield
    POOL.close_all()


def test_sequential_calls_share_one_helper(lab, runner_config, no_pool):
    run_in_runner(runner_config, "true", hide=True)
    first = wait_until(lambda: helpers(lab), what="an idle helper")
    for n in range(5):
        assert run_in_runner(runner_config, f"echo {n}", hide=True).stdout == f"{n}\n"
    assert helpers(lab) == first


def test_each_command_gets_a_fresh_login_shell_and_its_leftovers_die(lab, runner_config, no_pool):
    run_in_runner(runner_config, "export DAPFAB_LEAK=1; sleep 4242 & echo started", hide=True)
    assert run_in_runner(runner_config, 'echo "[${DAPFAB_LEAK-}]"', hide=True).stdout == "[]\n"
    wait_until(lambda: not lab.running("runner", "sleep 4242"), timeout=5, what="the leftover sleep gone")


def test_output_that_looks_like_a_marker_arrives_exactly(runner_config, no_pool):
    fake = b"\0dapfab-end 0123456789abcdef 0\n\0dapfab-begin x\n\0\0\0"
    script = "printf '\\0dapfab-end 0123456789abcdef 0\\n\\0dapfab-begin x\\n\\0\\0\\0'"
    result = run_in_runner(runner_config, f"{script}; {script} >&2; exit 7", hide=True, warn=True)
    assert (result.exited, result.stdout_bytes, result.stderr_bytes) == (7, fake, fake)


def test_small_stdin_goes_with_the_command_and_unread_stdin_does_not_jam_the_helper(
    lab, runner_config, no_pool
):
    blob = os.urandom(HELPER_STDIN_MAX)
    result = run_in_runner(runner_config, "sha256sum | cut -c1-64", hide=True,
                           in_stream=io.BytesIO(blob))
    import hashlib

    assert result.stdout.strip() == hashlib.sha256(blob).hexdigest()
    helper = helpers(lab)
    run_in_runner(runner_config, "true", hide=True, in_stream=io.BytesIO(blob))  # never reads it
    assert run_in_runner(runner_config, "echo ok", hide=True).stdout == "ok\n"
    assert helpers(lab) == helper


def test_larger_stdin_takes_the_one_shot_launcher(lab, runner_config, no_pool):
    blob = os.urandom(HELPER_STDIN_MAX + 1)
    result = run_in_runner(runner_config, "wc -c", hide=True, in_stream=io.BytesIO(blob))
    assert result.stdout.strip() == str(len(blob))
    assert helpers(lab) == []


def test_a_killed_idle_helper_is_replaced_and_the_command_runs_once(lab, runner_config, no_pool):
    run_in_runner(runner_config, "rm -f /tmp/dapfab-once", hide=True)
    for pid in wait_until(lambda: helpers(lab), what="an idle helper"):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not helpers(lab), timeout=5, what="the helper gone")
    run_in_runner(runner_config, "echo x >> /tmp/dapfab-once", hide=True)
    assert run_in_runner(runner_config, "cat /tmp/dapfab-once", hide=True).stdout == "x\n"


def test_an_idle_helper_whose_exec_client_was_killed_is_replaced(lab, runner_config, no_pool):
    """Killing the exec client on mgmt ends the session with a signal, not an exit status."""
    run_in_runner(runner_config, "true", hide=True)
    clients = wait_until(lambda: [pid for pid, argv in lab.processes("mgmt")
                                  if "exec" in argv and argv[-3:-2] == ["dapfab-helper"]],
                         what="the helper's exec client on mgmt")
    for pid in clients:
        os.kill(pid, signal.SIGKILL)
    assert run_in_runner(runner_config, "echo again", hide=True).stdout == "again\n"


def test_a_helper_killed_during_the_command_is_reported_as_the_runner_hop(lab, runner_config, no_pool):
    run_in_runner(runner_config, "true", hide=True)
    (pid,) = wait_until(lambda: helpers(lab), what="an idle helper")
    def kill_once_it_runs() -> None:
        wait_until(lambda: lab.running("runner", "sleep 30"), what="the command running")
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_it_runs)
    killer.start()
    try:
        with pytest.raises(RunnerError) as caught:
            run_in_runner(runner_config, "sleep 30", hide=True)
    finally:
        killer.join()
    assert "helper" in str(caught.value)
    wait_until(lambda: not lab.running("runner", "sleep 30"), timeout=5, what="the command gone")


def test_idle_helpers_end_with_their_process_even_a_frozen_one(lab, runner_config, no_pool):
    """Exit: the channel closes. Frozen (SIGSTOP): heartbeats stop, gone within 20 s."""
    env = {**os.environ, **lab.env(), "DAP_SSH_PERSIST": "0"}  # helpers of this process
    env.pop("DAP_RUNNER", None)
    code = textwrap.dedent("""
        import os, signal, sys
        from dapfab.config import RunnerConfig
        from dapfab import run_in_runner
        run_in_runner(RunnerConfig.from_env(), "true", hide=True)
        print("ready", flush=True)
        if sys.argv[1] == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
    """)
    for how in ("exit", "freeze"):
        proc = subprocess.Popen([sys.executable, "-c", code, how], env=env, cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"ready\n"
            if how == "exit":
                proc.wait(30)
            wait_until(lambda: not helpers(lab), timeout=20, what=f"the helper gone ({how})")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_runners_behind_one_host_share_its_connection_but_never_each_others_helpers(
    lab, runner_config, no_pool
):
    """The connection is keyed by its identity (host, gateway, key, known_hosts...), not by
    the VM: another VM name on the same management host opens no connection of its own, and
    does not get the first VM's idle helper (its command fails as that VM, not found)."""
    import dataclasses

    from dapfab.connection import POOL

    run_in_runner(runner_config, "true", hide=True)
    wait_until(lambda: helpers(lab), what="an idle helper")
    opened = POOL.opened
    other = dataclasses.replace(runner_config, vm_name="no-such-vm")
    with pytest.raises(RunnerError) as caught:
        run_in_runner(other, "echo wrong-vm", hide=True, in_stream=False)
    assert "no-such-vm" in str(caught.value) and "not found" in str(caught.value)
    assert POOL.opened == opened
    assert run_in_runner(runner_config, "echo ok", hide=True).stdout == "ok\n"
    assert POOL.opened == opened


def test_the_lab_fixture_drops_idle_helpers_before_reset_kills_their_processes(lab, runner_config):
    """lab.reset kills every process in the runner; a pooled idle helper must not outlive
    its process there and be handed to the next test's command (which then died with 137)."""
    from dapfab.connection import POOL
    from dapfab.helpers import HELPERS

    run_in_runner(runner_config, "true", hide=True, in_stream=False)
    links = [link for group in POOL._links.values() for link in group]
    assert HELPERS.idle_count()  # the helper stays, idle
    sessions = sum(link.sessions for link in links)
    HELPERS.drop_idle()
    assert not HELPERS.idle_count()
    assert sum(link.sessions for link in links) < sessions
    lab.reset()
    assert run_in_runner(runner_config, "echo again", hide=True, in_stream=False).stdout == "again\n"
