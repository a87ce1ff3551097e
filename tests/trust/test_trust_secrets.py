"""Secrets and the shared management host.

- No private key material, bearer token, curl header value or secret argument appears in
  dapfab's output or its debug log (``DAP_DEBUG=1``), errors included.
- The management host's process list never shows the user's command or arguments, only the
  incus invocation (sampled while a command with secret arguments runs).
- A command whose quoted form is far over 128 KiB works (each argument under the kernel's
  per-argument limit).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import pytest
from trust_helpers import start_cli

from dapfab.quoting import join

pytestmark = pytest.mark.lab

TOKEN = "tok-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"
PASSWORD = "pw-s3cr3t-Ω-2f8e6d4c"
HEADER = "hdr-0d9c8b7a6f5e4d3c2b1a"


def key_material(path: str) -> list[str]:
    """The base64 lines of a private key file (any of them leaking is a leak)."""
    lines = Path(path).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


def assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret leaked: {secret[:12]}..."


@pytest.fixture
def hold_plugin(lab, plugins, runner_config):
    """``kubectl hold SECONDS ...`` sleeps, ignoring its other arguments."""
    from dapfab.connection import POOL
    from dapfab.run import run_in_runner

    body = '#!/bin/bash\nsleep "$1"\necho held\n'
    run_in_runner(runner_config, f"printf %s {join([body])} > ~/bin/kubectl-hold && "
                                 "chmod +x ~/bin/kubectl-hold", hide=True)
    POOL.close_all()


def sample_processes(lab, stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        for _, argv in lab.processes("mgmt"):
            seen.append("\0".join(argv))
        time.sleep(0.02)


def test_secret_arguments_never_reach_mgmt_process_list_or_debug_output(lab, clean_lab, hold_plugin):
    seen: list[str] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_processes, args=(lab, stop, seen), daemon=True)
    sampler.start()
    try:
        proc = start_cli(lab, "k8s.kubectl", "--", "hold", "3", f"--token={TOKEN}",
                         "create", "secret", "generic", "s", f"--from-literal=password={PASSWORD}",
                         env={"DAP_DEBUG": "1"})
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        sampler.join(5)
    assert proc.returncode == 0, err
    assert out == b"held\n"
    text = (out + err).decode("utf-8", "replace")
    assert "dapfab debug:" in text, "debug logging was on"
    assert_clean(text, [TOKEN, PASSWORD] + key_material(lab.ssh_key))
    everything = "\n".join(seen)
    incus_lines = [s for s in seen if s.split("\0")[0].endswith("incus") or "\0exec\0" in s]
    assert incus_lines, "the sampler saw the incus invocation (so it was looking)"
    assert_clean(everything, [TOKEN, PASSWORD, "hold", "from-literal"])


def test_curl_header_value_is_in_no_output_and_no_process_list(lab, clean_lab):
    seen: list[str] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_processes, args=(lab, stop, seen), daemon=True)
    sampler.start()
    try:
        proc = start_cli(lab, "k8s.curl", f"--header=Authorization: Bearer {HEADER}",
                         f"--header=X-Api-Key: {HEADER}x", "--no-fail",
                         f"http://{lab.cluster_address}:8080/status/204", env={"DAP_DEBUG": "1"})
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        sampler.join(5)
    assert proc.returncode == 0, err
    assert b"HTTP 204" in err
    assert_clean((out + err).decode("utf-8", "replace"), [HEADER])
    assert_clean("\n".join(seen), [HEADER, "Authorization"])
    runner_argv = "\n".join("\0".join(argv) for _, argv in lab.processes("runner", nested=True))
    assert_clean(runner_argv, [HEADER])


def test_errors_under_debug_logging_show_no_key_material(cli, lab, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    done = cli("k8s.kubectl", "--", "get", "pods",
               env={"DAP_DEBUG": "1", "DAP_RUNNER_SSH_KEY": str(stranger)})
    assert done.returncode == 255
    assert "authentication" in done.err
    assert_clean(done.out + done.err, key_material(str(stranger)) + key_material(lab.ssh_key))


def test_a_command_far_over_128_kib_quoted_works(cli, lab, plugins):
    # Ten arguments of 100 kB each, full of characters that need quoting: the quoted command
    # is well over 1 MiB, each argument stays under the kernel's 128 KiB per-argument limit.
    args = [(f"it's $HOME `id` \"{n}\" \\ * ; " * 5000)[:100_000] for n in range(10)]
    assert len(join(args)) > 8 * 128 * 1024
    done = cli("k8s.kubectl", "--", "argc", *args)
    assert done.returncode == 0, done.err[-500:]
    count, digest = done.out.split()
    assert int(count) == 10
    assert digest == hashlib.sha256("".join(args).encode()).hexdigest()


def test_library_command_over_128_kib_quoted_works(runner_config):
    from dapfab.run import run_in_runner

    args = [("'\"$`\\\n" * 20000)[:100_000] for _ in range(3)]
    code = join(["/usr/bin/printf", "%s", *args]) + " | sha256sum"
    assert len(code) > 3 * 128 * 1024
    result = run_in_runner(runner_config, code, hide=True)
    assert result.stdout.split()[0] == hashlib.sha256("".join(args).encode()).hexdigest()
