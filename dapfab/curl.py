"""In-cluster HTTP: :func:`runner_curl` runs the real curl inside the runner VM.

Nothing secret is on any command line or in any file, on the management host or in the VM.
The URL, method, headers and options form a curl config that travels on the command's
stdin, followed by the body: the VM script hands curl the config through a pipe
(``--config <(head -c N)``) and the rest of stdin as the body (``--data-binary @-``). The
body comes back on stdout exactly as curl wrote it; curl's own messages come on stderr,
then the ``curl`` marker (:mod:`dapfab.remote.protocol`), curl's exit code and the ``--dump-header`` block, which went through a
pipe into shell memory, so the status is parsed from the header block, never from the body.

Headers mean what they mean to ``curl -H``: ``Name: value`` is sent as given (spaces
included), ``Name:`` removes a header curl would send (``Host:``, ``User-Agent:``), and
``Name;`` sends it empty.
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dapfab.commands import validate_seconds, validate_url
from dapfab.errors import ConfigError, CurlError, DapTimeout
from dapfab.remote import protocol, scripts
from dapfab.streams import write_all

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig
    from dapfab.result import Result

DEFAULT_TIMEOUT = 30.0  # seconds curl may take (its --max-time)
GRACE = 30.0  # seconds past curl's own limit before dapfab stops the command itself
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_PARTS = re.compile(r"([^:;]*)([:;])(.*)", re.S)
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
    def headers(self) -> dict[str, list[str]]:
        """Response headers: lower-cased name -> every value in the order received (a
        repeated header such as ``Set-Cookie`` keeps each one), as curl's ``%{header_json}``."""
        grouped: dict[str, list[str]] = {}
        for name, value in self.header_list:
            grouped.setdefault(name.lower(), []).append(value)
        return grouped

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400


def _header_line(name: str, sep: str, value: str, position: int) -> str:
    """One validated header line; errors name the header's position, never its text."""
    if not _HEADER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid header {position}: the part before '{sep}' is not an HTTP header name",
            hint="give headers as 'Name: value' ('Name:' removes one, 'Name;' sends it empty)",
        )
    if any(unicodedata.category(ch) == "Cc" and ch != "\t" for ch in value):
        raise ConfigError(
            f"invalid header {position} ({name}): its value contains control characters",
            hint="an HTTP header value is one line of text",
        )
    return f"{name}{sep}{value}"


def header_lines(headers: Mapping[str, str] | Iterable[str] | None) -> list[str]:
    """Validated header lines, as ``curl -H`` takes them.

    From strings: ``"Name: value"`` exactly as given, ``"Name:"`` (remove that header) or
    ``"Name;"`` (send it empty). From a mapping: ``{"Name": "value"}``; an empty value sends
    the header empty, ``None`` removes it. Errors never show a header's value.
    """
    if headers is None:
        return []
    if isinstance(headers, str):
        raise TypeError("headers must be a mapping or a sequence of 'K: V' strings")
    lines = []
    if isinstance(headers, Mapping):
        for position, (name, value) in enumerate(headers.items(), 1):
            if value is None:
                lines.append(_header_line(str(name), ":", "", position))
            elif value == "":
                lines.append(_header_line(str(name), ";", "", position))
            else:
                lines.append(_header_line(str(name), ": ", str(value), position))
        return lines
    for position, item in enumerate(headers, 1):
        item = str(item)
        name, sep, value = item.partition(":")
        if not sep and item.endswith(";"):
            name, sep, value = item[:-1], ";", ""
        if not sep:
            raise ConfigError(
                f"invalid header {position}: no ':'",
                hint="give headers as 'Name: value' ('Name:' removes one, 'Name;' sends it "
                "empty)",
            )
        lines.append(_header_line(name, sep, value, position))
    return lines


def _config_string(value: str) -> str:
    """A double-quoted curl config value (curl unescapes backslash sequences in quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def curl_options(
    url: str,
    *,
    method: str = "GET",
    headers: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
) -> list[tuple[str, str | None]]:
    """The curl options for one request, as ``(long option, value or None)``: the one list
    that both the config (:func:`curl_config`) and ``--dry`` (:func:`curl_dry_argv`) render."""
    # HEAD: curl's --head, without writing the headers to stdout as if they were the body
    verb = [("head", None), ("no-include", None)] if method == "HEAD" else [("request", method)]
    options: list[tuple[str, str | None]] = [("url", url), *verb]
    options += [("silent", None), ("show-error", None), ("globoff", None), ("path-as-is", None)]
    options.append(("max-time", f"{timeout:g}"))
    options += [("header", line) for line in headers]
    if insecure:
        options.append(("insecure", None))
    return options


def curl_config(url: str, **request: object) -> bytes:
    """The curl config (``--config``) for one request: everything that could be secret."""
    lines = [
        name if value is None else f"{name} = {_config_string(value)}"
        for name, value in curl_options(url, **request)  # type: ignore[arg-type]
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def curl_script(config_size: int, body_size: int | None) -> str:
    """Shell code for the VM (``sh/curl.sh``): curl with its config and body from stdin.

    Only sizes appear in it, and nothing is written to a file. stdout: the body as curl
    wrote it. stderr: curl's own error text, then the ``curl`` marker with curl's exit
    code, and the header dump.
    """
    body = "" if body_size is None else int(body_size)
    return scripts.program("curl", int(config_size), body)


def curl_dry_argv(url: str, *, body_size: int | None = None, **request: object) -> list[str]:
    """``curl`` with the same options as a real call, for ``--dry``: header values and the
    body are placeholders (``<value of NAME>``, ``<request body: N bytes>``) to fill in,
    since they may be secrets; ``HTTP <status>`` goes to stderr, as ``k8s.curl`` prints."""
    argv = ["curl"]
    for name, value in curl_options(url, **request):  # type: ignore[arg-type]
        if name == "url":
            continue
        if name == "header" and value is not None:
            field_name, sep, rest = _HEADER_PARTS.fullmatch(value).groups()  # type: ignore[union-attr]
            if rest:
                value = f"{field_name}{sep} <value of {field_name}>"
        argv += [f"--{name}"] + ([] if value is None else [value])
    if body_size is not None:
        argv += ["--data-binary", f"<request body: {body_size} bytes>"]
    return argv + ["--write-out", "%{stderr}HTTP %{http_code}\\n", "--url", url]


def parse_headers(block: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The final status and headers from a ``--dump-header`` dump (interim 1xx blocks too).

    Values are kept as sent, less the one optional space after the colon and the line end."""
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
                (name.decode("latin-1").strip(), value.decode("utf-8", "replace").strip(" \t"))
            )
    return status, headers


