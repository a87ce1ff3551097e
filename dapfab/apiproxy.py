"""The cluster's API on the laptop for local tools, credentials kept in the runner
(docs/design.md §14).

In the VM ``kubectl proxy`` listens on a Unix socket in a private 0700 directory under the
prefix ``/<token>/`` (``sh/api_proxy.sh``); it is restarted there, same socket and token, when
it exits. On the laptop the bridge listens on 127.0.0.1 and ::1 and carries each connection
to that socket (``sh/relay_unix.sh``, ``socat`` in the VM). Local tools get a kubeconfig,
mode 0600, whose server is ``http://127.0.0.1:<port>/<token>`` and which holds no
credentials: the runner's stay in the runner. The token keeps other local users (who can
reach the laptop's loopback) out; it is at least 128 bits from :mod:`secrets` and is shown
nowhere but in that file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dapfab.errors import CommandError, ConfigError, DapError, DapTimeout, Interrupted
from dapfab.remote import protocol, scripts

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.apiproxy")

READY_TIMEOUT = 30.0
RELAY_REFUSED = 111
HEADER = "# written by dapfab k8s.proxy: no credentials; deleted when the proxy ends\n"
NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")


def new_token() -> str:
    """A fresh prefix token: 192 bits from :mod:`secrets`, URL-safe."""
    return secrets.token_urlsafe(24)


def proxy_command(token: str, context: str | None = None) -> str:
    """The VM's shell code: ``kubectl proxy`` on a private Unix socket under ``/<token>/``."""
    flags = [f"--context={context}"] if context else []
    return scripts.program("api_proxy", token, *flags)


def dry_command(context: str | None = None) -> str:
    """The reference line for ``--dry``/``--echo``: the token and directory as placeholders."""
    extra = f" --context={context}" if context else ""
    return (f"kubectl proxy --unix-socket=<private dir>/api.sock --api-prefix=/<token>/ "
            f"--reject-paths='^$' --accept-hosts='^localhost$,^127\\.0\\.0\\.1$,^::1$'{extra}")


def relay_command(socket_path: str) -> str:
    """The VM's shell code for one laptop connection: stdin to ``socket_path`` and back."""
    return scripts.program("relay_unix", socket_path, RELAY_REFUSED)


