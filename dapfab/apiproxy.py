"""The cluster's API on the laptop for local tools, credentials kept in the runner
(docs/design.md §14).

In the VM ``kubectl proxy`` listens on a Unix socket in a private 0700 directory
(``sh/api_proxy.sh``); it is restarted there, same socket, when it exits. On the laptop the
bridge listens on 127.0.0.1 and ::1 and carries each connection to that socket
(``sh/relay_unix.sh``, ``socat`` in the VM) through :mod:`dapfab.gate`. Local tools get a
kubeconfig, mode 0600, whose server is ``https://127.0.0.1:<port>`` (:mod:`dapfab.tls`:
kubectl sends a token only over TLS) and whose user has the proxy's bearer token, never the
runner's credentials. The token keeps other local users
(who can reach the laptop's loopback) out: the gate checks it on every request and takes
it out before the request leaves the laptop. It is 192 bits from :mod:`secrets`, outside
every URL (so kubectl's discovery cache, named after the URL, never holds it), and written
nowhere but in that file.
"""

from __future__ import annotations

import base64
import hashlib
import json
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

from dapfab.bridge import LaptopBridge
from dapfab.commands import validate_context, validate_namespace
from dapfab.errors import CommandError, ConfigError, DapError, DapTimeout, Interrupted
from dapfab.execution import RemoteProcess
from dapfab.forward import READY_TIMEOUT, sigterm_cleanup
from dapfab.keeper import place
from dapfab.quoting import quote
from dapfab.remote import protocol, scripts
from dapfab.tls import throwaway_certificate

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

log = logging.getLogger("dapfab.apiproxy")

HEADER = ("# written by dapfab k8s.proxy: its own token, not the cluster's credentials; "
          "deleted when the proxy ends\n")
NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")


def new_token() -> str:
    """A fresh bearer token: 192 bits from :mod:`secrets`, URL-safe."""
    return secrets.token_urlsafe(24)


def proxy_command(context: str | None = None) -> str:
    """The VM's shell code: ``kubectl proxy`` on a private Unix socket."""
    flags = [f"--context={validate_context(context)}"] if context else []
    return scripts.program("api_proxy", *flags)


def dry_command(context: str | None = None) -> str:
    """The reference line for ``--dry``/``--echo``: the private directory as a placeholder."""
    extra = f" {quote('--context=' + validate_context(context))}" if context else ""
    return ("kubectl proxy --unix-socket=<private dir>/api.sock --api-prefix=/ "
            f"--reject-paths='^$' --accept-hosts='^localhost$,^127\\.0\\.0\\.1$,^::1$'{extra}")


def relay_command(socket_path: str) -> str:
    """The VM's shell code for one laptop connection: stdin to ``socket_path`` and back."""
    return scripts.program("relay_unix", socket_path, protocol.RELAY_REFUSED)


def kubeconfig_text(name: str, server: str, token: str, namespace: str | None = None,
                    ca: bytes | None = None) -> str:
    """A kubeconfig with one cluster, context and user called ``name``, the user holding
    the proxy's bearer ``token`` and the cluster trusting ``ca`` (PEM): JSON (which YAML
    readers read) after the header line, made by a serializer so that no value can add an
    entry of its own."""
    context = {"cluster": name, "user": name}
    if namespace is not None:
        context["namespace"] = validate_namespace(namespace)
    cluster = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode("ascii")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }
    return HEADER + json.dumps(config, indent=2) + "\n"


