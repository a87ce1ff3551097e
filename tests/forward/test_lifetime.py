"""Lifetime (docs/design.md §7): no remote kubectl or mgmt exec client outlives what started it.

Every case lists the processes in the runner and on mgmt afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from dapfab.errors import Interrupted
from dapfab.forward import port_forward
from dapfab.run import kubectl_in_runner

pytestmark = pytest.mark.lab

FORWARD = ("k8s.forward", "pod/web", "8080")
LOGS = ("k8s.kubectl", "--", "logs", "-f", "web")
LINE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> pod/web:8080 \(runner\)")


def _running(lab, inv, args):
    """Start ``inv ARGS`` and return it once its remote command is running in the runner."""
    child = inv(*args)
    if args == FORWARD:
        assert LINE.match(child.line()), "no forwarding line"
    else:
        assert child.line(), "no log line"  # `logs -f` streams: kubectl is up
    return child


def test_forward_block_exits_normally_and_kubectl_is_gone_before_it_returns(lab, runner_config, clean):
    with port_forward(runner_config, "pod/web", 8080) as port:
        assert port > 0
    assert clean(0.5) < 0.5


def test_an_exception_inside_the_block_kills_kubectl(lab, runner_config, clean):
    with pytest.raises(ZeroDivisionError):
        with port_forward(runner_config, "pod/web", 8080):
            1 / 0  # noqa: B018
    clean(0.5)


def test_keyboard_interrupt_inside_the_block_kills_kubectl(lab, runner_config, clean):
    with pytest.raises(KeyboardInterrupt):
        with port_forward(runner_config, "pod/web", 8080):
            raise KeyboardInterrupt
    clean(0.5)


def test_sigterm_in_the_main_thread_raises_interrupted_and_kills_kubectl(lab, runner_config, clean):
    with pytest.raises(Interrupted) as caught:
        with port_forward(runner_config, "pod/web", 8080):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    clean(0.5)


def test_a_timed_out_logs_follow_is_killed(lab, runner_config, clean):
    from dapfab.errors import DapTimeout

    with pytest.raises(DapTimeout):
        kubectl_in_runner(runner_config, ["logs", "-f", "web"], hide=True, timeout=2)
    clean(0.5)


@pytest.mark.parametrize("args", [FORWARD, LOGS], ids=["forward", "logs-f"])
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_inv_cleans_up_and_exits_130_or_143(lab, inv, clean, args, sig, code):
    child = _running(lab, inv, args)
    child.proc.send_signal(sig)
    rc, err = child.finish()
    if args == FORWARD:
        assert rc == code, err
        assert "interrupted" in err
    else:
        assert rc == code, err
    clean(1.0)


@pytest.mark.parametrize("args", [FORWARD, LOGS], ids=["forward", "logs-f"])
def test_sigkill_of_inv_leaves_nothing_within_20_s(lab, inv, clean, args):
    child = _running(lab, inv, args)
    child.proc.kill()
    child.proc.wait()
    print(f"gone after {clean(20.0):.1f} s")


@pytest.mark.parametrize("args", [FORWARD, LOGS], ids=["forward", "logs-f"])
def test_a_cut_link_leaves_nothing_within_20_s(lab, inv, clean, args):
    child = _running(lab, inv, args)
    with lab.link_cut("laptop", "bastion"):
        print(f"gone after {clean(20.0):.1f} s")
        child.kill()


@pytest.mark.parametrize("args", [FORWARD, LOGS], ids=["forward", "logs-f"])
def test_a_frozen_inv_leaves_nothing_within_20_s(lab, inv, clean, args):
    child = _running(lab, inv, args)
    lab.freeze(child.proc.pid)
    try:
        print(f"gone after {clean(20.0):.1f} s")
    finally:
        child.kill()
        lab.thaw(child.proc.pid)


def test_fifty_forwards_in_a_loop_leave_nothing(lab, runner_config, clean):
    ports = set()
    for _ in range(50):
        with port_forward(runner_config, "pod/web", 8080) as port:
            ports.add(port)
    assert len(ports) > 1
    clean(0.5)
