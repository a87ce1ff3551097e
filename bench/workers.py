"""dapfab's side of the benchmarks, each run as its own process by ``bench/run.py``.

``python3 bench/workers.py KIND [ARG]`` with the lab's ``DAP_*`` variables set; prints one
JSON object on the last line of stderr-free stdout (``warm``, ``curl``) or streams data
(``stdin``, ``stdout``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _config():  # noqa: ANN202 - RunnerConfig, imported lazily
    from dapfab.config import RunnerConfig

    return RunnerConfig.from_env()


def warm(calls: int) -> None:
    """``calls`` × ``run_in_runner(cfg, 'true')`` after one warm-up call; seconds per call."""
    from dapfab.run import run_in_runner

    cfg = _config()
    run_in_runner(cfg, "true", hide=True, in_stream=False)
    start = time.perf_counter()
    for _ in range(calls):
        run_in_runner(cfg, "true", hide=True, in_stream=False)
    per_call = (time.perf_counter() - start) / calls
    print(json.dumps({"per_call": per_call}))


def stdin() -> None:
    """This process's stdin into ``cat >/dev/null`` in the runner."""
    from dapfab.run import run_in_runner

    run_in_runner(_config(), "cat >/dev/null", in_stream=sys.stdin.buffer)


def stdout(size: int) -> None:
    """``size`` bytes from the runner to this process's stdout."""
    from dapfab.run import run_in_runner

    run_in_runner(_config(), f"head -c {size} /dev/zero", in_stream=False)


def curl(url: str, count: int) -> None:
    """``count`` runner_curl calls started at once from threads; failures and wall time."""
    import threading

    from dapfab.curl import runner_curl

    cfg = _config()
    failures: list[str] = []

    def one() -> None:
        try:
            response = runner_curl(cfg, url)
            if response.status != 200:
                failures.append(f"HTTP {response.status}")
        except Exception as exc:  # counted, not raised: the row reports failures
            failures.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"failures": len(failures), "errors": failures[:3]}))


def fanout(profiles: str, runners: int, seconds: float) -> None:
    """A ``sleep SECONDS`` on the first ``runners`` runners of the JSON file ``profiles``
    (``dap.runners`` entries) at once; the wall time of the whole fan-out, connecting included."""
    import dataclasses

    from dapfab.fanout import run_in_runners

    base = _config()
    chosen = list(json.loads(Path(profiles).read_text()).items())[:runners]
    configs = {name: dataclasses.replace(base, ssh_host=p["ssh_host"], vm_name=p["vm"], incus=p["incus"])
               for name, p in chosen}
    start = time.perf_counter()
    run_in_runners(configs, f"sleep {seconds:g}", hide=True, in_stream=False)
    print(json.dumps({"wall": time.perf_counter() - start}))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "warm":
        warm(int(sys.argv[2]))
    elif kind == "stdin":
        stdin()
    elif kind == "stdout":
        stdout(int(sys.argv[2]))
    elif kind == "curl":
        curl(sys.argv[2], int(sys.argv[3]))
    elif kind == "fanout":
        fanout(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown worker {kind}")
