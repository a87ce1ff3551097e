"""The demo `web` pod: an HTTP/1.1 server plus raw TCP echo, discard and source ports.

Run as ``python3 -m dapfab.testing.cluster.web --address IP [--name web] [--generation N]``.

HTTP on 8080 (any method, keep-alive, Content-Length or chunked request bodies):

- ``/status/N``   answers status N (no body for 1xx/204/304, else a small JSON body)
- ``/bytes/N``    N bytes of the pattern ``bytes(range(256))`` repeated (Content-Length N)
- ``/slow/S``, ``/delay/S``  waits S seconds (float), then echoes
- ``/drop``       closes the connection without any response
- ``/binary``     ``BINARY_BODY``: bytes that are not valid UTF-8
- ``/cookies``    200 with two ``Set-Cookie`` headers (``a=1``, ``b=2``)
- anything else   echoes the request as JSON: method, path, query, headers (lower-cased
  names), raw_headers (the header lines exactly as received), body; a request header
  ``X-Reflect: V`` comes back as the response header ``X-Reflected: V`` (UTF-8, invalid bytes replaced), body_base64, pod, generation

TCP: 9000 echoes everything back; 9001 discards everything (answers nothing); 9002 reads
one line with a decimal N and sends N pattern bytes, then closes.

Every request is logged to stdout, and a ``tick N`` line every second keeps the log alive
for ``kubectl logs -f``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import signal
import sys
from urllib.parse import urlsplit

HTTP_PORT, ECHO_PORT, DISCARD_PORT, SOURCE_PORT = 8080, 9000, 9001, 9002
BINARY_BODY = bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3, 0x28, 0xA0, 0xA1]) + "é".encode("latin-1") + b"\n"
PATTERN = bytes(range(256)) * 4096  # 1 MiB
REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
           302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 418: "I'm a teapot", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """The first ``n`` bytes of the endless 0..255 pattern starting at ``offset``."""
    start = offset % 256
    reps = (start + n) // len(PATTERN) + 1
    return (PATTERN * reps)[start:start + n] if n > len(PATTERN) - start else PATTERN[start:start + n]


def log(line: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sys.stdout.write(f"{stamp} {line}\n")
    sys.stdout.flush()


class WebPod:
    """The pod's servers; ``name`` and ``generation`` show up in echoes and logs."""

    def __init__(self, name: str, generation: int) -> None:
        self.name, self.generation = name, generation

    async def serve(self, address: str) -> None:
        servers = [
            await asyncio.start_server(self.http, address, HTTP_PORT, reuse_address=True),
            await asyncio.start_server(self.echo, address, ECHO_PORT, reuse_address=True),
            await asyncio.start_server(self.discard, address, DISCARD_PORT, reuse_address=True),
            await asyncio.start_server(self.source, address, SOURCE_PORT, reuse_address=True),
        ]
        log(f"pod {self.name} generation {self.generation} listening on {address}:"
            f"{HTTP_PORT},{ECHO_PORT},{DISCARD_PORT},{SOURCE_PORT}")
        tick = 0
        try:
            while True:
                await asyncio.sleep(1)
                tick += 1
                log(f"tick {tick}")
        finally:
            for s in servers:
                s.close()

    # --- raw TCP ---------------------------------------------------------------------

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 18):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def discard(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        try:
            while data := await reader.read(1 << 18):
                total += len(data)
        except (ConnectionError, OSError):
            pass
        log(f"discard: {total} bytes")
        writer.close()

    async def source(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            n = int(line.strip() or b"0")
            sent = 0
            while sent < n:
                chunk = pattern_bytes(min(len(PATTERN), n - sent), sent)
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            log(f"source: {sent} bytes")
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            writer.close()

    # --- HTTP ------------------------------------------------------------------------

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip().lower(), v.strip()))
        hmap = {k: v for k, v in headers}
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            body = await reader.readexactly(int(hmap.get("content-length", "0") or 0))
        keep = version == "HTTP/1.1" and hmap.get("connection", "").lower() != "close"
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        head_only = method == "HEAD"

        async def respond(code: int, payload: bytes, ctype: str = "application/json",
                          extra: str = "") -> None:
            extra += "" if keep else "Connection: close\r\n"
            no_body = code < 200 or code in (204, 304)
            length = "" if no_body else f"Content-Length: {len(payload)}\r\nContent-Type: {ctype}\r\n"
            writer.write(f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}\r\n{length}"
                         f"X-Pod: {self.name}\r\n{extra}\r\n".encode())
            if not no_body and not head_only:
                writer.write(payload)
            await writer.drain()
            log(f"{method} {target} {code} {0 if no_body else len(payload)}")

        if parts[0] == "drop":
            log(f"{method} {target} dropped")
            writer.transport.abort()
            return False
        if parts[0] == "status" and len(parts) > 1 and parts[1].isdigit():
            code = int(parts[1])
            await respond(code, json.dumps({"status": code}).encode() + b"\n")
        elif parts[0] == "bytes" and len(parts) > 1 and parts[1].isdigit():
            n = int(parts[1])
            close = "" if keep else "Connection: close\r\n"
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n"
                         f"Content-Type: application/octet-stream\r\nX-Pod: {self.name}\r\n"
                         f"{close}\r\n".encode())
            sent = 0
            while sent < n and not head_only:
                chunk = pattern_bytes(min(len(PATTERN), n - sent), sent)
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            await writer.drain()
            log(f"{method} {target} 200 {n}")
        elif parts[0] == "binary":
            await respond(200, BINARY_BODY, "application/octet-stream")
        elif parts[0] == "cookies":
            await respond(200, b"{}\n", extra="Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n")
        else:
            if parts[0] in ("slow", "delay") and len(parts) > 1:
                try:
                    await asyncio.sleep(min(float(parts[1]), 3600))
                except ValueError:
                    pass
            echo = {
                "method": method, "path": url.path, "query": url.query, "target": target,
                "headers": {k: v for k, v in headers},
                "raw_headers": [line for line in lines[1:] if line],
                "body": body.decode("utf-8", "replace"),
                "body_base64": base64.b64encode(body).decode(), "pod": self.name,
                "generation": self.generation,
            }
            reflect = f"X-Reflected: {hmap['x-reflect']}\r\n" if "x-reflect" in hmap else ""
            await respond(200, json.dumps(echo, indent=1).encode() + b"\n", extra=reflect)
        return keep


def main(argv: list[str] | None = None) -> None:
    """Entry point of the web pod process."""
    p = argparse.ArgumentParser(prog="web", description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--name", default="web")
    p.add_argument("--generation", type=int, default=0)
    args = p.parse_args(argv)
    pod = WebPod(args.name, args.generation)

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await pod.serve(args.address)
        except asyncio.CancelledError:
            log(f"pod {args.name} generation {args.generation} stopping")

    asyncio.run(run())


if __name__ == "__main__":
    main()
