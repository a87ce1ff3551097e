#!/bin/sh
""":"
# The `dap` command (installed from bin/dap, a link to this file; docs/design.md §17).
# This part is POSIX sh: it starts the Python part below in the interpreter dap was
# installed for, without site (-I -S), so that a warm call costs a bare interpreter.
self=$0
if [ -L "$self" ]; then self=$(readlink -f -- "$self") || self=$0; fi
here=${self%/*}
py=
# pip wrote the exact interpreter into the shebang of the `dapfab` script next to us
if [ -r "$here/dapfab" ]; then IFS= read -r py < "$here/dapfab"; fi
case $py in
    "#!/"*python*) py=${py#??} ;;
    *) if [ -x "$here/python3" ]; then py=$here/python3; else py=python3; fi ;;
esac
# Compiling this file costs more than the rest of a call: its code is cached, as an import's
# would be, in <keeper directory>/pyc, but only in a directory no other user can replace.
exec "$py" -I -S -c '
import sys
from _frozen_importlib_external import SourceFileLoader
from posix import environ, getuid, lstat
def private(path, mask):
    try:
        info = lstat(path)
    except OSError:
        return False
    return info.st_uid == getuid() and info.st_mode & (0o170000 | mask) == 0o040000
runtime = environ.get(b"XDG_RUNTIME_DIR", b"")
base = runtime if runtime[:1] == b"/" and private(runtime, 0o077) else (
    environ.get(b"HOME", b"") + b"/.cache")
if private(base, 0o022) and private(base + b"/dapfab", 0o077):
    sys.pycache_prefix = (base + b"/dapfab/pyc").decode("utf-8", "surrogateescape")
path = sys.argv[1]
del sys.argv[0]
exec(SourceFileLoader("__main__", path).get_code("__main__"),
     {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
' "$self" "$@"
":"""

# The thin ``dap``: ``dap k8s.kubectl -- ARGS`` and ``dap k8s.curl URL`` go straight to a
# live keeper, without importing Invoke, Fabric, paramiko or YAML, nor anything of dapfab
# (this file is installed as a script, outside the package).
#
# After such a call, the full path (``dap`` through Invoke) leaves a *record* of what it
# resolved (the keeper's socket and config, the kubectl command's start, whether laptop
# files are on, and the lines dapfab prints) for this working directory and these
# environment variables, with the content of every config file it could have read, present
# or absent. The thin path finds the record of its own directory and environment, checks
# those files again and hands the command to that keeper. Any miss or doubt (no record, a
# changed file, a flag, a word that may want a pty or a laptop file, no live keeper, a
# keeper that refuses) execs the full path instead, which behaves exactly as it always
# did; ``DAPFAB_THIN=0`` turns the thin path off.
#
# Only modules that load in well under a millisecond are imported: json, socket and signal
# pull in enum and re, about 30 ms on a small machine, twice the whole of
# ``python3 -I -S -c pass``. Hence the C modules below the standard ones.

import _json
import _sha256
import _signal
import _socket
import os
import stat
import sys
import time

VERSION = 3
OFF = "DAPFAB_THIN"  # "0": always the full path
TASK = "k8s.kubectl"
CURL_TASK = "k8s.curl"
CONFIG_NAMES = ("invoke.yaml", "invoke.yml", "invoke.json", "invoke.py")
ENV_PREFIXES = ("DAP_", "INVOKE_")
# The environment a keeper keeps (dapfab.keeper.client): what finding the user's files,
# keys and agent needs. A record is also keyed by it.
KEEPER_ENV = ("HOME", "USER", "LOGNAME", "PATH", "LANG", "SSH_AUTH_SOCK", "XDG_RUNTIME_DIR",
              "PYTHONPATH", "DAP_DEBUG")
RECORD_MAX = 1 << 20
RECORD_KEYS = frozenset((
    "version", "cwd", "files", "socket", "digest", "config", "prefix", "laptop_files",
    "pty_words", "arg_max", "heartbeat", "hello_wait", "quit_wait", "start_wait", "lookup",
    "lines"))
