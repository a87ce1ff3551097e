"""The core without root: RemoteProcess, its two strategies and the pools, over the
in-process fake channel of ``fakeremote`` (docs/design.md §9, §10). The lab tests run the
same paths through real sshd and bash; these pin the decisions and end states quickly."""

from __future__ import annotations

import io
import threading

import pytest
from fakeremote import FakeHost, Job, echo_behaviour

from dapfab import helpers as helpers_module
from dapfab.config import RunnerConfig
from dapfab.connection import MAX_SESSIONS
from dapfab.errors import DapTimeout, OutputClosed, RunnerError, SSHError, command_timed_out
from dapfab.execution import OneShot, OnHelper, RemoteProcess


@pytest.fixture
def config(tmp_path):
    return RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner",
                        known_hosts=str(tmp_path / "known_hosts"), persist=0)


def run(config, host_pool, command, *, stdin=None, reuse=True, timeout=10.0, sink=None):
    """Run ``command`` to its end: (exit code, stdout, stderr, the strategy it ended on)."""
    out, err = [], []
    process = RemoteProcess(config, command, on_stdout=sink or out.append, on_stderr=err.append,
                            in_stream=stdin, reuse=reuse, helpers=host_pool)
    with process:
        code = process.wait(timeout)
    return code, b"".join(out), b"".join(err), process.strategy


# -- strategies ---------------------------------------------------------------------------
def test_a_command_with_streamed_stdin_runs_on_the_one_shot_launcher(config):
    host = FakeHost()
    code, out, _, strategy = run(config, host.pool(), "cat", stdin=io.BytesIO(b"x" * 100_000))
    assert (code, out, type(strategy)) == (0, b"x" * 100_000, OneShot)
    assert (host.launchers, len(host.helpers)) == (1, 0)


def test_a_one_shot_commands_exit_code_and_stderr_come_from_the_channel(config):
    code, out, err, _ = run(config, FakeHost().pool(), "fail", reuse=False)
    assert (code, out, err) == (3, b"", b"it failed\n")


def test_a_runner_that_never_starts_the_launcher_is_the_runner_hops_error(config):
    host = FakeHost()
    host.exec_error = (1, b"Error: Instance not found\n")
    with pytest.raises(RunnerError, match="VM runner not found") as caught:
        run(config, host.pool(), "echo hi", reuse=False)
    assert caught.value.exit_code == 125


def test_a_helper_is_started_once_and_kept_for_the_next_command(config):
    host = FakeHost()
    pool = host.pool()
    first = run(config, pool, "echo one")
    second = run(config, pool, "exit 4")
    assert first[:2] == (0, b"one\n") and second[0] == 4
    assert type(second[3]) is OnHelper and not second[3].fresh
    assert (len(host.helpers), host.launchers, pool.idle_count()) == (1, 0, 1)


def test_output_that_looks_like_an_end_marker_is_passed_on(config):
    def forge(job: Job) -> int:
        job.out(b"\0dapfab-end 0123456789abcdef 0\nreal\n")
        return 0

    code, out, _, _ = run(config, FakeHost(forge).pool(), "forge")
    assert (code, out) == (0, b"\0dapfab-end 0123456789abcdef 0\nreal\n")


@pytest.mark.parametrize("when", ["noticed while idle", "as the request came"])
def test_an_idle_helper_that_died_is_replaced_and_the_command_runs_once(config, when):
    host = FakeHost()
    pool = host.pool()
    run(config, pool, "echo warm")
    if when == "noticed while idle":
        host.kill_helpers()
    else:
        host.crash_on_request = True
    code, out, _, strategy = run(config, pool, "echo again")
    assert (code, out, strategy.fresh) == (0, b"again\n", True)
    assert [job.command for job in host.jobs] == ["echo warm", "echo again"]
    assert len(host.helpers) == 2


def test_a_helper_that_dies_during_the_command_is_an_error_not_a_second_run(config):
    host = FakeHost()
    started = threading.Event()

    def dies(job: Job) -> int:
        started.set()
        job.quit.wait(30)
        return 0

    host.behaviour = dies
    pool = host.pool()
    threading.Thread(target=lambda: (started.wait(10), host.kill_helpers()), daemon=True).start()
    with pytest.raises(RunnerError, match="helper in VM runner ended during the command"):
        run(config, pool, "long")
    assert len(host.jobs) == 1 and pool.idle_count() == 0


def test_stop_kills_the_command_and_the_helper_is_not_kept(config):
    host = FakeHost()
    pool = host.pool()
    process = RemoteProcess(config, "wait", on_stdout=lambda _: None, on_stderr=lambda _: None,
                            helpers=pool, reuse=True)
    with process:
        while not host.jobs:
            threading.Event().wait(0.01)
        process.stop()
    assert host.quits == 1 and host.jobs[0].quit.is_set()
    assert pool.idle_count() == 0


