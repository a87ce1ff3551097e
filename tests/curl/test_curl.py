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

from dapfab.curl import curl_config, header_lines, parse_headers, runner_curl, split_stderr
from dapfab.errors import ConfigError, CurlError

REPO = Path(__file__).resolve().parents[2]
BINARY = bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3, 0x28, 0xA0, 0xA1]) + "é".encode("latin-1") + b"\n"


# -- pure parts ----------------------------------------------------------------------------
def test_the_final_status_comes_from_the_last_header_block():
    dump = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    assert parse_headers(dump) == (404, [("X-A", "1"), ("X-A", "2")])


def test_curls_own_stderr_the_exit_code_and_the_header_dump_are_told_apart():
    # The dump went through a shell variable, which cannot hold NUL: the last marker is ours.
    stderr = b"curl: (7) noise\n\x00dapfab-curl 7\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r"
    assert split_stderr(stderr) == (b"curl: (7) noise\n", 7, b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r")


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
    assert response.headers["content-type"] == ["application/json"]


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
    assert out["headers"]["x-pod"] == ["web"]


@pytest.mark.lab
def test_k8s_curl_passes_curls_own_code_and_one_line_for_a_refused_connection(lab):
    done = _inv(lab, "http://127.0.0.1:1/")
    assert done.returncode == 7
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dapfab: curl: (7) Failed to connect")


# -- headers and methods mean what they mean to curl ---------------------------------------
@pytest.mark.parametrize(
    "given,line",
    [
        ("X-Leading:    spaced  ", "X-Leading:    spaced  "),  # sent as given, not trimmed
        ("Host:", "Host:"),  # removes a header curl would send
        ("X-Custom;", "X-Custom;"),  # curl's form for an empty header
        ("Accept: */*", "Accept: */*"),
    ],
)
def test_header_strings_reach_curl_exactly_as_curl_h_takes_them(given, line):
    assert header_lines([given]) == [line]


def test_a_mapping_sends_values_removes_on_none_and_sends_empty_on_empty():
    assert header_lines({"A": "1", "Host": None, "X-E": ""}) == ["A: 1", "Host:", "X-E;"]


@pytest.mark.parametrize("bad", ["Bearer s3cret-token", "Authorization Bearer s3cret: x", "X: a\nb"])
def test_a_malformed_header_is_refused_without_echoing_its_value(bad):
    with pytest.raises(ConfigError) as caught:
        header_lines(["Good: 1", bad])
    assert "header 2" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "a\nb" not in str(caught.value)


def test_head_asks_curl_for_headers_only_and_keeps_them_off_stdout():
    config = curl_config("http://h/", method="HEAD").decode().splitlines()
    assert "head" in config and "no-include" in config and not any(
        line.startswith("request") for line in config
    )


def _raw_headers(response) -> list[str]:
    return json.loads(response.body)["raw_headers"]


@pytest.mark.lab
def test_host_colon_removes_the_host_header_and_a_semicolon_sends_one_empty(lab, runner_config):
    raw = _raw_headers(runner_curl(runner_config, _web(lab, "/echo"), headers=["Host:", "X-Custom;"]))
    assert not any(line.lower().startswith("host") for line in raw), raw
    assert "X-Custom:" in raw


@pytest.mark.lab
def test_header_values_arrive_untrimmed(lab, runner_config):
    raw = _raw_headers(runner_curl(runner_config, _web(lab, "/echo"), headers=["X-Leading:    spaced  "]))
    assert "X-Leading:    spaced  " in raw


@pytest.mark.lab
def test_head_has_an_empty_body_in_the_api_stdout_and_json(lab, runner_config):
    url = _web(lab, "/status/200")
    response = runner_curl(runner_config, url, method="HEAD")
    assert (response.status, response.body) == (200, b"")
    assert response.headers["content-length"] == ["16"]
    done = _inv(lab, "--method", "HEAD", url)
    assert (done.returncode, done.stdout) == (0, b"")
    out = json.loads(_inv(lab, "--method", "HEAD", "--json", url).stdout)
    assert out["body"] == "" and out["status"] == 200


@pytest.mark.lab
def test_repeated_response_headers_each_keep_their_value(lab, runner_config):
    response = runner_curl(runner_config, _web(lab, "/cookies"))
    assert response.headers["set-cookie"] == ["a=1", "b=2"]
    out = json.loads(_inv(lab, "--json", _web(lab, "/cookies")).stdout)
    assert out["headers"]["set-cookie"] == ["a=1", "b=2"]


@pytest.mark.lab
def test_header_at_file_reads_one_header_a_line_and_keeps_the_token_off_the_command_line(
    lab, tmp_path
):
    token = "tok-" + os.urandom(8).hex()
    headers = tmp_path / "headers"
    headers.write_text(f"Authorization: Bearer {token}\r\n\nX-Two: 2\n")
    done = _inv(lab, "--header", f"@{headers}", _web(lab, "/echo"))
    echoed = json.loads(done.stdout)
    assert echoed["headers"]["authorization"] == f"Bearer {token}"
    assert echoed["headers"]["x-two"] == "2"


@pytest.mark.lab
@pytest.mark.parametrize("timeout", ["nan", "-5", "0", "inf", "abc"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(lab, timeout):
    done = _inv(lab, f"--timeout={timeout}", _web(lab, "/status/200"))
    assert done.returncode == 2
    assert done.stderr.decode().startswith("dapfab: config: invalid --timeout")


@pytest.mark.lab
@pytest.mark.parametrize("status,code", [(399, 0), (400, 22), (401, 22)])
def test_k8s_curl_fails_from_status_400_on(lab, status, code):
    done = _inv(lab, _web(lab, f"/status/{status}"))
    assert (done.returncode, done.stderr) == (code, f"HTTP {status}\n".encode())
