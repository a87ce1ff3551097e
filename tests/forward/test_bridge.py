"""The laptop bridge through the lab: concurrency beyond MaxSessions, byte exactness, re-key."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time

import pytest

from dapfab.bridge import LaptopBridge, relay_command
from dapfab.connection import MAX_SESSIONS, POOL
from dapfab.errors import ConfigError
from dapfab.forward import port_forward

ECHO, SOURCE = 9000, 9002
MIB = 1 << 20


def test_the_relay_uses_only_bash_cat_and_readlink():
    from dapfab.remote import scripts

    assert (scripts.load("relay").tools, scripts.load("listener").tools) == (("cat",), ("readlink",))
    code = relay_command(8080)
    assert "\nset -- 8080 '' 111 112\n" in code and code.endswith("exec cat <&3\n")
    assert "\nset -- 8080 4242 111 112\n" in relay_command(8080, 4242)


def test_a_laptop_port_in_use_is_an_input_error(runner_config=None):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bridge = LaptopBridge(None, 1, laptop_port=taken.getsockname()[1])  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as caught:
            bridge.bind()
    assert caught.value.exit_code == 2
    assert "in use" in str(caught.value)


def _echo_round_trip(port: int, size: int, chunk: int = MIB) -> tuple[str, str, int]:
    """Send ``size`` random bytes to the echo port; sha256 of what was sent and received."""
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    received = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:

        def read() -> None:
            while received[0] < size:
                data = sock.recv(4 * MIB)
                if not data:
                    break
                got_hash.update(data)
                received[0] += len(data)

        reader = threading.Thread(target=read)
        reader.start()
        block = os.urandom(chunk)
        for _ in range(size // chunk):
            block = hashlib.sha512(block).digest() * (chunk // 64)
            sock.sendall(block)
            sent_hash.update(block)
        reader.join()
    return sent_hash.hexdigest(), got_hash.hexdigest(), received[0]


@pytest.mark.lab
def test_twenty_concurrent_connections_more_than_max_sessions(lab, runner_config):
    results: dict[int, tuple[str, str, int]] = {}
    opened_before = POOL.opened
    with port_forward(runner_config, "pod/web", ECHO) as runner_port:
        with LaptopBridge(runner_config, runner_port) as bridge:
            workers = [
                threading.Thread(
                    target=lambda i=i: results.__setitem__(i, _echo_round_trip(bridge.laptop_port, 4 * MIB))
                )
                for i in range(20)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert bridge.total_connections == 20
    assert 20 > MAX_SESSIONS
    assert POOL.opened - opened_before >= 2  # more SSH connections, no failure
    assert len(results) == 20
    for sent, got, size in results.values():
        assert (sent, size) == (got, 4 * MIB)


@pytest.mark.lab
def test_256_mib_each_way_arrive_byte_exact(lab, runner_config):
    with port_forward(runner_config, "pod/web", ECHO) as runner_port:
        with LaptopBridge(runner_config, runner_port) as bridge:
            start = time.monotonic()
            sent, got, size = _echo_round_trip(bridge.laptop_port, 256 * MIB)
            seconds = time.monotonic() - start
    assert size == 256 * MIB
    assert sent == got
    print(f"256 MiB each way in {seconds:.1f} s: {256 / seconds:.1f} MiB/s each way")


def _download(port: int, size: int) -> tuple[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"%d\n" % size)
        digest, count = hashlib.sha256(), 0
        while True:
            data = sock.recv(4 * MIB)
            if not data:
                break
            digest.update(data)
            count += len(data)
    return digest.hexdigest(), count


def _pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for _ in range(size // len(block)):
        digest.update(block)
    return digest.hexdigest()


class _RekeyCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rekeys = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Rekeying"):
            self.rekeys += 1


@pytest.mark.lab
def test_a_1_5_gib_transfer_through_one_forward_survives_the_ssh_rekey(lab, runner_config):
    size = 1536 * MIB
    logger = logging.getLogger("paramiko.transport")
    counter, level = _RekeyCounter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        with port_forward(runner_config, "pod/web", SOURCE) as runner_port:
            with LaptopBridge(runner_config, runner_port) as bridge:
                start = time.monotonic()
                digest, count = _download(bridge.laptop_port, size)
                seconds = time.monotonic() - start
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
    assert counter.rekeys >= 2  # paramiko re-keys every 512 MiB on each hop's transport
    assert count == size
    assert digest == _pattern_sha256(size)
    print(f"1.5 GiB in {seconds:.1f} s: {1536 / seconds:.1f} MiB/s, {counter.rekeys} re-keys")