def test_a_time_limit_stops_the_command(config):
    host = FakeHost()
    with pytest.raises(DapTimeout) as caught:
        run(config, host.pool(), "wait", timeout=0.3)
    assert host.quits == 1
    assert str(caught.value) == str(command_timed_out(0.3))  # as through a keeper


def test_a_reader_that_left_stops_the_command(config):
    host = FakeHost(lambda job: (job.out(b"line\n"), job.quit.wait(30), 0)[-1])

    def closed(_data: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(OutputClosed):
        run(config, host.pool(), "talk", sink=closed)
    assert host.quits == 1


def test_a_connection_lost_under_a_command_is_the_ssh_hops_error(config):
    host = FakeHost()
    pool = host.pool()
    process = RemoteProcess(config, "wait", on_stdout=lambda _: None, on_stderr=lambda _: None,
                            helpers=pool)
    with process:
        process.link.drop()
        with pytest.raises(SSHError) as caught:
            process.wait(10)
    assert caught.value.exit_code == 255 and caught.value.hop == "ssh management host ops@mgmt.example"


# -- pool decisions -------------------------------------------------------------------------
def hold(host: FakeHost, count: int) -> tuple[threading.Event, threading.Event]:
    """Make the next ``count`` commands block until the returned ``release`` is set;
    ``full`` is set once ``count`` of them run."""
    release, full = threading.Event(), threading.Event()
    running = []

    def blocking(job: Job) -> int:
        if job.command != "hold":
            return echo_behaviour(job)
        running.append(job)
        if len(running) == count:
            full.set()
        release.wait(30)
        return 0

    host.behaviour = blocking
    return release, full


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_sequential_calls_share_one_connection_and_one_helper(config):
    host = FakeHost()
    pool = host.pool()
    for n in range(5):
        assert run(config, pool, f"echo {n}")[1] == f"{n}\n".encode()
    assert (pool.connections.opened, host.connects, len(host.helpers)) == (1, 1, 1)


def test_a_one_shot_command_on_a_full_connection_opens_another_at_once(config):
    host = FakeHost()
    pool = host.pool()
    release, full = hold(host, MAX_SESSIONS)
    threads = [in_thread(run, config, pool, "hold") for _ in range(MAX_SESSIONS)]
    assert full.wait(10)
    assert run(config, pool, "echo more", reuse=False)[1] == b"more\n"
    assert pool.connections.opened == 2
    release.set()
    for thread in threads:
        thread.join(10)


def test_a_helper_call_on_a_full_connection_waits_for_a_helper_that_gets_free(config):
    host = FakeHost()
    pool = host.pool()
    release, full = hold(host, MAX_SESSIONS)
    threads = [in_thread(run, config, pool, "hold") for _ in range(MAX_SESSIONS)]
    assert full.wait(10)
    results = []
    waiting = in_thread(lambda: results.append(run(config, pool, "echo queued")))
    threading.Event().wait(0.2)
    release.set()
    waiting.join(10)
    assert results[0][1] == b"queued\n"
    assert pool.connections.opened == 1 and len(host.helpers) == MAX_SESSIONS
    for thread in threads:
        thread.join(10)


def test_a_helper_call_that_waited_long_enough_opens_another_connection(config, monkeypatch):
    monkeypatch.setattr(helpers_module, "SESSION_WAIT_MIN", 0.3)
    host = FakeHost()
    pool = host.pool()
    release, full = hold(host, MAX_SESSIONS)
    threads = [in_thread(run, config, pool, "hold") for _ in range(MAX_SESSIONS)]
    assert full.wait(10)
    assert run(config, pool, "echo late")[1] == b"late\n"
    assert pool.connections.opened == 2
    release.set()
    for thread in threads:
        thread.join(10)


def test_another_vms_idle_helper_gives_up_its_session(config):
    import dataclasses

    host = FakeHost()
    pool = host.pool()
    release, full = hold(host, MAX_SESSIONS)
    threads = [in_thread(run, config, pool, "hold") for _ in range(MAX_SESSIONS)]
    assert full.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert pool.idle_count() == MAX_SESSIONS  # every session held by an idle helper of VM runner
    other = dataclasses.replace(config, vm_name="other")
    assert run(other, pool, "echo other")[1] == b"other\n"
    assert pool.connections.opened == 1
    assert pool.idle_count() == MAX_SESSIONS  # one of runner's closed, other's kept
    assert sum(channel.closed for channel in host.helpers) == 1


def test_callers_waiting_for_a_dead_host_share_one_failure(config):
    host = FakeHost()
    host.refuse = "no answer from mgmt.example:22 within 0.3 s"
    host.connect_delay = 0.3  # the others ask for the connection while it is being opened
    pool = host.pool()
    errors = []

    def call() -> None:
        try:
            run(config, pool, "echo x")
        except SSHError as err:
            errors.append(err)

    threads = [in_thread(call) for _ in range(5)]
    for thread in threads:
        thread.join(10)
    assert len(errors) == 5 and host.connects == 1