def split_stderr(stderr: bytes) -> tuple[bytes, int | None, bytes]:
    """``(curl's own stderr, curl exit code, header dump)`` from the command's stderr."""
    found = protocol.last_marker(stderr, "curl")
    if found is None:
        return stderr, None, b""
    before, fields, dump = found
    try:
        (code,) = fields
        return before, int(code), dump
    except ValueError:
        return stderr, None, b""


def runner_curl(
    config: RunnerConfig,
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[str] | None = (),
    data: bytes | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
    abort: threading.Event | None = None,
) -> Response:
    """Run curl in the runner; return its :class:`Response` (any HTTP status, body exact).

    ``headers``: a mapping or ``"K: V"`` strings. ``data``: the request body (bytes or str).
    Non-HTTP failures (refused, DNS, timeout, TLS) raise :class:`~dapfab.errors.CurlError`
    with curl's exit code and message; the SSH and runner hops raise their own errors.
    ``abort`` (set from another thread, as fan-out does) stops the request.
    """
    from dapfab.calls import run_command  # not at the top: k8s.curl's help needs this module

    def run(script: str, stdin: bytes, limit: float) -> Result:
        return run_command(config, script, hide=True, in_stream=io.BytesIO(stdin),
                           timeout=limit, abort=abort)

    return curl_with(run, url, method=method, headers=headers, data=data, timeout=timeout,
                     insecure=insecure)


def curl_with(run: Callable[[str, bytes, float], Result], url: str, **request: Any) -> Response:
    """:func:`runner_curl` (whose keyword arguments ``request`` takes, ``abort`` aside) with
    the call made by ``run(script, stdin, time limit)``, which returns the script's Result
    with its output captured (the keeper runs it on its own connection)."""
    script, payload, timeout = _request(url, **request)
    try:
        result = run(script, payload, timeout + GRACE)
    except DapTimeout as err:
        err.hop = "curl"
        raise
    return _response(result)


def show(response: Response, stdout: BinaryIO, stderr: BinaryIO, *, no_fail: bool = False) -> int:
    """What ``k8s.curl`` prints of ``response``: ``HTTP <status>`` on stderr, the body on
    stdout; the exit code (22 for a status of 400 or more, unless ``no_fail``)."""
    write_all(stderr, b"HTTP %d\n" % response.status)
    write_all(stdout, response.body)
    return exit_code(response, no_fail=no_fail)


def exit_code(response: Response, *, no_fail: bool = False) -> int:
    """``k8s.curl``'s exit code for ``response``: 22 (curl's own for ``--fail``) for a
    status of 400 or more, unless ``no_fail``; else 0."""
    return 22 if response.status >= 400 and not no_fail else 0


def _request(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[str] | None = (),
    data: bytes | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
) -> tuple[str, bytes, float]:
    """The VM script, its stdin (curl's config, then the body) and the validated timeout."""
    url = validate_url(url)
    timeout = validate_seconds(timeout, what="timeout")
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise ConfigError(f"invalid HTTP method {method!r}", hint="give a method such as GET or POST")
    body = data.encode("utf-8") if isinstance(data, str) else data
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes, str or None")
    curl_conf = curl_config(
        url, method=method.upper(), headers=header_lines(headers), timeout=timeout, insecure=insecure
    )
    payload = curl_conf + (bytes(body) if body is not None else b"")
    return curl_script(len(curl_conf), None if body is None else len(body)), payload, timeout


def _response(result: Result) -> Response:
    """The Response of a finished curl script, or the CurlError for curl's failure."""
    own, code, dump = split_stderr(result.stderr_bytes)
    lines = own.decode("utf-8", "replace").strip().splitlines()
    if code is None:
        raise CurlError(
            f"curl did not run in the runner (exit {result.exited}"
            + (f": {lines[-1]}" if lines else "")
            + ")",
            exit_code=result.exited or 1,
            hint="the runner needs bash, curl and coreutils; `inv config.doctor` checks it",
            result=result,
        )
    if code != 0:
        text = lines[-1] if lines else f"curl exited with {code}"
        raise CurlError(
            text.removeprefix("curl: "),
            exit_code=code,
            hint=HINTS.get(code, "see `man curl`, EXIT CODES"),
            result=result,
        )
    status, header_list = parse_headers(dump)
    return Response(status=status, body=result.stdout_bytes, header_list=header_list)


__all__ = [
    "Response",
    "curl_config",
    "curl_dry_argv",
    "curl_options",
    "curl_script",
    "curl_with",
    "exit_code",
    "header_lines",
    "parse_headers",
    "runner_curl",
    "show",
    "split_stderr",
]