def kubeconfig_text(name: str, server: str, namespace: str | None = None) -> str:
    """A kubeconfig with one cluster, context and user called ``name`` and no credentials."""
    lines = [HEADER, "apiVersion: v1\nkind: Config\n",
             f"clusters:\n- name: {name}\n  cluster:\n    server: {server}\n",
             f"users:\n- name: {name}\n  user: {{}}\n",
             f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"]
    if namespace:
        lines.append(f"    namespace: {namespace}\n")
    lines.append(f"current-context: {name}\npreferences: {{}}\n")
    return "".join(lines)


def default_kubeconfig(name: str) -> Path:
    """Per process, in the user's private runtime (or cache) directory: two proxies never
    share one file."""
    from dapfab.keeper import place

    return place.directory() / f"proxy-{os.getpid()}-{name}.kubeconfig"


class KubeconfigFile:
    """The kubeconfig dapfab writes: created 0600 (never through a symlink), and removed at
    the end only if it is still the file written, unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, str] | None = None

    def write(self, text: str) -> None:
        """Create the file; an existing one is replaced only if dapfab wrote it."""
        data = text.encode()
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if not self._ours(info):
                raise ConfigError(
                    f"refusing to overwrite {self.path}: dapfab did not write it",
                    hop="laptop", hint="give --kubeconfig a path that does not exist")
            os.unlink(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.path} ({exc.strerror})", hop="laptop",
                              hint="give --kubeconfig a writable path that does not exist") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self._stamp = (info.st_dev, info.st_ino, hashlib.sha256(data).hexdigest())

    def _ours(self, info: os.stat_result) -> bool:
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False
        try:
            with open(self.path, "rb") as handle:
                return handle.read(len(HEADER)) == HEADER.encode()
        except OSError:
            return False

    def remove(self) -> None:
        """Delete the file if it is the one written and unchanged (idempotent)."""
        stamp, self._stamp = self._stamp, None
        if stamp is None:
            return
        try:
            info = os.lstat(self.path)
            with open(self.path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return
        if (info.st_dev, info.st_ino, digest) == stamp:
            os.unlink(self.path)
        else:
            log.warning("left %s in place: it changed after dapfab wrote it", self.path)


class ApiProxy:
    """``kubectl proxy`` in the runner, bridged to the laptop's loopback, with a kubeconfig.

    Use as a context manager or call :meth:`open` / :meth:`close`. ``name`` names the
    kubeconfig's cluster, context and user (default: the VM's name).
    """

    def __init__(
        self,
        config: RunnerConfig,
        *,
        laptop_port: int | str = 0,
        kubeconfig: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        context: str | None = None,
        name: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        from dapfab.bridge import LaptopBridge

        self.config = config
        self.name = name or config.vm_name
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"cannot name a kubeconfig entry {self.name!r}",
                              hint="use letters, digits, '.', '_' or '-'")
        self.namespace = namespace
        self.context = context
        self.ready_timeout = ready_timeout
        self.token = new_token()
        self._on_event = on_event or (lambda message: log.info("%s", message))
        self.kubeconfig = KubeconfigFile(
            Path(kubeconfig) if kubeconfig is not None else default_kubeconfig(self.name))
        self.bridge = LaptopBridge(config, laptop_port=laptop_port, on_event=self.event)
        self.socket_path: str | None = None
        self.restarts = 0
        self.closed = threading.Event()
        self._ready = threading.Event()
        self._stderr = bytearray()
        self._out = bytearray()
        self._process = None

    def event(self, message: str) -> None:
        """Pass ``message`` on with the token redacted."""
        self._on_event(self.redact(message))

    def redact(self, text: str) -> str:
        return text.replace(self.token, "<token>")

    @property
    def url(self) -> str:
        """The laptop URL without the token (for display)."""
        return f"http://127.0.0.1:{self.bridge.laptop_port}"

    def _stdout(self, data: bytes) -> None:
        """Only the script's socket markers come on stdout (kubectl's goes to /dev/null)."""
        self._out += data
        start = protocol.marker("socket") + b" "
        while b"\n" in self._out:
            line, _, rest = bytes(self._out).partition(b"\n")
            self._out = bytearray(rest)
            if line.startswith(start):
                path = line[len(start):].decode("utf-8", "replace")
                if self.socket_path is None:
                    self.socket_path = path
                    self._ready.set()
                else:
                    self.restarts += 1
                    self.event("kubectl proxy is serving again on the same socket")

    def _stderr_in(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-8192]
        for line in data.decode("utf-8", "replace").splitlines():
            if "restarting it on the same socket" in line:
                self.event(line.strip())

    def open(self) -> Path:
        """Bind the laptop port, start kubectl proxy, write the kubeconfig; its path."""
        from dapfab.execution import RemoteProcess

        self.bridge.bind()  # a laptop port in use fails here, before anything is sent
        process = RemoteProcess(self.config, proxy_command(self.token, self.context),
                                on_stdout=self._stdout, on_stderr=self._stderr_in,
                                in_stream=None)
        self._process = process
        process.start()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.05):
            if self.closed.is_set():
                raise Interrupted("the proxy was closed while starting")
            if process.ended():
                raise self._failure(process)
            if time.monotonic() > deadline:
                raise DapTimeout(f"kubectl proxy not ready after {self.ready_timeout:g} s"
                                 + self._detail(), hop="kubectl",
                                 hint="check the runner's kubectl: inv k8s.kubectl -- version")
        assert self.socket_path is not None
        self.bridge.relay = relay_command(self.socket_path)
        self.bridge.start()
        server = f"{self.url}/{self.token}"
        self.kubeconfig.write(kubeconfig_text(self.name, server, self.namespace))
        return self.kubeconfig.path

    def _detail(self) -> str:
        lines = self.redact(bytes(self._stderr).decode("utf-8", "replace")).strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def _failure(self, process) -> DapError:  # noqa: ANN001 - a RemoteProcess
        try:
            code = process.wait(5.0)
        except DapError as err:
            return err
        return CommandError(f"kubectl proxy exited with {code}{self._detail()}", hop="kubectl",
                            hint="check the VM's tools and kubeconfig: inv config.doctor",
                            exit_code=code or 1)

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and not process.ended() and not self.closed.is_set()

    def close(self) -> None:
        """Stop the bridge and the remote kubectl proxy (gone when this returns); delete the
        kubeconfig if unchanged (idempotent)."""
        self.closed.set()
        try:
            self.bridge.close()
        finally:
            process, self._process = self._process, None
            try:
                if process is not None:
                    process.close()
            finally:
                self.kubeconfig.remove()

    def __enter__(self) -> ApiProxy:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def api_proxy(config: RunnerConfig, **options: object) -> Iterator[Path]:
    """``with api_proxy(config) as kubeconfig_path:`` the cluster's API for local tools.

    Options are :class:`ApiProxy`'s. The remote ``kubectl proxy`` is gone and the kubeconfig
    deleted when the block exits, however it exits; in the main thread SIGTERM (at its
    default) raises :class:`~dapfab.errors.Interrupted` (exit code 143) so that this holds
    for it too.
    """
    from dapfab.forward import sigterm_cleanup

    proxy = ApiProxy(config, **options)  # type: ignore[arg-type]
    with sigterm_cleanup(), proxy:
        yield proxy.kubeconfig.path
