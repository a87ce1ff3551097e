"""The keeper's messages without root (docs/design.md §12): a real keeper server and the real
client in this process, on a real Unix socket in a private runtime directory, with the
commands running on the fake channel of ``fakeremote``."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import select
import shutil
import tempfile
import threading
import time

import pytest
from fakeremote import FakeHost, Job

from dapfab import errors, thin
from dapfab.config import RunnerConfig
from dapfab.errors import DapTimeout, Interrupted, RunnerError
from dapfab.identity import ConnectionIdentity
from dapfab.keeper import client, place, wire
from dapfab.keeper.server import Keeper


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private runtime directory with a short path (tmp_path can be too long for a Unix
    socket's 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="dapfab-keeper-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", directory)
    monkeypatch.setenv("HOME", str(tmp_path))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def keeper(runtime, tmp_path):
    """A keeper serving the fake host; (config, host, keeper)."""
    config = RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner",
                          known_hosts=str(tmp_path / "known_hosts"), persist=30)
    host = FakeHost()
    server = Keeper(config, helpers=host.pool())
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while client.status(config) is None:
        assert time.monotonic() < deadline, "the keeper did not listen"
        time.sleep(0.02)
    yield config, host, server
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


def call(config, command, **options):
    return client.run(config, command, hide_out=True, hide_err=True, in_stream=options.get("stdin"),
                      timeout=options.get("timeout"), out_stream=None, err_stream=None,
                      abort=options.get("abort"))


def test_a_call_says_hello_runs_and_gets_the_exit_code_and_output(keeper):
    config, host, _ = keeper
    result = call(config, "cat", stdin=io.BytesIO(b"through the keeper"))
    assert (result.exited, result.stdout) == (0, "through the keeper")
    result = call(config, "fail")
    assert (result.exited, result.stderr) == (3, "it failed\n")
    assert host.connects == 1


def test_no_keeper_means_the_caller_runs_it_itself(runtime, tmp_path):
    config = RunnerConfig(ssh_host="ops@mgmt.example", known_hosts=str(tmp_path / "kh"))
    assert call(config, "echo nobody") is None


def test_a_request_of_another_identity_is_refused(keeper, tmp_path):
    config, host, _ = keeper
    other = dataclasses.replace(config, ssh_host="ops@other.example")
    sock = raw_session(config)
    wire.send(sock, {"op": "run", "config": dataclasses.asdict(other), "command": "echo x",
                     "stdin": None}, b"", [os.open(os.devnull, os.O_WRONLY)] * 2)
    assert wire.Reader(sock).next(5)[0] == {"op": "refused", "why": "another connection identity"}
    assert not [job for job in host.jobs if job.command == "echo x"]


def raw_session(config):
    """A socket to the keeper after hello."""
    sock, found = client._greet(place.socket_path(place.directory(), client.ConnectionIdentity.of(config).digest()))
    assert found == "ok"
    return sock


@pytest.mark.parametrize("client_does", ["leaves", "stays silent"])
def test_a_request_never_confirmed_with_go_never_runs(keeper, monkeypatch, client_does):
    from dapfab.keeper import server

    monkeypatch.setattr(server, "GO_WAIT", 0.3)
    config, host, _ = keeper
    sock = raw_session(config)
    null = os.open(os.devnull, os.O_WRONLY)
    wire.send(sock, {"op": "run", "config": dataclasses.asdict(config), "command": "echo unconfirmed",
                     "stdin": None}, b"", [null, null])
    os.close(null)
    reader = wire.Reader(sock)
    assert reader.next(5)[0]["op"] == "accepted"
    if client_does == "leaves":
        sock.close()
    time.sleep(0.8)  # past GO_WAIT
    assert not [job for job in host.jobs if job.command == "echo unconfirmed"]
    sock.close()


def test_an_error_comes_back_with_its_class_hop_and_exit_code(keeper):
    config, host, server = keeper
    deadline = time.monotonic() + 10
    while not server.helpers.idle_count():  # the keeper's warm-up leaves a helper...
        assert time.monotonic() < deadline, "the keeper did not warm up"
        time.sleep(0.01)
    host.exec_error = (1, b"Error: Instance not found\n")
    server.helpers.drop_idle()  # ...which would take the command
    with pytest.raises(RunnerError, match="VM runner not found") as caught:
        call(config, "echo x")
    assert (caught.value.exit_code, caught.value.hop) == (125, "runner")


def test_quit_stops_the_command_and_the_call_is_interrupted(keeper):
    config, host, _ = keeper
    abort = threading.Event()
    threading.Thread(target=lambda: (wait_for_job(host, "wait"), abort.set()), daemon=True).start()
    began = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        call(config, "wait", abort=abort)
    assert str(caught.value) == str(errors.stopped_with_others())
    # The keeper stops it on `quit` and says so; without that the client gives up after
    # QUIT_WAIT and only its leaving stops the command.
    assert time.monotonic() - began < client.QUIT_WAIT / 2
    assert host.quits == 1 and job_named(host, "wait").quit.is_set()


def test_a_time_limit_stops_the_command_with_the_direct_calls_error(keeper):
    config, host, _ = keeper
    with pytest.raises(DapTimeout) as caught:
        call(config, "wait", timeout=0.3)
    assert str(caught.value) == str(errors.command_timed_out(0.3))  # as test_core_process's
    assert job_named(host, "wait").quit.is_set()


def job_named(host: FakeHost, command: str) -> Job:
    return next(job for job in host.jobs if job.command == command)


def wait_for_job(host: FakeHost, command: str) -> Job:
    deadline = time.monotonic() + 10
    while not any(job.command == command for job in host.jobs):
        assert time.monotonic() < deadline, f"{command} never ran"
        time.sleep(0.01)
    return job_named(host, command)


def test_pause_stops_reading_the_commands_output_until_resume(keeper):
    """After `pause` the keeper reads no more of the command's output (the chunk its pump
    was already waiting for still passes); after `resume` the rest comes."""
    config, host, _ = keeper
    steps = [threading.Event() for _ in range(2)]

    def talk(job: Job) -> int:
        job.out(b"a")
        for step, text in zip(steps, (b"b", b"c"), strict=True):
            step.wait(10)
            job.out(text)
        return 0

    host.behaviour = talk
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    sock = raw_session(config)
    wire.send(sock, {"op": "run", "config": dataclasses.asdict(config), "command": "talk",
                     "stdin": None}, b"", [write_end, write_end])
    os.close(write_end)
    reader = wire.Reader(sock)
    assert reader.next(5)[0]["op"] == "accepted"
    wire.send(sock, {"op": "go"})
    assert read_until(read_end, b"a")
    wire.send(sock, {"op": "pause"})
    time.sleep(0.3)  # the keeper takes the pause in
    steps[0].set()
    assert read_until(read_end, b"b")  # the pump was already waiting for this one
    steps[1].set()
    time.sleep(0.5)
    assert os_read(read_end) == b""  # paused: "c" stays in the channel
    wire.send(sock, {"op": "resume"})
    assert read_until(read_end, b"c")
    assert reader.next(10)[0] == {"op": "exit", "code": 0}
    os.close(read_end)
    sock.close()


def os_read(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def read_until(fd: int, wanted: bytes, seconds: float = 10) -> bool:
    got, deadline = b"", time.monotonic() + seconds
    while wanted not in got and time.monotonic() < deadline:
        got += os_read(fd)
        time.sleep(0.01)
    return wanted in got


def test_stop_ends_the_keeper_and_removes_its_socket(keeper):
    config, _, server = keeper
    assert client.stop(config) == [os.getpid()]
    assert client.status(config) is None
    assert not os.path.exists(server.socket_path)


def test_a_keeper_started_while_another_stops_waits_for_the_lock_and_serves(runtime, tmp_path):
    """The lock held without a socket (a keeper stopping, just after `config.disconnect`): a
    new keeper waits for it instead of exiting, and serves once it is free."""
    config = RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner",
                          known_hosts=str(tmp_path / "known_hosts"), persist=30)
    server = Keeper(config, helpers=FakeHost().pool())
    place.directory()
    held = os.open(place.lock_path(server.socket_path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert thread.is_alive() and client.status(config) is None  # waiting, not serving
        os.close(held)  # the old keeper is gone
        deadline = time.monotonic() + 5
        while client.status(config) is None:
            assert time.monotonic() < deadline, "the new keeper did not serve"
            time.sleep(0.02)
    finally:
        server.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_a_spawned_keeper_holds_no_descriptor_its_spawner_passed_on(runtime, tmp_path):
    """A pipe the caller left inheritable (a shell's fd 3, a CI runner's log pipe) is closed
    in the keeper at once: its reader sees EOF when the caller exits, not when the keeper
    does, ``persist`` seconds later."""
    config = RunnerConfig(ssh_host="ops@127.0.0.1:1", vm_name="runner",
                          known_hosts=str(tmp_path / "known_hosts"), persist=30)
    reader, writer = os.pipe()
    os.set_inheritable(writer, True)
    try:
        thin.spawn_keeper(ConnectionIdentity.of(config).digest(),
                          json.dumps(dataclasses.asdict(config)).encode())
    finally:
        os.close(writer)
    try:
        deadline = time.monotonic() + 20
        while client.status(config) is None:
            assert time.monotonic() < deadline, "the keeper did not listen"
            time.sleep(0.05)
        ready, _, _ = select.select([reader], [], [], 10)
        assert ready and os.read(reader, 1) == b"", "the keeper holds the caller's pipe"
    finally:
        client.stop(config)
        os.close(reader)
