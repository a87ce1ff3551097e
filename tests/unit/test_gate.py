"""k8s.proxy's laptop gate (docs/design.md §14): the bearer token and a loopback Host on
every request, the token taken out, bytes otherwise unchanged."""

from __future__ import annotations

import pytest

from dapfab.gate import Refused, RequestGate, loopback_host

TOKEN = "tok-abc_123"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def request(target: str = "/api", host: str = "127.0.0.1:8001", auth: bytes = AUTH,
            extra: bytes = b"", body: bytes = b"", method: str = "GET") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode() + auth
            + b"User-Agent: kubectl\r\n" + extra + b"\r\n" + body)


def without_auth(data: bytes) -> bytes:
    return data.replace(AUTH, b"")


def feed_all(data: bytes, step: int | None = None) -> bytes:
    gate = RequestGate(TOKEN)
    if step is None:
        return gate.feed(data)
    return b"".join(gate.feed(data[i:i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("step", [None, 1, 7])
def test_requests_pass_without_the_token_and_otherwise_unchanged(step):
    body = b'{"a": "Authorization: Bearer x\r\n\r\nGET / HTTP/1.1\r\n"}'
    chunked = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n"
    stream = (request()
              + request(method="POST", extra=b"Content-Length: %d\r\n" % len(body), body=body)
              + request(method="PUT", extra=b"Transfer-Encoding: chunked\r\n", body=chunked)
              + request(host="[::1]:8001", auth=b"authorization: bearer " + TOKEN.encode() + b"\r\n"))
    out = feed_all(stream, step)
    assert TOKEN.encode() not in out
    assert out == without_auth(stream).replace(b"authorization: bearer " + TOKEN.encode() + b"\r\n", b"")


def test_after_an_upgrade_the_connection_is_the_new_protocols():
    head = request(target="/api/v1/namespaces/d/pods/web/exec?command=sh",
                   extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    frames = b"\x82\x05hello" + request(auth=b"")  # anything, even what looks like a request
    gate = RequestGate(TOKEN)
    assert gate.feed(head + frames[:3]) == without_auth(head) + frames[:3]
    assert gate.feed(frames[3:]) == frames[3:]


@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer wrong\r\n",
                                  AUTH[:-3] + b"x\r\n", b"Authorization: Basic dG9rOmFiYw==\r\n",
                                  AUTH + AUTH])
def test_a_missing_or_wrong_token_is_401(auth):
    with pytest.raises(Refused) as refused:
        feed_all(request(auth=auth))
    assert refused.value.status == 401
    answer = refused.value.response()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and b"WWW-Authenticate: Bearer" in answer


@pytest.mark.parametrize("host", ["evil.example:8001", "evil.example", "127.0.0.1.evil",
                                  "127.0.0.1.evil:8001", "xlocalhost", "localhost.evil:1",
                                  "127.0.0.2", "[::2]:1", "localhost:80:80", "", "LOCALHOST.evil"])
def test_a_foreign_host_is_403_even_with_the_token(host):
    assert not loopback_host(host.encode())
    with pytest.raises(Refused) as refused:
        feed_all(request(host=host))
    assert refused.value.status == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:8001", "127.0.0.1:8001", "[::1]:8001"])
def test_the_loopback_names_pass(host):
    assert loopback_host(host.encode()) and feed_all(request(host=host))


def test_a_second_request_is_checked_too():
    gate = RequestGate(TOKEN)
    assert gate.feed(request())
    with pytest.raises(Refused):
        gate.feed(request(auth=b""))


@pytest.mark.parametrize("data,status", [
    (request(extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"), 501),
    (request(extra=b"Transfer-Encoding: gzip, chunked\r\n"), 501),
    (request(extra=b"Content-Length: 3\r\nContent-Length: 4\r\n"), 400),
    (request(extra=b"Content-Length: -1\r\n"), 400),
    (request(extra=b" folded: line\r\n"), 400),
    (request(extra=b"X-A: b\nAuthorization: Bearer other\r\n"), 400),
    (request(target="http://evil.example/api"), 400),
    (b"GET /api HTTP/1.1 extra\r\nHost: localhost\r\n" + AUTH + b"\r\n", 400),
    (request(extra=b"Transfer-Encoding: chunked\r\n", body=b"zz\r\n"), 400),
    (request(extra=b"Transfer-Encoding: chunked\r\n", body=b"1\r\nab\r\n"), 400),
    (request(extra=b"Transfer-Encoding: chunked\r\n", body=b"0\r\nAuthorization: x\r\n\r\n"), 400),
    (b"GET /" + b"a" * (65 << 10), 431),
])
def test_what_cannot_be_framed_exactly_is_refused(data, status):
    with pytest.raises(Refused) as refused:
        feed_all(data)
    assert refused.value.status == status


def test_an_incomplete_head_passes_nothing_yet():
    gate = RequestGate(TOKEN)
    whole = request()
    assert gate.feed(whole[:-1]) == b""
    assert gate.feed(whole[-1:]) == without_auth(whole)
