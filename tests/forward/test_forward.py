"""port_forward and k8s.forward against the lab: targets, ports, errors, reconnect."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest

from dapfab.errors import CommandError, DapError
from dapfab.forward import forward_command, parse_forwarding, port_forward
from dapfab.run import run_in_runner

LINE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\S+) \((runner|laptop)\)")


def _free_runner_port(config) -> int:
    code = "for p in $(seq 20000 20100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; break; }; done"
    return int(run_in_runner(config, code, hide=True).stdout.strip())


def _curl_in_runner(config, port: int, path: str = "/status/200") -> str:
    return run_in_runner(config, f"curl -sS http://127.0.0.1:{port}{path}", hide=True).stdout


def test_forward_command_listens_on_loopback_only():
    assert forward_command("svc/web", 80, namespace="default") == (
        "kubectl --namespace default port-forward --address 127.0.0.1 svc/web 0:80"
    )


@pytest.mark.parametrize(
    "output,port",
    [
        (b"Forwarding from 127.0.0.1:41967 -> 8080\n", 41967),
        (b"noise\nForwarding from 127.0.0.1:80 -> 8080\nHandling connection", 80),
        (b"Forwarding from [::1]:41967 -> 8080\n", None),
        (b"", None),
    ],
)
def test_the_runner_port_is_parsed_from_kubectls_forwarding_line(output, port):
    assert parse_forwarding(output) == port


@pytest.mark.lab
@pytest.mark.parametrize("target,remote", [("pod/web", 8080), ("svc/web", 80)])
@pytest.mark.parametrize("fixed", [False, True], ids=["random-port", "fixed-port"])
def test_curl_through_a_forward_from_the_runner(lab, runner_config, target, remote, fixed):
    wanted = _free_runner_port(runner_config) if fixed else 0
    with port_forward(runner_config, target, remote, local_port=wanted) as port:
        if fixed:
            assert port == wanted
        assert json.loads(_curl_in_runner(runner_config, port)) == {"status": 200}


@pytest.mark.lab
def test_a_missing_pod_raises_kubectls_own_message(lab, runner_config):
    with pytest.raises(CommandError) as caught:
        with port_forward(runner_config, "pod/nope", 8080):
            pass
    assert 'pods "nope" not found' in str(caught.value)
    assert caught.value.hop == "kubectl"


@pytest.mark.lab
def test_a_runner_port_in_use_raises_kubectls_own_message(lab, runner_config):
    with port_forward(runner_config, "pod/web", 8080) as port:
        with pytest.raises(DapError) as caught:
            with port_forward(runner_config, "pod/web", 8080, local_port=port):
                pass
    assert "address already in use" in str(caught.value).lower() or "unable to listen" in str(caught.value).lower()


@pytest.mark.lab
def test_k8s_forward_reconnects_on_the_same_port_after_a_pod_restart(lab, inv):
    from dapfab.testing.cluster.control import restart_pod

    child = inv("k8s.forward", "pod/web", "8080", "--laptop-port", "0")
    runner_line, laptop_line = LINE.match(child.line()), LINE.match(child.line())
    assert runner_line and runner_line.group(3) == "runner"
    assert laptop_line and laptop_line.group(3) == "laptop"
    url = f"http://127.0.0.1:{laptop_line.group(1)}/echo"

    def generation() -> int:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())["generation"]

    before = generation()
    # A connection made while the pod is down fails to dial; kubectl reports the error
    # the kubelet sends and ends the whole forward ("lost connection to pod").
    restarting = threading.Thread(
        target=restart_pod, args=(lab.state_dir / "cluster", "web"), kwargs={"gap": 4.0}
    )
    restarting.start()
    time.sleep(1.5)
    with pytest.raises(OSError):
        generation()
    restarting.join()
    deadline = time.monotonic() + 30
    while True:
        try:
            after = generation()
            if after != before:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "no answer from the new pod within 30 s"
        time.sleep(0.5)
    child.proc.terminate()
    rc, err = child.finish()
    assert rc == 143
    assert f"restarting in 0.5 s on runner port {runner_line.group(1)}" in err
    assert f"forward reconnected: 127.0.0.1:{runner_line.group(1)}" in err


@pytest.mark.lab
def test_k8s_forward_with_a_bad_port_exits_2_before_connecting(lab, inv):
    child = inv("k8s.forward", "pod/web", "99999")
    rc, err = child.finish()
    assert rc == 2
    assert err.startswith("dapfab: config: invalid port")
