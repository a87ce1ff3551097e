"""``inv lab.demo``: dapfab's three commands against the lab, each shown as it runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from typing import Any

_LINE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> \S+ \((runner|laptop)\)")


def _inv(lab: Any) -> list[str]:
    inv = shutil.which("inv")
    return [inv] if inv else [sys.executable, "-m", "invoke"]


def _show(words: list[str]) -> None:
    print(f"\n$ {shlex.join(words)}", flush=True)


def _run(lab: Any, *args: str) -> int:
    words = ["inv", "-f", lab.runtime_config, *args]
    _show(words)
    return subprocess.run(_inv(lab) + words[1:], check=False).returncode


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _forward_round_trip(lab: Any) -> int:
    words = ["inv", "-f", lab.runtime_config, "k8s.forward", "pod/web", "8080", "--laptop-port", "0"]
    _show(words)
    child = subprocess.Popen(
        _inv(lab) + words[1:], stdout=subprocess.PIPE, text=True, preexec_fn=_default_signals
    )
    try:
        assert child.stdout is not None
        # readline() buffers, so a select() on the pipe could miss a line already read:
        # bound the wait with a timer that stops the child instead.
        watchdog = threading.Timer(60, child.kill)
        watchdog.start()
        ports: dict[str, str] = {}
        try:
            while len(ports) < 2:
                line = child.stdout.readline()
                if not line:
                    break
                print(line, end="", flush=True)
                match = _LINE.match(line)
                if match:
                    ports[match.group(2)] = match.group(1)
        finally:
            watchdog.cancel()
        if "laptop" not in ports:
            print("the forward did not come up", file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{ports['laptop']}/status/200"
        print(f"\n$ curl {url}    # on this machine, through the bridge", flush=True)
        with urllib.request.urlopen(url, timeout=30) as answer:
            print(answer.read().decode(), end="", flush=True)
        print("\n(Ctrl-C to the forward)", flush=True)
        child.send_signal(signal.SIGINT)
        code = child.wait(30)
        print(f"k8s.forward exited with {code} after cleaning up", flush=True)
        return 0 if code == 130 else 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def run_demo(lab: Any) -> None:
    """Bring the lab up if needed, run the demo commands, say how to go on by hand."""
    if not lab.status().get("up"):
        print(f"Lab {lab.lab_id} is not up; starting it ...", flush=True)
        lab.up()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    failures = 0
    failures += _run(lab, "k8s.kubectl", "--", "get", "pods", "-A") != 0
    url = f"http://{lab.cluster_address}:8080/demo?from=dapfab"
    failures += _run(lab, "k8s.curl", "--header", "X-Demo: 1", url) != 0
    failures += _forward_round_trip(lab)
    print(
        "\nGo on by hand (the lab stays up until `inv lab.down`):\n"
        f"  inv -f {lab.runtime_config} k8s.kubectl -- get pods,svc\n"
        f"  inv -f {lab.runtime_config} k8s.curl --json http://{lab.cluster_address}:8080/status/418\n"
        f"  inv -f {lab.runtime_config} k8s.forward svc/web 80 --laptop-port 8080\n"
        f"or export the variables that `inv lab.up` prints and drop the -f.",
        flush=True,
    )
    if failures:
        raise SystemExit(1)
