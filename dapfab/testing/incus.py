"""The lab's ``incus`` program: the part of the real CLI dapfab uses, on mgmt's PATH only.

The lab copies this file to mgmt with a ``#!/usr/bin/python3 -I`` line and the path of its
instance table filled in; it imports nothing from dapfab and keeps its start-up small, since
it runs once per dapfab command.

``incus [--project P] exec [remote:]NAME [--env K=V]... [--cwd DIR] [-t|-T|-n] -- CMD...``
runs CMD in the runner's namespaces (net, mount, pid, uts) as root, with the runner's HOME
and an environment like the real one's. Process lifetimes follow a real LXD 5.0 ``lxc exec``:

- the client (this process) relays stdin/stdout/stderr; the exit code is the command's
  (128+N when it died of signal N); stdin EOF reaches the command;
- TERM, INT, QUIT, USR1, USR2 and HUP (sent on as TERM without a pty) received by the client
  are sent to the top process only, never to its process group;
- a separate "server" process (the monitor, in its own session, like the daemon's exec
  handler) is the parent of the top process; when the client dies or its control pipe
  closes it SIGKILLs the top process and nothing else, so children of a shell that stayed
  their parent survive, adopted by the runner's PID 1;
- closing an SSH channel signals nothing: the client sees stdin EOF and carries on; only a
  write to its closed stdout kills it (by SIGPIPE, as a Go client dies).

The instance table is one line per instance: ``name project state init-pid ipv4``.
"""

import _signal as signal  # the C module: no enum import, a faster start
import os
import sys

# Other modules are imported on the paths that need them: this starts for every `incus exec`.

INSTANCES_FILE = ""  # filled in by the lab when it installs the program
VERSION = "6.0.0"
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGHUP")
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x20000000, 0x40000000


class Fail(Exception):
    """An error the real CLI reports as ``Error: <text>`` with exit code 1."""


def main(argv: list[str]) -> int:
    """Run one incus command line; return its exit code."""
    try:
        return dispatch(argv)
    except Fail as err:
        sys.stderr.write(f"Error: {err}\n")
        return 1


def dispatch(argv: list[str]) -> int:
    project = "default"
    rest: list[str] = []
    words = iter(argv)
    for word in words:  # global flags may come anywhere before "--"
        if word == "--":
            rest.append(word)
            rest.extend(words)
            break
        if word == "--project":
            project = next(words, None) or _missing("project")
        elif word.startswith("--project="):
            project = word.split("=", 1)[1]
        elif word in ("-q", "--quiet", "--force-local", "--debug", "-v", "--verbose"):
            pass
        elif word == "--version":
            print(VERSION)
            return 0
        else:
            rest.append(word)
    if not rest or rest[0] in ("-h", "--help", "help"):
        print("Usage:\n  incus [command]\n\nAvailable Commands:\n  exec, info, list, version")
        return 0
    command, args = rest[0], rest[1:]
    if command == "exec":
        return exec_command(project, args)
    if command in ("list", "ls"):
        return list_command(project, args)
    if command == "info":
        return info_command(project, args)
    if command == "version":
        print(f"Client version: {VERSION}\nServer version: {VERSION}")
        return 0
    if command.startswith("-"):
        raise Fail(_unknown_flag(command))
    raise Fail(f'unknown command "{command}" for "incus"\nRun \'incus --help\' for usage.')


def _missing(flag: str) -> str:
    raise Fail(f"flag needs an argument: --{flag}")


def _unknown_flag(word: str) -> str:
    if word.startswith("--"):
        return f"unknown flag: {word.split('=', 1)[0]}"
    return f"unknown shorthand flag: '{word[1:2]}' in {word}"


def instances() -> dict[tuple[str, str], list[str]]:
    """The instance table: (project, name) -> [state, init pid, ipv4]."""
    table = {}
    try:
        with open(INSTANCES_FILE) as lines:
            for line in lines:
                fields = line.split()
                if len(fields) == 5:
                    table[(fields[1], fields[0])] = fields[2:]
    except FileNotFoundError:
        pass
    return table