def default_kubeconfig_name(name: str) -> str:
    """Per process: two proxies never share one file."""
    return f"proxy-{os.getpid()}-{name}.kubeconfig"


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class KubeconfigFile:
    """The kubeconfig dapfab writes: created 0600 by ``O_EXCL|O_NOFOLLOW`` relative to its
    directory, held by descriptor from :meth:`prepare` to :meth:`remove`; removed at the end
    only if it is still the file written, unchanged. Without ``path``, it is ``name`` in the
    user's private dapfab directory (:func:`dapfab.keeper.place.open_directory`)."""

    def __init__(self, path: Path | None = None, *, name: str = "") -> None:
        self.path = path
        self._name = name
        self._dir: int | None = None
        self._stamp: tuple[int, int, str] | None = None

    def prepare(self) -> Path:
        """Open (and check) the directory; ConfigError (exit 2) if it cannot be used."""
        if self._dir is None:
            if self.path is None:
                directory, self._dir = place.open_directory()
                self.path = directory / self._name
            else:
                flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
                try:
                    self._dir = os.open(self.path.parent, flags)
                except OSError as exc:
                    raise ConfigError(f"cannot open the directory of {self.path} ({exc.strerror})",
                                      hop="laptop", hint="give --kubeconfig a path in an existing "
                                      "directory") from None
        assert self.path is not None
        return self.path

    def write(self, text: str) -> None:
        """Create the file; an existing one is replaced only if dapfab wrote it."""
        path = self.prepare()
        data = text.encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        for _ in range(3):
            try:
                fd = os.open(path.name, flags, 0o600, dir_fd=self._dir)
                break
            except FileExistsError:
                if not self._ours(path.name):
                    raise ConfigError(
                        f"refusing to overwrite {path}: dapfab did not write it",
                        hop="laptop", hint="give --kubeconfig a path that does not exist") from None
                os.unlink(path.name, dir_fd=self._dir)
            except OSError as exc:
                raise ConfigError(f"cannot create {path} ({exc.strerror})", hop="laptop",
                                  hint="give --kubeconfig a writable path that does not exist") from None
        else:
            raise ConfigError(f"cannot create {path}: a file keeps appearing there", hop="laptop",
                              hint="give --kubeconfig a path in a directory only you can write")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self._stamp = (info.st_dev, info.st_ino, hashlib.sha256(data).hexdigest())

    def _read(self, name: str) -> tuple[os.stat_result, bytes] | None:
        """The regular file ``name`` of this user (never through a symlink) and its bytes."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self._dir)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                return info, handle.read()
        except OSError:
            return None
        finally:
            os.close(fd)

    def _ours(self, name: str) -> bool:
        found = self._read(name)
        return found is not None and found[1].startswith(HEADER.encode())

    def remove(self) -> None:
        """Delete the file if it is the one written and unchanged; let the directory go
        (idempotent)."""
        stamp, self._stamp = self._stamp, None
        if self._dir is None:
            return
        try:
            if stamp is None or self.path is None:
                return
            found = self._read(self.path.name)
            if found is None:
                return
            info, data = found
            if (info.st_dev, info.st_ino, hashlib.sha256(data).hexdigest()) == stamp:
                os.unlink(self.path.name, dir_fd=self._dir)
            else:
                log.warning("left %s in place: it changed after dapfab wrote it", self.path)
        finally:
            os.close(self._dir)
            self._dir = None


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
        self.config = config
        self.name = name or config.vm_name
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"cannot name a kubeconfig entry {self.name!r}",
                              hint="use letters, digits, '.', '_' or '-'")
        self.namespace = None if namespace is None else validate_namespace(namespace)
        self.context = None if context is None else validate_context(context)
        self.ready_timeout = ready_timeout
        self.token = new_token()
        self.ca, tls = throwaway_certificate()
        self._on_event = on_event or (lambda message: log.info("%s", message))
        self.kubeconfig = KubeconfigFile(
            None if kubeconfig is None else Path(kubeconfig), name=default_kubeconfig_name(self.name))
        self.bridge = LaptopBridge(config, laptop_port=laptop_port, on_event=self.event,
                                   relay=self._relay, token=self.token, tls=tls)
        self.socket_path: str | None = None
        self.restarts = 0
        self.closed = threading.Event()
        self._ready = threading.Event()
        self._stderr = bytearray()
        self._out = bytearray()
        self._process: RemoteProcess | None = None

    def _relay(self, _listener: int | None) -> str:
        """The bridge's relay for one laptop connection: to kubectl proxy's socket (the
        bridge starts only once the socket is up)."""
        assert self.socket_path is not None
        return relay_command(self.socket_path)

    def event(self, message: str) -> None:
        """Pass ``message`` on with the token redacted."""
        self._on_event(self.redact(message))

    def redact(self, text: str) -> str:
        return text.replace(self.token, "<token>")

    @property
    def url(self) -> str:
        """The laptop URL (the kubeconfig's server)."""
        return f"https://127.0.0.1:{self.bridge.laptop_port}"

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
        self.kubeconfig.prepare()  # as a port in use, a directory that cannot be used fails
        self.bridge.bind()  # here, before anything is sent
        process = RemoteProcess(self.config, proxy_command(self.context),
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
        self.bridge.start()
        self.kubeconfig.write(kubeconfig_text(self.name, self.url, self.token, self.namespace,
                                             self.ca))
        return self.kubeconfig.prepare()

    def _detail(self) -> str:
        lines = self.redact(bytes(self._stderr).decode("utf-8", "replace")).strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def _failure(self, process: RemoteProcess) -> DapError:
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
    proxy = ApiProxy(config, **options)  # type: ignore[arg-type]
    with sigterm_cleanup(), proxy:
        yield proxy.kubeconfig.path
