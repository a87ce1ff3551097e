"""A connection that died silently (the laptop slept, the Wi-Fi changed, a NAT forgot it)
never makes the next call hang: it gets a fresh connection within a cold call's time plus
about 2 s, through a keeper (called by the thin ``dap``, as a shell's calls are) and in a
process that holds its own (docs/design.md §10)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from trust_helpers import REPO, cli_argv, cli_env, frozen

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

ASLEEP = 60  # seconds the laptop's processes are stopped, as by a closed lid
PERSIST = {"DAP_SSH_PERSIST": "600"}  # the keeper outlives the sleep: it must not just exit
SLACK = 2.0  # the bound over a cold call, plus as much again for a loaded machine

OWN_CONNECTION = """
    import dataclasses, json, sys, time
    from dapfab import run_in_runner
    from dapfab.config import RunnerConfig
    config = dataclasses.replace(RunnerConfig.from_env(), persist=0)
    run_in_runner(config, "true", hide=True, in_stream=False)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    result = run_in_runner(config, "echo after", hide=True, in_stream=False, warn=True)
    print(json.dumps([result.exited, result.stdout, time.monotonic() - started]), flush=True)
"""


def kubectl(lab, persist: str) -> tuple[subprocess.CompletedProcess, float]:
    """``dap k8s.kubectl``: from its third call with a keeper on, the thin path."""
    started = time.monotonic()
    done = subprocess.run(cli_argv("k8s.kubectl", "--", "get", "pods", "-o", "name",
                                   program="dap"), cwd=REPO,
                          env=cli_env(lab, {"DAP_SSH_PERSIST": persist}), capture_output=True,
                          timeout=120)
    return done, time.monotonic() - started


def test_the_first_call_after_a_sleep_on_a_dead_link_gets_a_fresh_connection(lab):
    cold, cold_took = kubectl(lab, "0")
    assert cold.returncode == 0, cold.stderr
    for _ in range(2):  # the first starts the keeper, the second goes through it
        done, _ = kubectl(lab, PERSIST["DAP_SSH_PERSIST"])
        assert done.returncode == 0, done.stderr
    (keeper,) = wait_until(lab.keepers, timeout=20, what="a keeper")
    own = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWN_CONNECTION)], cwd=REPO,
                           env=cli_env(lab, PERSIST), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert own.stdout.readline() == b"ready\n", own.stderr.read1()
        # The peers of both open connections stop answering, for good (a NAT forgot them);
        # the laptop's processes sleep meanwhile.
        with frozen(lab, "bastion"), frozen(lab, "mgmt"):
            for pid in (keeper, own.pid):
                lab.freeze(pid)
            time.sleep(ASLEEP)
            for pid in (keeper, own.pid):
                lab.thaw(pid)
            after, took = kubectl(lab, PERSIST["DAP_SSH_PERSIST"])
            own.stdin.write(b"go\n")
            own.stdin.flush()
            line = own.stdout.readline()
            assert line, own.stderr.read1()
            exited, stdout, own_took = json.loads(line)
        assert (after.returncode, after.stdout) == (0, b"pod/web\n"), after.stderr
        assert lab.keepers() == [keeper]  # the same keeper, on a new connection
        assert took <= cold_took + SLACK * 2, (took, cold_took)
        assert (exited, stdout) == (0, "after\n"), own.stderr.read1()
        assert own_took <= cold_took + SLACK * 2, (own_took, cold_took)
    finally:
        own.kill()
        own.wait()
