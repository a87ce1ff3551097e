"""Laptop paths in kubectl's file arguments (docs/design.md §15).

``kubectl apply -f deploy/`` typed on the laptop means the laptop's ``deploy/``. :func:`plan`
reads kubectl's argv, finds the arguments that name files (``-f``/``--filename``, ``-k``/
``--kustomize``, ``--from-file`` (``key=path`` too), ``--from-env-file``, ``kubectl
kustomize DIR``, ``kubectl cp``), and rewrites each one that exists on the laptop to a path
under :data:`VM_DIR`; every other word stays byte for byte (a path that does not exist here,
``-f -``, a URL, anything after ``--``). :func:`bundle` packs what the plan ships as one tar
stream, which travels in front of the command's stdin; :func:`runner_code` is the shell
code that unpacks it in the VM (``sh/files.sh``) and runs kubectl; :func:`receive` writes
the result of ``kubectl cp POD:PATH LOCAL`` on the laptop.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dapfab.errors import ConfigError, DapError
from dapfab.remote import protocol, scripts
from dapfab.streams import read_chunk

# A tmpfs mounted here in the command's own mount namespace (made by the launcher for each
# call): only that call sees it, and it is gone with the namespace, however the call ends.
VM_DIR = "/run/dapfab-files"
SIZE_CAP = 64 << 20  # bytes of file contents one call ships, at most
OUT = "out"  # the member under VM_DIR that `kubectl cp POD:PATH LOCAL` writes to

# kubectl's flags whose value names laptop files.
FILE_FLAGS = {"-f": "filename", "--filename": "filename", "-k": "kustomize",
              "--kustomize": "kustomize", "--from-file": "from-file",
              "--from-env-file": "from-env-file"}
# Flags (global and of the commands that take files) whose value is the next word when not
# joined with `=`: skipped so that a value is never taken for a file or a positional.
VALUE_FLAGS = {
    "-n", "--namespace", "--context", "--kubeconfig", "--cluster", "--user", "-s", "--server",
    "--token", "--as", "--as-group", "--as-uid", "--request-timeout", "--cache-dir",
    "--certificate-authority", "--client-certificate", "--client-key", "--tls-server-name",
    "-v", "--v", "--log-file", "-o", "--output", "-l", "--selector", "--field-selector",
    "--template", "-c", "--container", "--retries", "--type", "--field-manager", "--timeout",
    "--grace-period", "--wait", "--cascade", "--prune-allowlist", "--from-literal",
    "--image", "--port", "--replicas", "--revision", "--to-revision", "--patch", "--subresource",
}
# One-letter flags that take no value and may lead a cluster such as `-Rf DIR`.
BOOL_SHORT = set("RAwitqW")


@dataclass(frozen=True)
class Shipped:
    """One laptop path the call ships: where it is here, and its member under VM_DIR."""

    laptop: str
    member: str
    recursive: bool

    @property
    def vm(self) -> str:
        """The path kubectl gets in the VM."""
        return f"{VM_DIR}/{self.member}"


@dataclass(frozen=True)
class Fetch:
    """``kubectl cp POD:PATH LOCAL``: the laptop path the VM's copy is written to."""

    laptop: str
    member: str

    @property
    def vm(self) -> str:
        return f"{VM_DIR}/{self.member}"


@dataclass
class Plan:
    """kubectl's argv with laptop paths rewritten, and what the call ships and fetches."""

    args: list[str]
    shipped: list[Shipped] = field(default_factory=list)
    fetch: Fetch | None = None

    @property
    def needed(self) -> bool:
        """Whether anything travels: without, the call runs exactly as before."""
        return bool(self.shipped or self.fetch)

    def lines(self) -> list[str]:
        """What ``--dry`` shows before the kubectl line: one line per shipped or fetched path."""
        shown = [f"ship {item.laptop} -> {item.vm}" for item in self.shipped]
        if self.fetch is not None:
            shown.append(f"fetch {self.fetch.vm} -> {self.fetch.laptop}")
        return shown


def _is_local(word: str) -> bool:
    """Whether a ``-f``-style value may name a laptop path (not stdin, not a URL)."""
    return bool(word) and word != "-" and "://" not in word


