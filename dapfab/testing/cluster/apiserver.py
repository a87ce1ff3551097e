"""A small Kubernetes API server that the real kubectl accepts (HTTPS, bearer token).

Serves ``/version`` (minor 32), legacy discovery (:mod:`.discovery`), the OpenAPI v3
documents ``apply`` needs, CRUD on the core/v1 and apps/v1 kinds in ``resources.KINDS``
(Tables for ``kubectl get``, plain lists otherwise; apply-patch, strategic merge, JSON
merge and JSON patches; a workload's ``scale`` and ``status``), ``SelfSubjectAccessReview``
(:mod:`.access`), pod logs (``follow`` too), pod port-forward (SPDY/3.1, plain or inside a
WebSocket: :mod:`.websocket`) and pod exec/attach (WebSocket v5 or v4, SPDY/3.1:
:mod:`.remotecommand`). The controllers that act on Deployments live in :mod:`.controller`. Every request is recorded in ``requests.log`` as one JSON
line with ``token``: ``valid`` / ``invalid`` / ``missing`` (never the token itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hmac
import json
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import access, discovery, openapi, remotecommand, resources, websocket
from .pods import PodProcess
from .portforward import PortForwardSession
from .protobuf import ProtobufError, decode_object
from .resources import KINDS, Kind, Obj

MAX_BODY = 16 << 20
PROTECTED = {("namespaces", "", n) for n in ("default", "kube-system", "kube-public", "demo")} | {
    ("pods", "default", "web"), ("services", "default", "web")}


class HTTPError(Exception):
    """An error answered as a v1 Status."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.status = resources.status(code, reason, message, details)


def not_found(plural: str, name: str) -> HTTPError:
    return HTTPError(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural})


TUNNELED_PORTFORWARD = "SPDY/3.1+portforward.k8s.io"  # kubectl 1.30+: SPDY inside a WebSocket
PATCH_TYPES = {"application/merge-patch+json": "merge", "application/strategic-merge-patch+json": "strategic",
               "application/json-patch+json": "json", "application/apply-patch+yaml": "strategic"}


def resource_path(path: str) -> tuple[Kind, str | None, str | None, str | None]:
    """(kind, namespace, name, subresource) of a resource URL (``/api/v1/...`` or
    ``/apis/GROUP/VERSION/...``); 404 for anything else."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        api_version, parts = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        api_version, parts = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise HTTPError(404, "NotFound", "the server could not find the requested resource")
    served = {k.plural: k for k in KINDS.values() if k.api_version == api_version}
    namespace: str | None = None
    if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] in served:
        namespace, parts = parts[1], parts[2:]
    if not parts or parts[0] not in served or len(parts) > 3:
        raise HTTPError(404, "NotFound", "the server could not find the requested resource")
    kind = served[parts[0]]
    name = parts[1] if len(parts) > 1 else None
    if kind.namespaced and name is not None and namespace is None:
        raise HTTPError(404, "NotFound", "the server could not find the requested resource")
    return kind, namespace, name, parts[2] if len(parts) > 2 else None


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale of a workload."""
    meta = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0),
                       "selector": resources.selector_text(obj)}}


def _pod_subresource(req: Request) -> tuple[str, str, str]:
    """(namespace, pod, subresource) of ``/api/v1/namespaces/NS/pods/NAME/SUB``; 404 otherwise."""
    parts = req.path.strip("/").split("/")
    if len(parts) != 7 or parts[2] != "namespaces" or parts[4] != "pods":
        raise HTTPError(404, "NotFound", "the server could not find the requested resource")
    return parts[3], parts[5], parts[6]


