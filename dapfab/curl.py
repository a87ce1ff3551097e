"""In-cluster HTTP: :func:`runner_curl` runs the real curl inside the runner VM.

Nothing secret is on any command line, in the management host or in the VM: the URL,
method, headers and options go into a curl config that travels on the command's stdin
(``head -c`` writes it to a private temp directory, read with ``curl --config``), followed
by the body (a file in the same directory, passed with ``--data-binary @FILE``). The
directory is removed when the command ends. The body comes back on stdout exactly as curl
wrote it; the response headers come back on stderr after a marker, from ``--dump-header``,
so the status is parsed from the header block, never from the body.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dapfab.commands import validate_url
from dapfab.errors import ConfigError, CurlError

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

DEFAULT_TIMEOUT = 30.0
MARKER = b"\x00dapfab-curl "
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS_LINE = re.compile(rb"^HTTP/[0-9.]+ +([0-9]{3})", re.M)

HINTS = {
    6: "the host name does not resolve from the runner; check the service name and namespace",
    7: "nothing listens there; check the service, its port and that its pods are running",
    28: "no answer in time; raise the timeout or check the service",
    35: "TLS handshake failed; check the scheme and port",
    60: "the server's certificate is not trusted in the runner",
}


@dataclass
class Response:
    """An HTTP response from :func:`runner_curl`."""

    status: int
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        """Response headers, names lower-cased; repeated headers joined with ``, ``."""
        merged: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return merged

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400


def _no_controls(value: str, what: str) -> str:
    if any(unicodedata.category(ch) == "Cc" and ch != "\t" for ch in value):
        raise ConfigError(
            f"invalid {what}: it contains control characters (newline, NUL ...)",
            hint="HTTP header names and values are one line of text",
        )
    return value


def header_lines(headers: Mapping[str, str] | Iterable[str] | None) -> list[str]:
    """``K: V`` lines from a mapping or from ``"K: V"`` strings, validated (no values shown)."""
    if headers is None:
        return []
    if isinstance(headers, str):
        raise TypeError("headers must be a mapping or a sequence of 'K: V' strings")
    if isinstance(headers, Mapping):
        pairs = [(str(k), str(v)) for k, v in headers.items()]
    else:
        pairs = []
        for item in headers:
            name, sep, value = str(item).partition(":")
            if not sep:
                raise ConfigError(
                    f"invalid header {name.strip()[:40]!r}: no ':'",
                    hint="give headers as 'Name: value'",
                )
            pairs.append((name.strip(), value.strip()))
    lines = []
    for name, value in pairs:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(
                f"invalid header name {name[:40]!r}", hint="give headers as 'Name: value'"
            )
        lines.append(f"{name}: {_no_controls(value, f'value of header {name}')}")
    return lines


def _config_string(value: str) -> str:
    """A double-quoted curl config value (curl unescapes backslash sequences in quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def curl_config(
    url: str,
    *,
    method: str = "GET",
    headers: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
) -> bytes:
    """The curl config (``--config``) for one request: everything that could be secret."""
    lines = [
        f"url = {_config_string(url)}",
        "head" if method == "HEAD" else f"request = {_config_string(method)}",
        "silent",
        "show-error",
        "globoff",
        "path-as-is",
        f"max-time = {timeout:g}",
    ]
    lines += [f"header = {_config_string(line)}" for line in headers]
    if insecure:
        lines.append("insecure")
    return ("\n".join(lines) + "\n").encode("utf-8")


def curl_script(config_size: int, body_size: int | None) -> str:
    """Shell code for the VM: store config and body from stdin, run curl, report headers.

    Only sizes appear in it. stdout: the body as curl wrote it. stderr: curl's own error
    text, then :data:`MARKER`, ``<curl exit code> <header bytes>\\n`` and the header dump.
    """
    data = ' --data-binary @"$d/body"' if body_size is not None else ""
    body = f'head -c {int(body_size)} > "$d/body" || exit 125\n' if body_size is not None else ""
    return (
        "umask 077\n"
        'd=$(mktemp -d) || exit 125\n'
        "trap 'rm -rf \"$d\"' EXIT\n"
        f'head -c {int(config_size)} > "$d/config" || exit 125\n'
        + body
        + f'curl --config "$d/config" --dump-header "$d/headers" --output -{data} </dev/null\n'
        "code=$?\n"
        "printf '\\0dapfab-curl %d %d\\n' \"$code\" \"$(wc -c < \"$d/headers\" 2>/dev/null || echo 0)\" >&2\n"
        'cat "$d/headers" >&2 2>/dev/null\n'
        'exit "$code"\n'
    )


def parse_headers(block: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The final status and headers from a ``--dump-header`` dump (interim 1xx blocks too)."""
    statuses = list(_STATUS_LINE.finditer(block))
    if not statuses:
        return 0, []
    last = statuses[-1]
    status = int(last.group(1))
    headers = []
    for raw in block[last.end() :].split(b"\n")[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            break
        name, sep, value = line.partition(b":")
        if sep:
            headers.append(
                (name.decode("latin-1").strip(), value.decode("utf-8", "replace").strip())
            )
    return status, headers


def split_stderr(stderr: bytes) -> tuple[bytes, int | None, bytes]:
    """``(curl's own stderr, curl exit code, header dump)`` from the command's stderr."""
    at = stderr.rfind(MARKER)
    if at < 0:
        return stderr, None, b""
    head, _, rest = stderr[at + len(MARKER) :].partition(b"\n")
    try:
        code_text, size_text = head.split()
        code, size = int(code_text), int(size_text)
    except ValueError:
        return stderr, None, b""
    return stderr[:at], code, rest[:size]


def runner_curl(
    config: RunnerConfig,
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[str] | None = (),
    data: bytes | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
) -> Response:
    """Run curl in the runner; return its :class:`Response` (any HTTP status, body exact).

    ``headers``: a mapping or ``"K: V"`` strings. ``data``: the request body (bytes or str).
    Non-HTTP failures (refused, DNS, timeout, TLS) raise :class:`~dapfab.errors.CurlError`
    with curl's exit code and message; the SSH and runner hops raise their own errors.
    """
    from dapfab.errors import DapTimeout
    from dapfab.execution import run_in_runner

    url = validate_url(url)
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise ConfigError(f"invalid HTTP method {method!r}", hint="give a method such as GET or POST")
    body = data.encode("utf-8") if isinstance(data, str) else data
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes, str or None")
    curl_conf = curl_config(
        url, method=method.upper(), headers=header_lines(headers), timeout=timeout, insecure=insecure
    )
    payload = curl_conf + (bytes(body) if body is not None else b"")
    script = curl_script(len(curl_conf), None if body is None else len(body))
    try:
        result = run_in_runner(
            config,
            script,
            hide=True,
            warn=True,
            in_stream=io.BytesIO(payload),
            timeout=timeout + 30.0,
        )
    except DapTimeout as err:
        err.hop = "curl"
        raise
    own, code, dump = split_stderr(result.stderr_bytes)
    if code is None:
        detail = own.decode("utf-8", "replace").strip().splitlines()
        raise CurlError(
            f"curl did not run in the runner (exit {result.exited}"
            + (f": {detail[-1]}" if detail else "")
            + ")",
            exit_code=result.exited or 1,
            hint="the runner needs curl, coreutils and a writable temp directory",
            result=result,
        )
    if code != 0:
        message = own.decode("utf-8", "replace").strip().splitlines()
        text = message[-1] if message else f"curl exited with {code}"
        if text.startswith("curl: "):
            text = text[6:]
        raise CurlError(
            text,
            exit_code=code,
            hint=HINTS.get(code, "see `man curl`, EXIT CODES"),
            result=result,
        )
    status, header_list = parse_headers(dump)
    return Response(status=status, body=result.stdout_bytes, header_list=header_list)


__all__ = ["Response", "curl_config", "curl_script", "parse_headers", "runner_curl"]