def _subcommand(words: Sequence[str]) -> list[int]:
    """Indexes of the positional words before ``--`` (the first is the subcommand)."""
    found: list[int] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            break
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if "=" not in word and (name in VALUE_FLAGS or name in FILE_FLAGS):
                index += 1
        elif word.startswith("-") and len(word) > 1:
            cluster = word[1:]
            while cluster and cluster[0] in BOOL_SHORT:
                cluster = cluster[1:]
            if len(cluster) == 1 and ("-" + cluster in VALUE_FLAGS or "-" + cluster in FILE_FLAGS):
                if not (cluster == "f" and found and words[found[0]] == "logs"):
                    index += 1
        else:
            found.append(index)
        index += 1
    return found


class _Planner:
    def __init__(self, words: list[str], cwd: str) -> None:
        self.words = words
        self.cwd = cwd
        self.shipped: list[Shipped] = []
        self.positionals = _subcommand(words)
        sub = words[self.positionals[0]] if self.positionals else ""
        self.subcommand = sub
        self.recursive = self._recursive()

    def _recursive(self) -> bool:
        for word in self.words:
            if word == "--":
                return False
            if word in ("--recursive", "--recursive=true"):
                return True
            if word.startswith("-") and not word.startswith("--"):
                cluster = word[1:]
                while cluster and cluster[0] in BOOL_SHORT:
                    if cluster[0] == "R":
                        return True
                    cluster = cluster[1:]
        return False

    def _laptop(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, os.path.expanduser(path)))

    def ship(self, path: str, *, recursive: bool, directory_ok: bool = True) -> str:
        """The VM path for laptop ``path`` if it exists here (and is shipped), else ``path``."""
        if not _is_local(path):
            return path
        laptop = self._laptop(path)
        if not os.path.exists(laptop) or (os.path.isdir(laptop) and not directory_ok):
            return path
        for item in self.shipped:
            if item.laptop == laptop and item.recursive == recursive:
                return item.vm
        name = os.path.basename(laptop) or "root"
        item = Shipped(laptop, f"{len(self.shipped)}/{name}", recursive)
        self.shipped.append(item)
        return item.vm

    def value(self, kind: str, value: str) -> str:
        """The rewritten value of a file flag of ``kind``."""
        if kind == "filename":
            return self.ship(value, recursive=self.recursive)
        if kind == "kustomize":
            return self.ship(value, recursive=True)
        if kind == "from-env-file":
            return self.ship(value, recursive=False, directory_ok=False)
        key, equals, path = value.partition("=")  # kubectl splits at the first `=`
        if not equals:
            return self.ship(value, recursive=False)
        if not key or not path:
            return value  # kubectl's own error
        return f"{key}={self.ship(path, recursive=False)}"

    def kind(self, flag: str) -> str | None:
        if flag == "-f" and self.subcommand == "logs":
            return None  # `logs -f` is --follow
        return FILE_FLAGS.get(flag)

    def run(self) -> Plan:
        words = self.words
        index = 0
        while index < len(words):
            word = words[index]
            if word == "--":
                break
            if word.startswith("--"):
                name, equals, value = word.partition("=")
                kind = self.kind(name)
                if kind and equals:
                    words[index] = f"{name}={self.value(kind, value)}"
                elif kind and index + 1 < len(words):
                    words[index + 1] = self.value(kind, words[index + 1])
                    index += 1
                elif name in VALUE_FLAGS and not equals:
                    index += 1
            elif word.startswith("-") and len(word) > 1:
                index += self._short(index)
            index += 1
        fetch = self._positionals()
        return Plan(words, self.shipped, fetch)

    def _short(self, index: int) -> int:
        """Handle the short-flag cluster at ``index``; how many following words it took."""
        word = self.words[index]
        at = 1
        while at < len(word) and word[at] in BOOL_SHORT:
            at += 1
        if at >= len(word):
            return 0
        flag = "-" + word[at]
        rest = word[at + 1 :]
        kind = self.kind(flag)
        if kind is None:
            return 1 if flag in VALUE_FLAGS and not rest else 0
        if rest:
            lead = word[: at + 1] + ("=" if rest.startswith("=") else "")
            self.words[index] = lead + self.value(kind, rest[1:] if rest.startswith("=") else rest)
            return 0
        if index + 1 < len(self.words):
            self.words[index + 1] = self.value(kind, self.words[index + 1])
            return 1
        return 0

    def _positionals(self) -> Fetch | None:
        """``kubectl kustomize DIR`` and ``kubectl cp SRC DST``."""
        args = self.positionals[1:]
        if self.subcommand == "kustomize" and args:
            self.words[args[0]] = self.ship(self.words[args[0]], recursive=True)
        if self.subcommand != "cp" or len(args) < 2:
            return None
        source, target = args[0], args[1]
        if ":" not in self.words[source] and ":" in self.words[target]:
            self.words[source] = self.ship(self.words[source], recursive=True)
        elif ":" in self.words[source] and ":" not in self.words[target]:
            local = self.words[target]
            name = os.path.basename(os.path.normpath(self._laptop(local))) or "root"
            fetch = Fetch(self._laptop(local), f"{OUT}/{name}")
            self.words[target] = fetch.vm
            return fetch
        return None