SIGNAL_EXIT = {_signal.SIGINT: 130, _signal.SIGTERM: 143}
SIGNAL_NAMES = {_signal.SIGINT: "Ctrl-C", _signal.SIGTERM: "SIGTERM"}
# The full program, as the `dapfab` script runs it; -P: the working directory is no import
# path (an ops repository's `dapfab.py` must not stand in for dapfab).
FULL = "from dapfab.cli import main; main()"
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


# -- shared with the package: the one definition of each ------------------------------

def quote(word: str) -> str:
    """Quote ``word`` for one POSIX shell so that it parses back to exactly ``word`` (what
    ``shlex.quote`` gives, without importing ``re``)."""
    if not word:
        return "''"
    if _SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def stamp(path: str) -> tuple[str, str]:
    """``path`` with what identifies its content: the SHA-256 of a regular file's bytes,
    ``missing`` (or the error) when it cannot be opened, the file type of anything else
    (``/dev/null``; a FIFO is never read)."""
    path = os.path.expanduser(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return (path, "missing")
    except OSError as exc:
        return (path, f"error {exc.errno}")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return (path, f"type {stat.S_IFMT(mode):o}")
        digest = _sha256.sha256()
        while chunk := os.read(fd, 1 << 16):
            digest.update(chunk)
        return (path, digest.hexdigest())
    except OSError as exc:
        return (path, f"error {exc.errno}")
    finally:
        os.close(fd)


def private(info: os.stat_result) -> bool:
    """A directory of this user that no one else may enter or write (mode 0700 or less)."""
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & 0o077)


