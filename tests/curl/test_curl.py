"""runner_curl and k8s.curl against the lab's web pod, with the real curl in the runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dapfab.curl import curl_config, parse_headers, runner_curl, split_stderr
from dapfab.errors import ConfigError, CurlError

REPO = Path(__file__).resolve().parents[2]
BINARY = bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3, 0x28, 0xA0, 0xA1]) + "é".encode("latin-1") + b"\n"


# -- pure parts ----------------------------------------------------------------------------
def test_the_final_status_comes_from_the_last_header_block():
    dump = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    assert parse_headers(dump) == (404, [("X-A", "1"), ("X-A", "2")])


def test_a_body_ending_in_digits_cannot_confuse_the_status():
    stderr = b"\x00dapfab-curl 0 19\nHTTP/1.1 200 OK\r\n\r\n"
    assert split_stderr(stderr) == (b"", 0, b"HTTP/1.1 200 OK\r\n\r\n")


def test_config_values_are_quoted_for_curls_config_syntax():
    text = curl_config("http://h/", method="GET", headers=['A: x"y\\z']).decode()
    assert 'header = "A: x\\"y\\\\z"' in text


def test_a_header_with_a_newline_is_refused_before_anything_is_sent():
    with pytest.raises(ConfigError):
        runner_curl(None, "http://h/", headers={"A": "x\ny"})  # type: ignore[arg-type]


# -- against the lab -----------------------------------------------------------------------
def _web(lab, path: str) -> str:
    return f"http://{lab.cluster_address}:8080{path}"


@pytest.mark.lab
@pytest.mark.parametrize(
    "path,status,body",
    [
        ("/status/200", 200, b'{"status": 200}\n'),
        ("/status/204", 204, b""),
        ("/status/404", 404, b'{"status": 404}\n'),
        ("/status/500", 500, b'{"status": 500}\n'),
        ("/binary", 200, BINARY),
        ("/bytes/70000", 200, (bytes(range(256)) * 274)[:70000]),
    ],
)
def test_status_and_body_are_exact(lab, runner_config, path, status, body):
    response = runner_curl(runner_config, _web(lab, path))
    assert (response.status, response.body) == (status, body)


@pytest.mark.lab
def test_a_body_ending_in_a_newline_and_200_is_returned_as_it_is(lab, runner_config):
    response = runner_curl(runner_config, _web(lab, "/echo"), method="POST", data=b"x\n200")
    assert response.status == 200
    assert json.loads(response.body)["body"] == "x\n200"
    assert response.headers["content-type"] == "application/json"


def _command_lines(lab, host: str) -> list[str]:
    """Every command line in ``host`` (in the runner: dapfab's nested PID namespaces too)."""
    return [" ".join(argv) for _, argv in lab.processes(host, nested=True)]


@pytest.mark.lab
def test_the_secret_header_is_on_no_command_line_in_mgmt_or_the_runner(lab, runner_config):
    secret = "s3cret-" + os.urandom(8).hex()
    body = "body-" + os.urandom(8).hex()
    answer: list = []
    request = threading.Thread(
        target=lambda: answer.append(
            runner_curl(
                runner_config,
                _web(lab, "/slow/3"),
                method="POST",
                headers={"Authorization": f"Bearer {secret}"},
                data=body,
            )
        )
    )
    request.start()
    samples = 0
    curl_seen = False
    while request.is_alive():
        for host in ("mgmt", "runner", "bastion"):
            for line in _command_lines(lab, host):
                assert secret not in line and body not in line, f"{host}: {line}"
                curl_seen |= line.startswith("curl --config")
        samples += 1
        time.sleep(0.05)
    request.join()
    assert curl_seen and samples > 10
    echoed = json.loads(answer[0].body)
    assert echoed["headers"]["authorization"] == f"Bearer {secret}"
    assert echoed["body"] == body


@pytest.mark.lab
def test_a_refused_connection_raises_curls_code_7(lab, runner_config):
    with pytest.raises(CurlError) as caught:
        runner_curl(runner_config, "http://127.0.0.1:1/")
    assert caught.value.exit_code == 7
    assert "Failed to connect" in str(caught.value)


@pytest.mark.lab
def test_a_timeout_raises_curls_code_28(lab, runner_config):
    with pytest.raises(CurlError) as caught:
        runner_curl(runner_config, _web(lab, "/slow/10"), timeout=1)
    assert caught.value.exit_code == 28
    assert "timed out" in str(caught.value)


# -- k8s.curl ------------------------------------------------------------------------------
def _inv(lab, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    inv = shutil.which("inv") or "inv"
    return subprocess.run(
        [inv, "-f", lab.runtime_config, "k8s.curl", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.lab
def test_k8s_curl_prints_the_body_exactly_and_the_status_on_stderr(lab):
    done = _inv(lab, _web(lab, "/binary"))
    assert (done.returncode, done.stdout, done.stderr) == (0, BINARY, b"HTTP 200\n")


@pytest.mark.lab
def test_k8s_curl_exits_22_for_404_with_the_body_unless_no_fail(lab):
    done = _inv(lab, _web(lab, "/status/404"))
    assert (done.returncode, done.stdout, done.stderr) == (22, b'{"status": 404}\n', b"HTTP 404\n")
    assert _inv(lab, "--no-fail", _web(lab, "/status/404")).returncode == 0


@pytest.mark.lab
def test_k8s_curl_posts_a_body_from_stdin(lab):
    done = _inv(lab, "--data", "@-", _web(lab, "/echo"), stdin=b"from stdin\n200")
    assert done.returncode == 0
    echoed = json.loads(done.stdout)
    assert (echoed["method"], echoed["body"]) == ("POST", "from stdin\n200")


@pytest.mark.lab
def test_k8s_curl_posts_a_body_from_a_laptop_file_with_headers(lab, tmp_path):
    data = tmp_path / "body.bin"
    data.write_bytes(BINARY)
    done = _inv(lab, "--method", "PUT", "--header", "X-One: 1", "--header", "X-Two: 2",
                "--data", f"@{data}", _web(lab, "/echo"))
    echoed = json.loads(done.stdout)
    assert echoed["method"] == "PUT"
    assert (echoed["headers"]["x-one"], echoed["headers"]["x-two"]) == ("1", "2")
    import base64

    assert base64.b64decode(echoed["body_base64"]) == BINARY


@pytest.mark.lab
@pytest.mark.parametrize(
    "path,key,value",
    [("/status/200", "body", '{"status": 200}\n'), ("/binary", "body_base64", "//4AgMMooKHpCg==")],
)
def test_k8s_curl_json_prints_status_headers_and_body(lab, path, key, value):
    done = _inv(lab, "--json", _web(lab, path))
    out = json.loads(done.stdout)
    assert out["status"] == 200
    assert out[key] == value
    assert out["headers"]["x-pod"] == "web"


@pytest.mark.lab
def test_k8s_curl_passes_curls_own_code_and_one_line_for_a_refused_connection(lab):
    done = _inv(lab, "http://127.0.0.1:1/")
    assert done.returncode == 7
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dapfab: curl: (7) Failed to connect")