def lookup(project: str, name: str) -> tuple[str, list[str]]:
    """Resolve ``[remote:]NAME``; raise the real CLI's errors for unknown ones."""
    if ":" in name:
        remote, name = name.split(":", 1)
        if remote not in ("local", ""):
            raise Fail(f'The remote "{remote}" doesn\'t exist')
    entry = instances().get((project, name))
    if entry is None:
        raise Fail(f'Failed to fetch instance "{name}" in project "{project}": Instance not found')
    state, pid = entry[0], entry[1]
    if state == "RUNNING" and not os.path.exists(f"/proc/{pid}/ns/pid"):
        entry[0] = "STOPPED"
    return name, entry


def list_command(project: str, args: list[str]) -> int:
    """``incus list [NAME] [--format table|csv|json|compact] [-c COLUMNS]``."""
    fmt, columns, names = "table", "ns46tS", []
    words = iter(args)
    for word in words:
        if word in ("--format", "-f"):
            fmt = next(words, None) or _missing("format")
        elif word.startswith("--format="):
            fmt = word.split("=", 1)[1]
        elif word in ("-c", "--columns"):
            columns = next(words, None) or _missing("columns")
        elif word.startswith("--columns="):
            columns = word.split("=", 1)[1]
        elif word.startswith("-"):
            raise Fail(_unknown_flag(word))
        else:
            names.append(word.split(":", 1)[-1])
    titles = {"n": "NAME", "s": "STATE", "4": "IPV4", "6": "IPV6", "t": "TYPE", "S": "SNAPSHOTS"}
    rows = []
    for (proj, name), _ in sorted(instances().items()):
        if proj != project or (names and not any(name.startswith(n) for n in names)):
            continue
        name, (state, _pid, ipv4) = lookup(project, name)
        values = {
            "n": name,
            "s": state,
            "4": f"{ipv4} (eth0)" if state == "RUNNING" else "",
            "6": "",
            "t": "VIRTUAL-MACHINE",
            "S": "0",
        }
        rows.append([values.get(c, "") for c in columns])
    heads = [titles.get(c, c) for c in columns]
    if fmt == "csv":
        for row in rows:
            print(",".join(row))
    elif fmt == "json":
        import json

        print(json.dumps([{"name": r[0] if columns[:1] == "n" else None, "status": _title(r, columns),
                           "project": project, "type": "virtual-machine"} for r in rows]))
    elif fmt in ("table", "compact"):
        widths = [max(len(x) for x in col) for col in zip(heads, *rows, strict=False)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        def show(row: list[str]) -> str:
            return "|" + "|".join(f" {x.center(w)} " for x, w in zip(row, widths, strict=False)) + "|"
        print("\n".join([line, show(heads), line, *(show(r) for r in rows), line] if rows else
                        [line, show(heads), line]))
    else:
        raise Fail(f'Invalid format "{fmt}"')
    return 0


def _title(row: list[str], columns: str) -> str:
    return row[columns.index("s")].title() if "s" in columns else ""


def info_command(project: str, args: list[str]) -> int:
    """``incus info NAME``: the lines a doctor looks at."""
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1:
        raise Fail("Invalid number of arguments")
    name, (state, pid, ipv4) = lookup(project, names[0])
    lines = [f"Name: {name}", f"Status: {state}", "Type: virtual-machine",
             f"Architecture: {os.uname().machine}"]
    if state == "RUNNING":
        lines += [f"PID: {pid}", "Resources:", "  Network usage:", "    eth0:",
                  "      Type: broadcast", "      State: UP", "      IP addresses:",
                  f"        inet:  {ipv4}/24 (global)"]
    print("\n".join(lines))
    return 0


def exec_command(project: str, args: list[str]) -> int:
    """``incus exec [remote:]NAME [flags] [--] CMD...``: flags may come before or after NAME."""
    env = {"PATH": ENV_PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8"}
    extra_env: dict[str, str] = {}
    cwd, mode, stdin_null, uid, gid = None, "auto", False, 0, 0
    positional: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            positional.extend(words)
            break
        name, eq, value = word.partition("=")
        takes = name in ("--env", "--cwd", "--mode", "--user", "--group")
        if takes and not eq:
            value = next(words, None)
            if value is None:
                raise Fail(f"flag needs an argument: {name}")
        if name == "--env":
            key, _, val = value.partition("=")
            extra_env[key] = val
        elif name == "--cwd":
            cwd = value
        elif name == "--mode":
            if value not in ("auto", "interactive", "non-interactive"):
                raise Fail(f'Invalid --mode "{value}"')
            mode = value
        elif name == "--user":
            uid = int(value)
        elif name == "--group":
            gid = int(value)
        elif word in ("-t", "--force-interactive"):
            mode = "interactive"
        elif word in ("-T", "--force-noninteractive"):
            mode = "non-interactive"
        elif word in ("-n", "--disable-stdin"):
            stdin_null = True
        elif word.startswith("-") and len(word) > 1:
            raise Fail(_unknown_flag(word))
        else:
            positional.append(word)
    if len(positional) < 2:
        raise Fail("Invalid number of arguments")
    name, (state, pid, _ipv4) = lookup(project, positional[0])
    if state != "RUNNING":
        raise Fail("Instance is not running")
    interactive = mode == "interactive" or (
        mode == "auto" and os.isatty(0) and os.isatty(1) and not stdin_null)
    if interactive and "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    env.update(extra_env)
    return Session(int(pid), positional[1:], env, cwd, uid, gid, interactive, stdin_null).run()


# The server turns these exit codes of the top process into errors, which the client prints
# after the command's output (Incus and LXD alike: `lxcCmd.Wait`); the exit code stays.
EXIT_ERRORS = {127: "Command not found", 126: "Command not executable"}


class Session:
    """One ``exec``: this process relays the streams; a monitor process owns the command."""

    def __init__(self, init_pid: int, argv: list[str], env: dict[str, str], cwd: str | None,
                 uid: int, gid: int, interactive: bool, stdin_null: bool) -> None:
        self.init_pid, self.argv, self.env, self.cwd = init_pid, argv, env, cwd
        self.uid, self.gid = uid, gid
        self.interactive, self.stdin_null = interactive, stdin_null

    def run(self) -> int:
        namespaces = []
        for kind, flag in (("pid", CLONE_NEWPID), ("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET),
                           ("uts", CLONE_NEWUTS)):
            try:
                namespaces.append((os.open(f"/proc/{self.init_pid}/ns/{kind}", os.O_RDONLY), flag))
            except OSError:
                raise Fail("Instance is not running") from None
        # The control channel: signals go to the monitor, the exit status comes back; the
        # monitor reads EOF when the client dies (its "connection drops").
        signals_r, signals_w = os.pipe()
        status_r, status_w = os.pipe()
        if self.interactive:
            master, slave = os.openpty()
            child_fds = (os.open(os.devnull, os.O_RDONLY) if self.stdin_null else slave, slave, slave)
            ours = {"in": master, "out": master, "err": None}
            copy_winsize(master)
        else:
            stdin_r, stdin_w = os.pipe() if not self.stdin_null else (os.open(os.devnull, os.O_RDONLY), None)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            child_fds = (stdin_r, out_w, err_w)
            ours = {"in": stdin_w, "out": out_r, "err": err_r}
        if os.fork() == 0:  # the monitor: the server's side of the exec
            code = 1
            try:
                for fd in {fd for fd in ours.values() if fd is not None} | {signals_w, status_r}:
                    os.close(fd)
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for target in (0, 1, 2):  # hold none of the client's streams (an SSH channel)
                    os.dup2(null, target)
                code = Monitor(signals_r, status_w, namespaces, child_fds, self).run()
            finally:
                os._exit(code)
        for fd in set(child_fds) | {signals_r, status_w}:
            os.close(fd)
        for fd, _ in namespaces:
            os.close(fd)
        return Relay(signals_w, status_r, ours, self.interactive, self.stdin_null).run()


def copy_winsize(master: int) -> None:
    """Give the pty the client's window size."""
    import fcntl
    import termios

    for fd in (0, 1):
        try:
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return
        except OSError:
            continue


class Monitor:
    """Parent of the top process: forwards signals to it, reports its exit, kills it alone."""

    def __init__(self, signals_r: int, status_w: int, namespaces, child_fds, session: Session) -> None:
        self.signals_r, self.status_w = signals_r, status_w
        self.namespaces, self.child_fds, self.session = namespaces, child_fds, session

    def run(self) -> int:
        import ctypes
        import select

        setns = ctypes.CDLL(None, use_errno=True).setns
        if setns(self.namespaces[0][0], CLONE_NEWPID) != 0:
            return 1
        err_r, err_w = os.pipe()  # an exec failure of the child comes back on it
        top = os.fork()
        if top == 0:
            self._child(setns, err_w)
        os.close(err_w)
        for fd in set(self.child_fds):
            os.close(fd)
        failure = os.read(err_r, 4096)
        os.close(err_r)
        pidfd = os.pidfd_open(top)
        poller = select.poll()
        poller.register(self.signals_r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if pidfd in ready:
                _, status = os.waitpid(top, 0)
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                if failure:
                    number, _, text = failure.partition(b" ")
                    code = int(number)
                    if code not in EXIT_ERRORS:  # those say only what EXIT_ERRORS says
                        self._send(b"E" + text.replace(b"\n", b" ") + b"\n")
                self._send(b"X%d\n" % code)
                return 0
            messages = os.read(self.signals_r, 4096)
            if not messages:  # the client died or its connection dropped
                os.kill(top, signal.SIGKILL)
                os.waitpid(top, 0)
                return 0
            for message in messages.split(b"\n"):
                if message[:1] == b"S":
                    try:
                        os.kill(top, int(message[1:]))
                    except ProcessLookupError:
                        pass

    def _send(self, data: bytes) -> None:
        try:
            os.write(self.status_w, data)
        except OSError:
            pass

    def _child(self, setns, err_w: int) -> None:
        session = self.session
        try:
            for fd, flag in self.namespaces[1:]:
                if setns(fd, flag) != 0:
                    import ctypes

                    raise OSError(ctypes.get_errno(), "setns")
            os.setsid()
            if session.interactive:
                import fcntl
                import termios

                fcntl.ioctl(self.child_fds[1], termios.TIOCSCTTY, 0)
            for target, fd in enumerate(self.child_fds):
                os.dup2(fd, target)
            os.closerange(3, err_w)
            os.closerange(err_w + 1, 65536)
            for name in FORWARDED + ("SIGPIPE", "SIGXFSZ"):  # Python ignores PIPE and XFSZ
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            if session.gid:
                os.setgid(session.gid)
            if session.uid:
                os.setuid(session.uid)
            cwd = session.cwd or session.env.get("HOME", "/root")
            try:
                os.chdir(cwd)
            except OSError as err:
                os.write(err_w, b"1 chdir %s: %s" % (cwd.encode(), err.strerror.encode()))
                os._exit(1)
            try:
                os.execvpe(session.argv[0], session.argv, session.env)
            except OSError as err:
                code = 127 if isinstance(err, FileNotFoundError) else 126
                os.write(err_w, b"%d %s" % (code, str(err).encode()))
        finally:
            os._exit(127)


class Relay:
    """The client side: copies the streams and sends the client's signals on to the monitor."""

    def __init__(self, signals_w: int, status_r: int, fds: dict, interactive: bool,
                 stdin_null: bool) -> None:
        self.signals_w, self.status_r, self.fds = signals_w, status_r, fds
        self.interactive = interactive
        self.stdin_open = not stdin_null
        self.pending = b""
        self.watched: dict[int, tuple[int, object]] = {}

    def _signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP and not self.interactive:
            signum = signal.SIGTERM
        try:
            os.write(self.signals_w, b"S%d\n" % signum)
        except OSError:
            pass

    def run(self) -> int:
        import select

        self.poller = select.poll()  # poll, unlike epoll, takes regular files too
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for name in FORWARDED:
            signal.signal(getattr(signal, name), self._signal)
        saved = None
        if self.interactive:
            signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(self.fds["out"]))
            if os.isatty(0):
                import termios
                import tty

                saved = termios.tcgetattr(0)
                tty.setraw(0)
        try:
            return self._loop()
        finally:
            if saved is not None:
                import termios

                termios.tcsetattr(0, termios.TCSADRAIN, saved)

    def _watch(self, fd: int, mask: int, what: object) -> None:
        self.poller.register(fd, mask)
        self.watched[fd] = (mask, what)

    def _unwatch(self, fd: int) -> None:
        if fd in self.watched:
            self.poller.unregister(fd)
            del self.watched[fd]

    def _loop(self) -> int:
        cmd_in = self.fds["in"]
        if cmd_in is not None:
            os.set_blocking(cmd_in, False)
        if self.stdin_open and cmd_in is not None:
            self._watch(0, 1, "stdin")
        else:
            self.stdin_open = False
            if cmd_in is not None and not self.interactive:
                os.close(cmd_in)
                self.fds["in"] = None
        for key, target in (("out", 1), ("err", 2)):
            if self.fds[key] is not None:
                self._watch(self.fds[key], 1, target)
        self._watch(self.status_r, 1, "status")
        buffer = b""
        exited: int | None = None
        while True:
            if exited is not None and not any(
                    self.fds[key] in self.watched for key in ("out", "err") if self.fds[key] is not None):
                return self._exited(exited)
            for fd, _events in self.poller.poll():
                mask, what = self.watched.get(fd, (0, None))
                if what == "status":
                    data = os.read(self.status_r, 4096)
                    if not data:
                        sys.stderr.write("Error: websocket: close 1006 (abnormal closure)\n")
                        return 1
                    buffer += data
                    while b"\n" in buffer:
                        message, buffer = buffer.split(b"\n", 1)
                        if message[:1] == b"E":
                            self._drain()
                            sys.stderr.write(message[1:].decode(errors="replace") + "\n")
                        elif message[:1] == b"X":
                            if self.interactive:
                                self._drain()
                                return self._exited(int(message[1:]))
                            # Without a pty the server mirrors the command's stdout and
                            # stderr until their last writer closes them (LXD 5.0, measured;
                            # Incus's exec wrapper ends early on a pty's EIO only): a
                            # background child holding them keeps the client waiting.
                            exited = int(message[1:])
                            self._unwatch(self.status_r)
                elif what == "stdin":
                    if mask & 4:
                        self._flush_stdin()
                    else:
                        self._read_stdin()
                elif what is not None:
                    self._copy(fd, what)

    @staticmethod
    def _exited(code: int) -> int:
        if code in EXIT_ERRORS:
            sys.stderr.write(f"Error: {EXIT_ERRORS[code]}\n")
        return code

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            self._unwatch(0)
            self.stdin_open = False
            if not self.interactive:
                self._close_stdin()
            return
        if self.interactive:  # a pty takes what it is given
            try:
                self._write(self.fds["in"], data)
            except OSError:  # EIO: the command is gone
                pass
            return
        self.pending = data
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        cmd_in = self.fds["in"]
        try:
            written = os.write(cmd_in, self.pending)
        except BlockingIOError:
            written = 0
        except OSError:  # the command closed its stdin: drop what is left, like the server
            written = len(self.pending)
        self.pending = self.pending[written:]
        if self.pending:  # wait until the command reads, without reading more stdin
            self._unwatch(0)
            if cmd_in not in self.watched:
                self._watch(cmd_in, 4, "stdin")
            return
        self._unwatch(cmd_in)
        if self.stdin_open:
            if 0 not in self.watched:
                self._watch(0, 1, "stdin")
        elif not self.interactive:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if not self.pending and self.fds["in"] is not None:
            os.close(self.fds["in"])
            self.fds["in"] = None

    def _copy(self, fd: int, target: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's last slave closed
            data = b""
        if not data:
            self._unwatch(fd)
            return
        self._write(target, data)

    def _drain(self) -> None:
        """Copy what the command wrote before it exited; do not wait for its children."""
        for key, target in (("out", 1), ("err", 2)):
            fd = self.fds[key]
            if fd is None or fd not in self.watched:
                continue
            os.set_blocking(fd, False)
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                self._write(target, data)

    @staticmethod
    def _write(target: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(target, view):]
            except BrokenPipeError:  # like a Go client writing to a closed stdout
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGPIPE)
            except BlockingIOError:
                import select

                select.select([], [target], [])


if __name__ == "__main__":
    sys.argv[0] = "incus"
    sys.exit(main(sys.argv[1:]))