def keeper_base() -> str:
    """``$XDG_RUNTIME_DIR`` when it is an absolute path to this user's directory of mode
    0700 (not a symlink); else ``~/.cache``. Another user who can write the runtime
    directory could rename ``dapfab`` away and plant files where dapfab said they are."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            if private(os.lstat(runtime)):
                return runtime
        except OSError:
            pass
    return os.path.join(os.path.expanduser("~"), ".cache")


def config_files(cwd: str, home: str) -> list[str]:
    """Every file whose content changes what ``dap`` resolves in ``cwd``: Invoke's system,
    user and project config files (in each directory from ``cwd`` up, so that a new one
    nearer than the last is seen) and ``tasks.py`` up the tree."""
    paths = [f"/etc/{name}" for name in CONFIG_NAMES]
    if home:
        paths += [os.path.join(home, "." + name) for name in CONFIG_NAMES]
    here = cwd
    while True:
        paths += [os.path.join(here, name) for name in (*CONFIG_NAMES, "tasks.py")]
        parent = os.path.dirname(here)
        if parent == here:
            return paths
        here = parent


def spawn_keeper(digest: str, settings: bytes) -> int:
    """Start ``python -P -m dapfab.keeper DIGEST`` in a session of its own and return its
    PID. The config travels on its stdin, never in its argv, which every local user reads;
    it keeps only the environment of :data:`KEEPER_ENV` (a daemon outlives its caller; the
    caller's secrets stay put); -P: the caller's directory is no import path."""
    env = {name: value for name, value in os.environ.items()
           if name in KEEPER_ENV or name.startswith("LC_")}
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-P", "-m", "dapfab.keeper", digest], env,
            file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                          (os.POSIX_SPAWN_DUP2, 1, 2)],
            setsid=True)
        os.write(write_end, settings)  # a few hundred bytes: the pipe's buffer takes them
    finally:
        os.close(read_end)
        os.close(write_end)
    return pid


class Situation:
    """Where a call is made: its directory, the variables that can change what the full
    path resolves, and the content of every config file it could read."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.cwd = os.getcwd()
        names = sorted(name for name in environ if name != OFF and (
            name.startswith(ENV_PREFIXES) or name in KEEPER_ENV))
        self.environment = [[name, environ[name]] for name in names]
        self.files = [list(stamp(path))
                      for path in config_files(self.cwd, environ.get("HOME", ""))]

    def key(self) -> str:
        """The name of this directory's and environment's record (not of the files)."""
        text = repr((VERSION, self.cwd, self.environment))
        return _sha256.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def record_name(self) -> str:
        return f"thin-{self.key()}.json"


def shape(argv: list[str]) -> list[str] | None:
    """kubectl's words if ``argv`` is exactly ``k8s.kubectl -- WORDS`` and nothing asks for
    the full path, else None."""
    if len(argv) < 2 or argv[0] != TASK or argv[1] != "--" or _switched_off():
        return None
    return list(argv[2:])


def curl_url(argv: list[str]) -> str | None:
    """The URL if ``argv`` is exactly ``k8s.curl http(s)://...`` (no flag) and nothing asks
    for the full path, else None. The keeper validates the URL as the task does."""
    if len(argv) != 2 or argv[0] != CURL_TASK or _switched_off():
        return None
    url = argv[1]
    return url if url[:8].lower().startswith(("http://", "https://")) else None


def takes(argv: list[str]) -> bool:
    """Whether ``argv`` has a shape the thin path may take."""
    return shape(argv) is not None or curl_url(argv) is not None


def _switched_off() -> bool:
    return bool(os.environ.get(OFF) == "0" or os.environ.get("DAP_DEBUG")
                or os.environ.get("INVOKE_RUNTIME_CONFIG"))


# -- JSON without the json module (which imports re) ------------------------------------

class _Decoding:
    """What ``_json``'s scanner asks of a decoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")


_scan = _json.make_scanner(_Decoding())


def loads(text: str) -> object:
    """``json.loads(text)`` for text that json.dumps wrote; ValueError otherwise."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("data after the JSON value")
    return value


def dumps(value: object) -> str:
    """``json.dumps(value)`` (ASCII, no spaces) for the values messages hold."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) or isinstance(value, float) and abs(value) < float("inf"):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    raise TypeError(f"cannot send {type(value).__name__}")


# -- the record -------------------------------------------------------------------------

def open_keeper_directory() -> int | None:
    """A descriptor of ``<keeper_base()>/dapfab`` if it exists and is private, else None
    (the full path says why)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        parent = os.open(keeper_base(), flags)
    except OSError:
        return None
    try:
        info = os.fstat(parent)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
        fd = os.open("dapfab", flags, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    if not private(os.fstat(fd)):
        os.close(fd)
        return None
    return fd


def read_record(situation: Situation) -> dict | None:
    """The record of ``situation`` if its files are as recorded, else None."""
    where = open_keeper_directory()
    if where is None:
        return None
    try:
        fd = os.open(situation.record_name(), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=where)
    except OSError:
        return None
    finally:
        os.close(where)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        record = loads(os.read(fd, RECORD_MAX).decode("utf-8", "surrogateescape"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict) or record.get("version") != VERSION or record.get(
            "cwd") != situation.cwd or record.get("files") != situation.files:
        return None
    return record if RECORD_KEYS <= record.keys() else None


# -- the thin path ----------------------------------------------------------------------

def _doubtful(words: list[str], record: dict) -> bool:
    """Whether the full path may treat ``words`` differently from a plain command: a pty,
    a laptop file (any word, or part after ``=`` or a short flag, that names something
    here), ``cp``, or a word over the kernel's limit. Erring this way only costs time."""
    if set(words) & set(record["pty_words"]) and _on_terminal():
        return True
    for word in words:
        if len(word.encode("utf-8", "surrogateescape")) > record["arg_max"]:
            return True
        if record["laptop_files"] and _names_a_laptop_path(word):
            return True
    return False


def _names_a_laptop_path(word: str) -> bool:
    if word == "cp":
        return True
    candidates = {word, *word.split("=")[1:]}
    if word.startswith("-") and not word.startswith("--"):
        candidates.add(word[2:])
    for candidate in candidates - {"", "-"}:
        try:
            os.lstat(candidate)
            return True
        except (OSError, ValueError):
            pass
    return False


def _on_terminal() -> bool:
    return os.isatty(0) and os.isatty(1)


def _stdin_fd() -> int | None:
    """Our stdin for the command, as the full path decides: none if it is closed, a
    terminal or /dev/null."""
    try:
        if os.isatty(0) or os.path.samestat(os.fstat(0), os.stat(os.devnull)):
            return None
    except OSError:
        return None
    return 0


class _Interrupt(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, _frame: object) -> None:
    raise _Interrupt(signum)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class KeeperCall:
    """One command through a keeper, on the keeper protocol of dapfab.keeper.wire (a length
    header, a JSON head, descriptors passed alongside)."""

    def __init__(self, record: dict) -> None:
        self.record = record
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.buffer = b""
        self.pid: int | None = None
        self.heard = time.monotonic()  # when the keeper last said something

    def send(self, message: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        head = dumps(message).encode()
        data = len(head).to_bytes(4, "big") + (0).to_bytes(4, "big") + head
        if fds:
            rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
            sent = self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def receive(self, timeout: float | None) -> dict | None:
        """The next message; None after ``timeout`` seconds; OSError at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 8:
                size = int.from_bytes(self.buffer[:4], "big")
                end = 8 + size + int.from_bytes(self.buffer[4:8], "big")
                if size > RECORD_MAX or end > 2 * RECORD_MAX:
                    raise OSError("message too large")
                if len(self.buffer) >= end:
                    message = loads(self.buffer[8:8 + size].decode())
                    self.buffer = self.buffer[end:]
                    if not isinstance(message, dict):
                        raise OSError("not a message")
                    return message
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            if not data:
                raise OSError("the keeper closed the connection")
            self.buffer += data

    def start(self, request: dict, fds: list[int]) -> bool:
        """Connect, say hello, hand ``request`` (``run`` or ``curl``, the record's config
        added) over: True once the keeper has it (it runs it from here on), False if it
        never will."""
        record = self.record
        try:
            self._connect()
            peer = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
                return False
            self.pid = int.from_bytes(peer[:4], sys.byteorder) or None
            self.send({"op": "hello"})
            if (self.receive(record["hello_wait"]) or {}).get("op") != "hello":
                return False
            self.send({**request, "config": record["config"]}, fds)
            if (self.receive(record["hello_wait"]) or {}).get("op") != "accepted":
                return False
            self.send({"op": "go"})
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def _connect(self) -> None:
        """Connect to the record's keeper; when none listens, start one (the keeper is
        where a connection is made: this call need not wait for Invoke to make its own)
        and wait until it listens, or OSError if it exits first or takes too long."""
        try:
            self.sock.connect(self.record["socket"])
            return
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        child = spawn_keeper(self.record["digest"], dumps(self.record["config"]).encode())
        deadline = time.monotonic() + self.record["start_wait"]
        while True:
            time.sleep(0.005)
            try:
                self.sock.connect(self.record["socket"])
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if child:
                done, status = os.waitpid(child, os.WNOHANG)
                if done and os.waitstatus_to_exitcode(status) != 0:
                    raise OSError("the keeper did not start")
                if done:  # exit 0: another keeper serves (it waited for a stopping one)
                    child = 0
            if time.monotonic() > deadline:
                raise OSError("no keeper listens")

    def follow(self) -> dict:
        """Heartbeat until the outcome; stop the command on SIGINT/SIGTERM (re-raised),
        pause it on Ctrl-Z."""
        interval, timeout = self.record["heartbeat"]
        self.heard = sent = time.monotonic()
        previous = _signal.signal(_signal.SIGTSTP, self._suspend)
        try:
            while True:
                try:
                    message = self.receive(min(interval, 0.5))
                except (OSError, ValueError):
                    return self.lost("ended during the command")
                now = time.monotonic()
                if message is not None:
                    self.heard = now
                    if message.get("op") in ("exit", "error"):
                        return message
                if now - sent >= interval:
                    try:
                        self.send({"op": "h"})
                    except OSError:
                        return self.lost("ended during the command")
                    sent = now
                if now - self.heard > timeout:
                    if self.pid:  # ours: SO_PEERCRED said so
                        try:
                            os.kill(self.pid, _signal.SIGKILL)
                        except OSError:
                            pass
                    return self.lost(f"stopped answering for {timeout} s; killed it")
        except _Interrupt:
            self.quit()
            raise
        finally:
            _signal.signal(_signal.SIGTSTP, previous)

    def _suspend(self, _signum: int, _frame: object) -> None:
        """Ctrl-Z: the keeper pauses the command (and does not count our silence)."""
        try:
            self.send({"op": "pause"})
        except OSError:
            pass
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)  # stops here until SIGCONT
        _signal.signal(_signal.SIGTSTP, self._suspend)
        self.heard = time.monotonic()  # the keeper was not silent: we were stopped
        try:
            self.send({"op": "resume"})
        except OSError:
            pass

    def quit(self) -> None:
        """Interrupted: the keeper stops the command; wait until it says it is gone."""
        deadline = time.monotonic() + self.record["quit_wait"]
        try:
            self.send({"op": "quit"})
            while (left := deadline - time.monotonic()) > 0:
                got = self.receive(left)
                if got is None or got.get("op") in ("exit", "error"):
                    return
        except (OSError, ValueError):
            pass

    def lost(self, what: str) -> dict:
        pid = f" (pid {self.pid})" if self.pid else ""
        line = self.record["lines"]["keeper_lost"].replace("{pid}", pid).replace("{what}", what)
        return {"op": "error", "line": line, "exit_code": 255}

    def close(self) -> None:
        self.sock.close()


def run(words: list[str], record: dict) -> int | None:
    """Run kubectl ``words`` through the record's keeper: the exit code, or None if the
    keeper did not take the command (nothing ran)."""
    command = record["prefix"] + "".join(" " + quote(word) for word in words)
    stdin = _stdin_fd()
    request = {"op": "run", "command": command, "stdin": None if stdin is None else "fd"}
    outcome = _through_keeper(record, request, [1, 2] if stdin is None else [1, 2, stdin])
    if outcome is None:
        return None
    if outcome.get("op") == "exit":
        code = int(outcome["code"])
        if code == 127 and not _kubectl_present(record):
            _say(record["lines"]["kubectl_missing"])
        return code
    return _failed(outcome)


def curl(url: str, record: dict) -> int | None:
    """``k8s.curl URL`` through the record's keeper, which prints what the task prints: the
    exit code, or None if the keeper did not take the request (nothing ran)."""
    outcome = _through_keeper(record, {"op": "curl", "url": url}, [1, 2])
    if outcome is None:
        return None
    if outcome.get("op") == "exit":
        return int(outcome["code"])
    return _failed(outcome)


def _through_keeper(record: dict, request: dict, fds: list[int]) -> dict | None:
    """Hand ``request`` to the record's keeper and follow it to its outcome (None: the
    keeper did not take it)."""
    call = KeeperCall(record)
    try:
        if not call.start(request, fds):
            return None
        return call.follow()
    finally:
        call.close()


def _failed(outcome: dict) -> int:
    """Say an error outcome's line as the full path would; its exit code."""
    code = int(outcome.get("exit_code") or 255)
    if code != 141:  # a reader that went away: silent, as a pipeline member's SIGPIPE
        _say(str(outcome.get("line") or f"dapfab: {outcome.get('message')}"))
    return code


def _kubectl_present(record: dict) -> bool:
    """Whether the VM's login shell finds kubectl, asked through the keeper."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        outcome = _through_keeper(
            record, {"op": "run", "command": record["lookup"], "stdin": None}, [null, null])
    finally:
        os.close(null)
    if outcome is None:
        return True  # cannot tell: say nothing rather than something wrong
    return outcome.get("op") != "exit" or outcome.get("code") == 0


def full(argv: list[str]) -> None:
    """Replace this process with the full program (``-X`` options passed on)."""
    options = [f"-X{name}" if value is True else f"-X{name}={value}"
               for name, value in sys._xoptions.items()]
    os.execv(sys.executable, [sys.executable, *options, "-P", "-c", FULL, *argv])


def main(argv: list[str]) -> int:
    """``dap ARGV``: the thin path if it can take the call, else the full program."""
    previous = {signum: _signal.signal(signum, _raise) for signum in SIGNAL_EXIT}
    try:
        words, url = shape(argv), curl_url(argv)
        record = None if words is None and url is None else read_record(Situation())
        if record is None:
            code = None
        elif url is not None:
            code = curl(url, record)
        else:
            code = None if _doubtful(words, record) else run(words, record)
    except _Interrupt as stop:
        _say(f"dapfab: laptop: interrupted by {SIGNAL_NAMES[stop.signum]}")
        return SIGNAL_EXIT[stop.signum]
    for signum, handler in previous.items():
        _signal.signal(signum, handler)
    if code is None:
        full(argv)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