class Request:
    """One parsed HTTP/1.1 request."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body
        url = urlsplit(target)
        self.path = unquote(url.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}

    def header_list(self, name: str) -> list[str]:
        """The comma-separated values of header ``name`` (repeated headers are joined)."""
        return [value.strip() for value in self.headers.get(name, "").split(",")]

    def wants_table(self) -> bool:
        return "as=Table" in self.headers.get("accept", "")

    def json_body(self) -> Any:
        ctype = self.headers.get("content-type", "")
        if "protobuf" in ctype:  # kubectl create's typed clients
            try:
                return decode_object(self.body)
            except ProtobufError as exc:
                raise HTTPError(415, "UnsupportedMediaType", str(exc)) from None
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            if "yaml" not in ctype:
                raise HTTPError(400, "BadRequest", "body is not valid JSON") from None
        from ruamel.yaml import YAML  # apply-patch+yaml may really be YAML (only then ruamel)

        try:
            return YAML(typ="safe").load(self.body.decode())
        except Exception as exc:  # noqa: BLE001 - any parse error is a bad request
            raise HTTPError(400, "BadRequest", f"body is not valid YAML: {exc}") from None


class APIServer:
    """The API server state: objects, pods, token, request log."""

    def __init__(self, state_dir: Path, address: str, port: int, token: str, pod_address: str) -> None:
        self.state_dir, self.address, self.port = state_dir, address, port
        self._token = token.encode()
        self.pod_address = pod_address
        self.store = resources.Store()
        resources.seed(self.store, pod_address, address)
        self.pods: dict[tuple[str, str], PodProcess] = {}
        self.request_log = open(state_dir / "requests.log", "a", buffering=1)  # noqa: SIM115
        self.started = time.time()
        self._connections: set[asyncio.Task[Any]] = set()

    # --- connections -----------------------------------------------------------------

    def ssl_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection (keep-alive) until it closes."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    return
                keep = await self._serve(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ssl.SSLError, ValueError):
            return
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def close_connections(self) -> None:
        for task in list(self._connections):
            task.cancel()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                raise ValueError("body too large")
            body = await reader.readexactly(length)
        return Request(method, target, headers, body)

    def _token_state(self, req: Request) -> str:
        auth = req.headers.get("authorization", "")
        if not auth:
            return "missing"
        scheme, _, value = auth.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)
        return "valid" if ok else "invalid"

    def _log(self, req: Request, token: str, code: int) -> None:
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                 "method": req.method, "path": req.path, "query": urlsplit(req.target).query,
                 "token": token, "status": code, "user_agent": req.headers.get("user-agent", "")}
        self.request_log.write(json.dumps(entry) + "\n")

    async def _serve(self, req: Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        token = self._token_state(req)
        keep = req.headers.get("connection", "").lower() != "close"
        public = req.path in ("/version", "/healthz", "/livez", "/readyz")
        if token == "invalid" or (token == "missing" and not public):
            self._log(req, token, 401)
            await self._send_json(writer, 401, resources.status(401, "Unauthorized", "Unauthorized"))
            return keep
        try:
            if req.path.endswith("/portforward"):
                return await self._portforward(req, token, reader, writer)
            if req.path.endswith(("/exec", "/attach")):
                return await self._remotecommand(req, token, reader, writer)
            if req.path.endswith("/log") and req.query.get("follow") == "true":
                return await self._follow_log(req, token, writer)
            if req.method == "GET" and req.query.get("watch") in ("true", "1"):
                return await self._watch(req, token, writer)
            code, body, ctype = self.route(req)
        except HTTPError as exc:
            code, body, ctype = exc.status["code"], exc.status, "application/json"
        except resources.Invalid as exc:
            code, ctype = 422, "application/json"
            body = resources.status(422, "Invalid", str(exc))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or odd input: answer it, keep serving
            code, ctype = 500, "application/json"
            body = resources.status(500, "InternalError", f"{type(exc).__name__}: {exc}")
        self._log(req, token, code)
        if isinstance(body, (bytes, str)):
            data = body.encode() if isinstance(body, str) else body
            await self._send(writer, code, data, ctype)
        else:
            await self._send_json(writer, code, body)
        return keep

    async def _send(self, writer: asyncio.StreamWriter, code: int, data: bytes, ctype: str,
                    extra: str = "") -> None:
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
                  404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
                  415: "Unsupported Media Type", 422: "Unprocessable Entity",
                  500: "Internal Server Error"}.get(code, "Status")
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(data)}\r\nCache-Control: no-cache, private\r\n"
                     f"{extra}\r\n".encode() + data)
        await writer.drain()

    async def _send_json(self, writer: asyncio.StreamWriter, code: int, obj: Any) -> None:
        await self._send(writer, code, json.dumps(obj).encode() + b"\n", "application/json")

    # --- routing ---------------------------------------------------------------------

    def route(self, req: Request) -> tuple[int, Any, str]:
        """Answer a plain (non-streaming) request: (status, JSON object or bytes, content type)."""
        path, method = req.path.rstrip("/") or "/", req.method
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok", "text/plain"
        if method == "GET" and path in self.DISCOVERY:
            return 200, self.DISCOVERY[path](self), "application/json"
        if path == f"/apis/{access.GROUP_VERSION}/selfsubjectaccessreviews":
            if method != "POST":
                raise HTTPError(405, "MethodNotAllowed", f"{method} is not supported on selfsubjectaccessreviews")
            return 201, access.review(req.json_body()), "application/json"
        kind, namespace, name, sub = resource_path(path)
        plural = kind.plural
        ns = namespace or "" if kind.namespaced else ""
        if sub == "log" and plural == "pods" and method == "GET":
            return 200, self._log_text(ns, name or "", req.query), "text/plain"
        if sub == "scale" and plural in resources.WORKLOADS:
            return self._scale(plural, ns, name or "", req)
        if sub is not None and sub != "status":
            raise HTTPError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                return 200, self._list(plural, namespace if kind.namespaced else None, req), "application/json"
            if method == "POST":
                return self._create(plural, ns, req)
            raise HTTPError(405, "MethodNotAllowed", f"{method} is not supported on {plural}")
        status = sub == "status"
        if method == "GET":
            try:
                obj = self.store.get(plural, ns, name)
            except resources.NotFound:
                raise not_found(plural, name) from None
            if req.wants_table():
                return 200, resources.table(plural, [obj], obj["metadata"]["resourceVersion"]), "application/json"
            return 200, obj, "application/json"
        if method == "PUT":
            body = self._object_body(req, kind.kind)
            try:
                return 200, self.store.replace(plural, ns, name, body, status=status), "application/json"
            except resources.NotFound:
                raise not_found(plural, name) from None
        if method == "PATCH":
            return self._patch(plural, ns, name, req, status)
        if method == "DELETE":
            if (plural, ns, name) in PROTECTED:
                raise HTTPError(403, "Forbidden", f'{plural} "{name}" is part of the lab and cannot be deleted')
            try:
                self.store.delete(plural, ns, name)
            except resources.NotFound:
                raise not_found(plural, name) from None
            if plural == "namespaces":
                for other, kind in KINDS.items():
                    if kind.namespaced:
                        for obj in self.store.list(other, name):
                            self.store.delete(other, name, obj["metadata"]["name"])
            return 200, resources.status(200, "", "") | {"details": {"name": name, "kind": plural}}, "application/json"
        raise HTTPError(405, "MethodNotAllowed", f"{method} is not supported")

    def _list(self, plural: str, namespace: str | None, req: Request) -> Obj:
        items = self.store.list(plural, namespace, req.query.get("labelSelector", ""),
                                req.query.get("fieldSelector", ""))
        rv = self.store.resource_version()
        if req.wants_table():
            return resources.table(plural, items, rv)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{KINDS[plural].kind}List", "apiVersion": KINDS[plural].api_version,
                "metadata": {"resourceVersion": rv}, "items": items}

    def _object_body(self, req: Request, kind: str) -> Obj:
        body = req.json_body()
        if not isinstance(body, dict):
            raise HTTPError(400, "BadRequest", "the body is not an object")
        if body.get("kind", kind) != kind:
            raise HTTPError(400, "BadRequest", f"the body is a {body.get('kind')}, not a {kind}")
        return body

    def _create(self, plural: str, ns: str, req: Request) -> tuple[int, Any, str]:
        body = self._object_body(req, KINDS[plural].kind)
        body.setdefault("metadata", {})
        if req.query.get("dryRun"):
            return 201, body, "application/json"
        try:
            return 201, self._created(plural, ns, body), "application/json"
        except resources.Conflict:
            name = body["metadata"].get("name")
            raise HTTPError(409, "AlreadyExists", f'{plural} "{name}" already exists',
                            {"name": name, "kind": plural}) from None
        except resources.NotFound as exc:
            raise HTTPError(404, "NotFound", str(exc).strip('"').replace('\\"', '"')) from None

    def _created(self, plural: str, ns: str, body: Obj) -> Obj:
        if plural == "pods" and not body.get("status", {}).get("podIP"):
            # a pod without a process: an address nothing answers on
            status = body.setdefault("status", {})
            self._next_ip = getattr(self, "_next_ip", 10) % 250 + 1
            status.setdefault("podIP", f"10.244.0.{self._next_ip}")
            status.setdefault("hostIP", self.address)
        return self.store.create(plural, ns, body)

    def _patch(self, plural: str, ns: str, name: str, req: Request,
               status: bool = False) -> tuple[int, Any, str]:
        ctype = req.headers.get("content-type", "").split(";")[0].strip()
        patch = req.json_body()
        if ctype == "application/apply-patch+yaml":
            if not isinstance(patch, dict):
                raise HTTPError(400, "BadRequest", "apply patch is not an object")
            manager = req.query.get("fieldManager", "")
            if not manager:
                raise HTTPError(422, "Invalid", "PATCH requests with apply require a fieldManager")
            if not self.store.exists(plural, ns, name):
                patch.setdefault("metadata", {})["name"] = name
                try:
                    return 201, self._created(plural, ns, patch), "application/json"
                except resources.NotFound as exc:
                    raise HTTPError(422, "Invalid", str(exc)) from None
            return 200, self.store.patch(plural, ns, name, patch, status=status), "application/json"
        if ctype not in PATCH_TYPES:
            raise HTTPError(415, "UnsupportedMediaType", f"the content type {ctype!r} is not supported")
        try:
            return 200, self.store.patch(plural, ns, name, patch, PATCH_TYPES[ctype],
                                         status=status), "application/json"
        except resources.NotFound:
            raise not_found(plural, name) from None

    def _scale(self, plural: str, ns: str, name: str, req: Request) -> tuple[int, Any, str]:
        """The ``scale`` subresource of a workload: an autoscaling/v1 Scale."""
        try:
            obj = self.store.get(plural, ns, name)
        except resources.NotFound:
            raise not_found(plural, name) from None
        if req.method in ("PUT", "PATCH"):
            scale = scale_of(obj)
            if req.method == "PUT":
                scale = self._object_body(req, "Scale")
            else:
                ctype = req.headers.get("content-type", "").split(";")[0].strip()
                if ctype not in PATCH_TYPES:
                    raise HTTPError(415, "UnsupportedMediaType", f"the content type {ctype!r} is not supported")
                scale = resources.PATCHES[PATCH_TYPES[ctype]](scale, req.json_body())
            replicas = scale.get("spec", {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise HTTPError(422, "Invalid", "spec.replicas: Invalid value: must be a non-negative integer")
            obj = self.store.patch(plural, ns, name, {"spec": {"replicas": replicas}})
        elif req.method != "GET":
            raise HTTPError(405, "MethodNotAllowed", f"{req.method} is not supported on {plural}/scale")
        return 200, scale_of(obj), "application/json"

    # --- discovery -------------------------------------------------------------------

    def _version(self) -> Obj:
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-dapfab-lab",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.4", "compiler": "gc",
                "platform": "linux/amd64"}

    def _api(self) -> Obj:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": f"{self.address}:{self.port}"}]}

    DISCOVERY = {
        "/version": _version, "/api": _api,
        "/apis": lambda self: discovery.group_list(),
        **{f"/{path}": (lambda self, gv=gv: discovery.resource_list(gv)) for gv, path in discovery.PATHS.items()},
        **{f"/apis/{group}": (lambda self, group=group: discovery.group(group)) for group in discovery.GROUPS},
        "/openapi/v3": lambda self: openapi.index(),
        **{f"/openapi/v3/{path}": (lambda self, gv=gv: openapi.DOCUMENTS[gv])
           for gv, path in discovery.PATHS.items() if gv in openapi.DOCUMENTS},
    }

    # --- logs ------------------------------------------------------------------------

    def _pod(self, ns: str, name: str) -> Obj:
        try:
            return self.store.get("pods", ns, name)
        except resources.NotFound:
            raise not_found("pods", name) from None

    def _log_lines(self, ns: str, name: str) -> list[str]:
        pod = self._pod(ns, name)
        proc = self.pods.get((ns, name))
        if proc is not None and proc.log_path.exists():
            return proc.log_path.read_text(errors="replace").splitlines(keepends=True)
        started = pod["metadata"]["creationTimestamp"].replace("Z", ".000000000Z")
        return [f"{started} {name}: started (the lab runs no process for this pod)\n"]

    @staticmethod
    def _strip_stamp(line: str, timestamps: bool) -> str:
        if timestamps:
            return line
        stamp, sep, rest = line.partition(" ")
        return rest if sep and stamp[:2] == "20" and stamp.endswith("Z") else line

    def _log_text(self, ns: str, name: str, query: dict[str, str]) -> bytes:
        lines = self._log_lines(ns, name)
        if query.get("tailLines"):
            n = int(query["tailLines"])
            lines = lines[-n:] if n > 0 else []
        ts = query.get("timestamps") == "true"
        data = "".join(self._strip_stamp(line, ts) for line in lines).encode()
        if query.get("limitBytes"):
            data = data[: int(query["limitBytes"])]
        return data

    async def _follow_log(self, req: Request, token: str, writer: asyncio.StreamWriter) -> bool:
        ns, name, _ = _pod_subresource(req)
        try:
            initial = self._log_text(ns, name, req.query)
        except HTTPError as exc:
            self._log(req, token, exc.status["code"])
            await self._send_json(writer, exc.status["code"], exc.status)
            return True
        self._log(req, token, 200)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                     b"Cache-Control: no-cache, private\r\n\r\n")

        def chunk(data: bytes) -> None:
            if data:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        chunk(initial)
        await writer.drain()
        proc = self.pods.get((ns, name))
        if proc is None:  # nothing will ever be appended: wait for the client to leave
            while not writer.transport.is_closing():
                await asyncio.sleep(0.5)
            return False
        ts = req.query.get("timestamps") == "true"
        with open(proc.log_path, "rb") as f:
            f.seek(0, 2)
            pending = b""
            while not writer.transport.is_closing():
                data = f.read(1 << 16)
                if not data:
                    await asyncio.sleep(0.2)
                    continue
                pending += data
                *complete, pending = pending.split(b"\n")
                text = "".join(self._strip_stamp(x.decode(errors="replace") + "\n", ts) for x in complete)
                chunk(text.encode())
                await writer.drain()
        return False

    # --- watch -----------------------------------------------------------------------

    async def _watch(self, req: Request, token: str, writer: asyncio.StreamWriter) -> bool:
        """Stream watch events (JSON lines, chunked) until timeoutSeconds or the client leaves."""
        kind, namespace, name, _sub = resource_path(req.path)
        if name is not None:
            raise HTTPError(404, "NotFound", "the lab watches collections only")
        plural = kind.plural
        labels, fields = req.query.get("labelSelector", ""), req.query.get("fieldSelector", "")
        rv_text = req.query.get("resourceVersion", "")
        self._log(req, token, 200)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n")
        table = req.wants_table()

        def send(kind: str, obj: Obj) -> None:
            if table:
                obj = resources.table(plural, [obj], obj["metadata"]["resourceVersion"])
            data = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        if rv_text in ("", "0"):
            for obj in self.store.list(plural, namespace, labels, fields):
                send("ADDED", obj)
            rv = int(self.store.resource_version())
        else:
            rv = int(rv_text)
        await writer.drain()
        deadline = time.monotonic() + float(req.query.get("timeoutSeconds") or 1800)
        while not writer.transport.is_closing() and time.monotonic() < deadline:
            for erv, kind, obj in self.store.events_since(rv, plural, namespace, labels, fields):
                send(kind, obj)
                rv = erv
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # --- port-forward ----------------------------------------------------------------

    async def _portforward(self, req: Request, token: str, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        ns, name, _ = _pod_subresource(req)
        pod = self._pod(ns, name)
        upgrade = req.headers.get("upgrade", "").lower()
        if upgrade == "websocket" and TUNNELED_PORTFORWARD in req.header_list("sec-websocket-protocol"):
            head = websocket.handshake(req.headers.get("sec-websocket-key", ""), TUNNELED_PORTFORWARD)
        elif upgrade == "spdy/3.1" and "portforward.k8s.io" in req.header_list("x-stream-protocol-version"):
            head = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                    b"X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
        else:
            raise HTTPError(400, "BadRequest", f"upgrade to {upgrade or 'nothing'} is not supported; "
                            f"use SPDY/3.1 or a WebSocket with {TUNNELED_PORTFORWARD}")
        if pod.get("status", {}).get("phase") != "Running":
            raise HTTPError(400, "BadRequest", f"pod {name} is not running")
        self._log(req, token, 101)
        writer.write(head)
        await writer.drain()
        unwrapping = None
        if upgrade == "websocket":
            reader, writer, unwrapping = websocket.tunnel(reader, writer)  # type: ignore[assignment]
        proc = self.pods.get((ns, name))

        def target(port: int) -> tuple[str, int]:
            if proc is None:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "the lab runs no process for this pod")
            return proc.address, port

        session = PortForwardSession(reader, writer, target, self.event)
        await session.run()
        if unwrapping is not None:
            unwrapping.cancel()
        self.event(f"portforward {ns}/{name} ({upgrade}) closed: {session.bytes_in} bytes in, "
                    f"{session.bytes_out} bytes out")
        return False

    # --- exec and attach -------------------------------------------------------------

    async def _remotecommand(self, req: Request, token: str, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> bool:
        ns, name, verb = _pod_subresource(req)
        pod = self._pod(ns, name)
        if pod.get("status", {}).get("phase") != "Running":
            raise HTTPError(400, "BadRequest", f"pod {name} is not running")
        argv = parse_qs(urlsplit(req.target).query).get("command", [])
        if verb == "exec" and not argv:
            raise HTTPError(400, "BadRequest", "you must specify at least 1 command")
        upgrade = req.headers.get("upgrade", "").lower()
        if upgrade == "websocket":
            offered = req.header_list("sec-websocket-protocol")
            chosen = next((p for p in remotecommand.WS_PROTOCOLS if p in offered), None)
            if chosen is None:
                raise HTTPError(400, "BadRequest", f"none of {offered} is supported")
            head = websocket.handshake(req.headers.get("sec-websocket-key", ""), chosen).decode()
            io: remotecommand.Channels = remotecommand.WebSocketChannels(reader, writer)
            upgrade = f"websocket {chosen}"
        elif upgrade == "spdy/3.1":
            offered = req.header_list("x-stream-protocol-version")
            if remotecommand.SPDY_PROTOCOL not in offered:
                raise HTTPError(400, "BadRequest", f"none of {offered} is supported")
            head = ("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                    f"X-Stream-Protocol-Version: {remotecommand.SPDY_PROTOCOL}\r\n\r\n")
            io = remotecommand.SpdyChannels(reader, writer, remotecommand.expected_streams(req.query))
        else:
            raise HTTPError(400, "BadRequest", "upgrade request required")
        self._log(req, token, 101)
        writer.write(head.encode())
        await writer.drain()
        reading = asyncio.create_task(io.read_loop())
        if isinstance(io, remotecommand.SpdyChannels):
            try:
                await asyncio.wait_for(io.ready.wait(), remotecommand.STREAM_WAIT)
            except TimeoutError:
                reading.cancel()
                return False
        proc = self.pods.get((ns, name))
        cwd = str(proc.log_path.parent) if proc is not None else "/"
        if verb == "attach":
            code = await remotecommand.follow(io, proc.log_path if proc is not None else None,
                                              lambda line: self._strip_stamp(line, False))
        elif req.query.get("tty") == "true":
            code = await remotecommand.run_pty(io, argv, cwd)
        else:
            code = await remotecommand.run_pipes(io, argv, req.query.get("stdin") == "true",
                                                 req.query.get("stderr") == "true", cwd)
        self.event(f"{verb} {ns}/{name} {argv} ({upgrade}) exited {code}")
        if not io.gone.is_set():
            await io.finish(remotecommand.status(code, argv))
        reading.cancel()
        return False

    def event(self, message: str) -> None:
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                 "event": message}
        self.request_log.write(json.dumps(entry) + "\n")

    # --- pods ------------------------------------------------------------------------

    def pod_restarted(self, ns: str, name: str) -> None:
        """Record a restart in the pod's status (restartCount, running since now)."""
        pod = self.store.get("pods", ns, name)
        stamp = resources.timestamp(resources.now())
        for cs in pod["status"].get("containerStatuses", []):
            previous = cs.get("state", {}).get("running", {}).get("startedAt", stamp)
            cs["restartCount"] = cs.get("restartCount", 0) + 1
            cs["lastState"] = {"terminated": {"exitCode": 143, "reason": "Error", "startedAt": previous,
                                              "finishedAt": stamp}}
            cs["state"] = {"running": {"startedAt": stamp}}
        self.store.replace("pods", ns, name, pod)
        resources.add_event(self.store, pod, "Normal", "Started", f"Started container {name} (restart)")