def plan(args: Sequence[str], *, cwd: str | None = None) -> Plan:
    """kubectl's ``args`` with every file argument that names an existing laptop path
    (relative to ``cwd``, default the current directory) rewritten to its VM path, and what
    the call must ship and fetch. Words after a ``--`` are never touched."""
    return _Planner(list(args), cwd or os.getcwd()).run()


def for_fan_out(args: Sequence[str], *, cwd: str | None = None) -> Plan:
    """:func:`plan` for several runners at once: every runner gets the same files; a
    ``cp POD:PATH LOCAL`` is refused (several runners would write one laptop path)."""
    found = plan(args, cwd=cwd)
    if found.fetch is not None:
        raise _refuse(f"kubectl cp to the laptop path {found.fetch.laptop} from several runners",
                      "copy from one runner at a time (--runner NAME)")
    return found


# --------------------------------------------------------------------------- the bundle


def _refuse(message: str, hint: str) -> ConfigError:
    return ConfigError(message, hint=hint, hop="laptop")


class _Packer:
    def __init__(self, cap: int) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", errors="surrogateescape")
        self.cap = cap
        self.total = 0

    def entry(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        return info

    def file(self, path: str, name: str) -> None:
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                self.total += st.st_size
                if self.total > self.cap:
                    raise _refuse(
                        f"laptop files for kubectl are over {self.cap >> 20} MiB at {path}",
                        "ship fewer or smaller files (or --no-laptop-files and copy them to "
                        "the VM yourself)")
                info = self.entry(name, st, tarfile.REGTYPE)
                info.size = st.st_size
                self.tar.addfile(info, handle)
        except OSError as exc:
            raise _refuse(f"cannot read {path} ({exc.strerror})",
                          "make it readable, or name another file") from None

    def directory(self, path: str, name: str, *, recursive: bool, root: str,
                  seen: frozenset[str] = frozenset()) -> None:
        real = os.path.realpath(path)
        self.tar.addfile(self.entry(name, os.stat(path), tarfile.DIRTYPE))
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            raise _refuse(f"cannot read directory {path} ({exc.strerror})",
                          "make it readable, or name another directory") from None
        for entry in entries:
            inner, member = os.path.join(path, entry), f"{name}/{entry}"
            if os.path.islink(inner):
                target = os.path.realpath(inner)
                if os.path.commonpath([target, root]) != root:
                    raise _refuse(
                        f"{inner} is a symlink out of {root}; not following it",
                        "copy the file into the directory, or name it with a flag of its own")
            if os.path.isdir(inner):
                if recursive and os.path.realpath(inner) not in seen | {real}:
                    self.directory(inner, member, recursive=True, root=root, seen=seen | {real})
            elif os.path.isfile(inner):
                self.file(inner, member)

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def bundle(plan: Plan, *, cap: int = SIZE_CAP) -> bytes:
    """The tar stream of everything ``plan`` ships (file modes kept; in a directory, only
    regular files, and symlinks that stay inside it). ConfigError (exit 2) past ``cap``
    bytes of contents, naming the file that crossed it."""
    packer = _Packer(cap)
    for item in plan.shipped:
        if os.path.isdir(item.laptop):
            root = os.path.realpath(item.laptop)
            packer.directory(item.laptop, item.member, recursive=item.recursive, root=root)
        else:
            packer.file(item.laptop, item.member)
    return packer.close()


def runner_code(plan: Plan, kubectl_argv: Sequence[str], size: int, nonce: str) -> str:
    """Shell code for ``bash -lc``: mount the call's private tmpfs on VM_DIR, unpack
    ``size`` bytes of tar from stdin, run ``kubectl_argv`` on the rest of stdin and, for a
    fetch, send back VM_DIR/out after the ``files`` marker with ``nonce``."""
    fetch = nonce if plan.fetch is not None else ""
    return scripts.program("files", VM_DIR, size, SIZE_CAP * 2, fetch, *kubectl_argv)


def new_nonce() -> str:
    """The nonce that makes the fetch's marker unambiguous."""
    return secrets.token_hex(8)


class Prefixed(io.RawIOBase):
    """A stdin that is ``head`` first, then ``rest`` (a stream, or None)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        super().__init__()
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        if self.head:
            size = len(self.head) if size < 0 else size
            chunk, self.head = bytes(self.head[:size]), self.head[size:]
            return chunk
        return read_chunk(self.rest) if self.rest is not None else b""

    def read(self, size: int = -1) -> bytes:
        return self.read1(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stdin_for(data: bytes, rest: Any) -> Any:
    """The command's stdin: the bundle, then the caller's (None: nothing more)."""
    return io.BytesIO(data) if rest is None else Prefixed(data, rest)


class FetchSink:
    """Passes a fetching command's stdout on to ``target`` up to the ``files`` marker and
    keeps what follows it: the tar of the VM's copy."""

    def __init__(self, nonce: str, target: Any) -> None:
        self.target = getattr(target, "buffer", target)
        self.scanner = protocol.MarkerScanner(protocol.marker("files", nonce) + b"\n", self._out)

    def _out(self, data: bytes) -> None:
        self.target.write(data)

    def write(self, data: bytes) -> int:
        self.scanner.feed(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self.scanner.after is None:
            self.target.flush()

    @property
    def fetched(self) -> bytes | None:
        return self.scanner.after


def split_fetched(stdout: bytes, nonce: str) -> tuple[bytes, bytes | None]:
    """Captured stdout without the fetch: ``(kubectl's output, the tar or None)``."""
    mark = protocol.marker("files", nonce) + b"\n"
    at = stdout.find(mark)
    if at < 0:
        return stdout, None
    return stdout[:at], stdout[at + len(mark) :]


def receive(fetch: Fetch, data: bytes) -> None:
    """Write the VM's copy (a tar of VM_DIR/out) to ``fetch.laptop``: a file by an atomic
    rename, a directory's files each by an atomic rename into it."""
    parent = os.path.dirname(fetch.laptop) or "."
    try:
        staging = tempfile.mkdtemp(prefix=".dapfab-cp.", dir=parent)
    except OSError as exc:
        raise DapError(f"cannot write {fetch.laptop} ({exc.strerror})", hop="laptop",
                       hint="pick a destination in a writable directory") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.extractall(staging, filter="data")
        result = os.path.join(staging, fetch.member)
        if not os.path.lexists(result):
            return
        if os.path.isdir(result) and os.path.isdir(fetch.laptop):
            for top, _dirs, files in os.walk(result):
                into = os.path.join(fetch.laptop, os.path.relpath(top, result))
                os.makedirs(into, exist_ok=True)
                for each in files:
                    os.replace(os.path.join(top, each), os.path.join(into, each))
        else:
            os.replace(result, fetch.laptop)
    except (OSError, tarfile.TarError) as exc:
        raise DapError(f"cannot write {fetch.laptop} ({exc})", hop="laptop",
                       hint="check the destination on this machine") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["SIZE_CAP", "VM_DIR", "Fetch", "Plan", "Shipped", "bundle", "plan", "receive",
           "runner_code"]
