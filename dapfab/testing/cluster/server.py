"""Run the whole cluster: certificates, kubeconfig, API server, pods, control socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
from pathlib import Path

from . import control
from .apiserver import APIServer
from .controller import Controllers
from .pods import PodProcess, ensure_address, web_pod
from .tls import kubeconfig_text, make_certificates, write_private


class Cluster:
    """A running cluster in ``state_dir``; ``run()`` serves until cancelled or SIGTERM."""

    def __init__(self, state_dir: Path, address: str, port: int = 6443,
                 pod_address: str | None = None) -> None:
        self.state_dir, self.address, self.port = Path(state_dir), address, port
        self.pod_address = pod_address or address
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api: APIServer | None = None

    async def run(self) -> None:
        for name in ("ready", control.SOCKET_NAME):
            (self.state_dir / name).unlink(missing_ok=True)
        ca, cert, key = make_certificates(self.state_dir, self.address)
        token = secrets.token_urlsafe(32)
        ensure_address(self.pod_address)
        api = self.api = APIServer(self.state_dir, self.address, self.port, token, self.pod_address)
        web: PodProcess = web_pod("default", "web", self.pod_address, self.state_dir)
        web.on_restart = lambda p: api.pod_restarted(p.namespace, p.name)
        api.pods[("default", "web")] = web
        servers: list[asyncio.base_events.Server] = []
        controllers = asyncio.create_task(Controllers(
            api.store, api.pods, self.pod_address, self.state_dir, api.event,
            on_restart=lambda p: api.pod_restarted(p.namespace, p.name)).run())
        try:
            await web.start()
            servers.append(await asyncio.start_server(
                api.handle, self.address, self.port, ssl=api.ssl_context(cert, key),
                reuse_address=True, limit=1 << 20))
            servers.append(await asyncio.start_unix_server(
                self._control, str(self.state_dir / control.SOCKET_NAME)))
            server_url = f"https://{self.address}:{self.port}"
            write_private(self.state_dir / "kubeconfig", kubeconfig_text(server_url, ca.read_bytes(), token))
            (self.state_dir / "ready").write_text(json.dumps({
                "server": server_url, "pod_address": self.pod_address,
                "pods": {"default/web": {"ports": {"http": 8080, "echo": 9000, "discard": 9001,
                                                   "source": 9002}}}}) + "\n")
            while True:  # like the kubelet with restartPolicy Always
                await asyncio.sleep(0.5)
                for pod in list(api.pods.values()):
                    if pod.exited():
                        try:
                            await pod.restart(gap=0.5)
                        except RuntimeError as exc:
                            print(f"cluster: {exc}", file=sys.stderr, flush=True)
                            continue
        finally:
            controllers.cancel()
            (self.state_dir / "ready").unlink(missing_ok=True)
            for s in servers:
                s.close()
            api.close_connections()
            for pod in list(api.pods.values()):
                await asyncio.to_thread(pod.stop)
            (self.state_dir / control.SOCKET_NAME).unlink(missing_ok=True)
            api.request_log.close()

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode().split()
            answer = await self._command(line)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            answer = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _command(self, words: list[str]) -> dict[str, object]:
        api = self.api
        assert api is not None
        if words[:1] == ["status"]:
            return {"ok": True, "server": f"https://{self.address}:{self.port}",
                    "pod_address": self.pod_address,
                    "pods": {f"{ns}/{n}": {"pid": p.pid, "generation": p.generation,
                                           "restarting": p.restarting}
                             for (ns, n), p in api.pods.items()}}
        if words[:1] == ["restart"] and len(words) >= 2:
            ns, _, name = words[1].rpartition("/")
            pod = api.pods.get((ns or "default", name))
            if pod is None:
                return {"ok": False, "error": f"no pod process {words[1]}"}
            gap = float(words[2]) if len(words) > 2 else 0.5
            await pod.restart(gap)
            return {"ok": True, "generation": pod.generation, "pid": pod.pid}
        return {"ok": False, "error": f"unknown request {' '.join(words)!r}"}


def serve(state_dir: Path, address: str, port: int = 6443, pod_address: str | None = None) -> None:
    """Run the cluster in the foreground until SIGTERM/SIGINT; clean up pods on the way out."""
    cluster = Cluster(state_dir, address, port, pod_address)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await cluster.run()

    asyncio.run(main())
