"""The port-forward session driven by a SPDY client written here, byte by byte."""

from __future__ import annotations

import asyncio
import struct

from dapfab.testing.cluster import spdy
from dapfab.testing.cluster.portforward import PortForwardSession


class Client:
    """The kubectl side of one SPDY connection: sends frames in tiny pieces, reads whole ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.codec = reader, writer, spdy.HeaderCodec()

    async def send(self, frame: bytes, piece: int = 3) -> None:
        for i in range(0, len(frame), piece):  # partial frames on the wire
            self.writer.write(frame[i:i + piece])
            await self.writer.drain()
            await asyncio.sleep(0)

    async def frame(self) -> spdy.Frame:
        head = await asyncio.wait_for(self.reader.readexactly(8), 10)
        length = spdy.parse_header(head)[3]
        return spdy.decode(self.codec, head, await self.reader.readexactly(length))

    async def open_pair(self, request_id: int, port: int, base: int) -> None:
        for offset, kind in ((0, "error"), (2, "data")):
            headers = {"streamtype": kind, "port": str(port), "requestid": str(request_id)}
            await self.send(spdy.encode_syn_stream(self.codec, base + offset, headers))
            reply = await self.frame()
            assert (reply.kind, reply.stream_id) == (spdy.SYN_REPLY, base + offset)
            if kind == "error":
                await self.send(spdy.data_frame(base, b"", fin=True))  # kubectl closes its side


async def _session(target_port: int | None) -> tuple[Client, asyncio.Task[None], list[asyncio.AbstractServer]]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    pod = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = target_port or pod.sockets[0].getsockname()[1]
    tasks: list[asyncio.Task[None]] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        await PortForwardSession(r, w, lambda _p: ("127.0.0.1", port)).run()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = Client(r, w)
    while not tasks:
        await asyncio.sleep(0.01)
    return client, tasks[0], [server, pod]


def test_data_flows_both_ways_and_the_error_stream_closes_empty() -> None:
    async def scenario() -> None:
        client, task, servers = await _session(None)
        await client.open_pair(0, 8080, 1)
        payload = bytes(range(256)) * 1000
        await client.send(spdy.data_frame(3, payload) + spdy.data_frame(3, b"", fin=True), piece=4096)
        got = b""
        fins: set[int] = set()
        while len(fins) < 2:
            f = await client.frame()
            assert f.kind == 0
            if f.stream_id == 3:
                got += f.data
            else:
                assert f.data == b""  # no error message
            if f.fin:
                fins.add(f.stream_id)
        assert got == payload and fins == {1, 3}
        await client.send(spdy.ping(1))
        pong = await client.frame()
        assert (pong.kind, pong.status) == (spdy.PING, 1)
        client.writer.close()
        await asyncio.wait_for(task, 10)
        for server in servers:
            server.close()

    asyncio.run(scenario())


def test_a_refused_dial_is_reported_on_the_error_stream() -> None:
    async def scenario() -> None:
        client, task, servers = await _session(1)  # nothing listens on port 1
        await client.open_pair(7, 1, 1)
        messages: dict[int, bytes] = {1: b"", 3: b""}
        fins: set[int] = set()
        while len(fins) < 2:
            f = await client.frame()
            messages[f.stream_id] += f.data
            if f.fin:
                fins.add(f.stream_id)
        assert b"connection refused" in messages[1]
        client.writer.close()
        await asyncio.wait_for(task, 10)
        for server in servers:
            server.close()

    asyncio.run(scenario())


def test_syn_stream_without_a_port_is_reset() -> None:
    async def scenario() -> None:
        client, task, servers = await _session(None)
        await client.send(spdy.encode_syn_stream(client.codec, 1, {"streamtype": "data", "requestid": "0"}))
        f = await client.frame()
        assert f.kind == spdy.RST_STREAM and f.stream_id == 1
        assert struct.unpack(">I", spdy.rst_stream(1, f.status)[-4:])[0] == spdy.RST_PROTOCOL_ERROR
        client.writer.close()
        await asyncio.wait_for(task, 10)
        for server in servers:
            server.close()

    asyncio.run(scenario())
