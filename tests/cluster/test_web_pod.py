"""The demo web pod's endpoints, talked to directly (no kubectl)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cluster_loopback import stop

from dapfab.testing.cluster.pods import wait_listening
from dapfab.testing.cluster.web import BINARY_BODY, pattern_bytes


@pytest.fixture(scope="module")
def pod() -> Iterator[str]:
    address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    proc = subprocess.Popen([sys.executable, "-m", "dapfab.testing.cluster.web", "--address", address],
                            stdout=subprocess.DEVNULL)
    try:
        assert wait_listening(address, 8080)
        yield address
    finally:
        stop(proc)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, timeout=40)


def test_any_path_echoes_method_path_headers_and_body(pod: str) -> None:
    r = curl("-X", "PATCH", "-H", "X-A: 1", "--data-binary", "x=1&y=2", f"http://{pod}:8080/a/b?c=d")
    echo = json.loads(r.stdout)
    assert (echo["method"], echo["path"], echo["query"], echo["body"]) == ("PATCH", "/a/b", "c=d", "x=1&y=2")
    assert echo["headers"]["x-a"] == "1"


@pytest.mark.parametrize("code", [200, 201, 204, 404, 418, 500, 503])
def test_status_n_answers_n(pod: str, code: int) -> None:
    r = curl("-o", "-", "-w", "\n%{http_code}", f"http://{pod}:8080/status/{code}")
    body, _, got = r.stdout.rpartition(b"\n")
    assert int(got) == code
    assert (body == b"") == (code == 204)


def test_bytes_n_sends_exactly_n_pattern_bytes(pod: str) -> None:
    r = curl(f"http://{pod}:8080/bytes/3000001")
    assert r.stdout == pattern_bytes(3000001)


def test_binary_is_not_utf8(pod: str) -> None:
    body = curl(f"http://{pod}:8080/binary").stdout
    assert body == BINARY_BODY
    with pytest.raises(UnicodeDecodeError):
        body.decode()


def test_drop_closes_without_an_answer(pod: str) -> None:
    r = curl(f"http://{pod}:8080/drop")
    assert r.returncode == 52  # curl: empty reply from server


def test_slow_answers_after_the_delay(pod: str) -> None:
    r = curl("-w", "%{time_total}", "-o", "/dev/null", f"http://{pod}:8080/slow/1")
    assert float(r.stdout) >= 1.0


def test_tcp_echo_discard_and_source(pod: str) -> None:
    with socket.create_connection((pod, 9000), timeout=10) as s:
        s.sendall(b"ping\x00\xff")
        s.shutdown(socket.SHUT_WR)
        assert s.makefile("rb").read() == b"ping\x00\xff"
    with socket.create_connection((pod, 9001), timeout=10) as s:
        s.sendall(b"x" * 100000)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
    with socket.create_connection((pod, 9002), timeout=10) as s:
        s.sendall(b"70000\n")
        assert s.makefile("rb").read() == pattern_bytes(70000)
