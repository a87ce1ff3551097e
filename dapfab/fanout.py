"""One command over many runners at once (docs/design.md §13): :func:`run_in_runners` and
:func:`kubectl_in_runners`, as Fabric's ``ThreadingGroup`` and Ansible's forks do.

Each runner's output is printed line by line, every line whole and prefixed with the
runner's name (``[prod-eu] ...``) on the stream it came on; a last line without a newline
is printed whole too (with a newline added, so that the next runner's line starts on a line
of its own), and a line over :data:`LINE_BOUND` in prefixed pieces. After the prefix the
bytes are unchanged, UTF-8 or not, except on a terminal, where control characters are shown
escaped (:func:`escaped`). stdin that is not a terminal or ``/dev/null`` is read as it
arrives and fed to every runner (the slowest sets the pace). One runner's failure never
stops the others.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from dapfab import laptopfiles
from dapfab.calls import run_command
from dapfab.commands import kubectl_argv, kubectl_command
from dapfab.config import DEFAULTS
from dapfab.errors import DapError, shown
from dapfab.streams import caller_stdin, hide_flags, read_chunk

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig
    from dapfab.result import Result

DEFAULT_PARALLEL: int = DEFAULTS["fanout"]["parallel"]


@dataclass
class RunnerOutcome:
    """What one runner of a fan-out left: its result (a Result, or a curl Response) and
    exit code, or the error of the hop that broke."""

    name: str
    result: Any
    error: DapError | None
    seconds: float
    code: int = 0

    @property
    def exited(self) -> int:
        """The command's exit code, or the failed hop's (docs/design.md §5)."""
        return self.error.exit_code if self.error is not None else self.code

    @property
    def succeeded(self) -> bool:
        """Whether the command ran and exited 0."""
        return self.error is None and self.code == 0

    @property
    def failed(self) -> bool:
        """A non-zero exit or a failed hop."""
        return not self.succeeded

    def summary(self) -> str:
        """``[name] exit N in S s`` and, for a failed hop, its one-line error."""
        line = f"[{self.name}] exit {self.exited} in {self.seconds:.2f} s"
        if self.error is not None:
            line += f": {self.error}"
        return line


class FanOutError(DapError):
    """Raised (without ``warn``) when any runner failed; ``results`` holds every runner's
    outcome, and the exit code is that of the first runner, in the order given, that failed.

    Unlike Fabric's ``GroupException``, a connection error is one runner's outcome like any
    other: with ``warn=True`` nothing is raised at all.
    """

    hop = "fan-out"

    def __init__(self, results: dict[str, RunnerOutcome]) -> None:
        failed = [outcome for outcome in results.values() if outcome.failed]
        names = ", ".join(outcome.name for outcome in failed)
        super().__init__(f"{len(failed)} of {len(results)} runners failed ({names})",
                         exit_code=exit_code(results) or 1)
        self.results = results


LINE_BOUND = 1 << 20  # bytes: a longer line is printed in pieces of at most this many


class _LinePrinter:
    """Writes one runner's stream to ``target``, whole prefixed lines at a time, in time
    linear in the output. A line ends at ``\\n``; one longer than ``bound`` bytes is printed
    in prefixed pieces of at most ``bound`` bytes (cut between UTF-8 characters), each with a
    newline added, so memory stays bounded and the other runners' lines go on in between.
    With ``escape`` (the target is a terminal) control characters after the prefix are shown
    escaped (:func:`escaped`)."""

    def __init__(self, prefix: bytes, target: IO[Any], lock: threading.Lock, *,
                 escape: bool = False, bound: int = LINE_BOUND) -> None:
        self.prefix = prefix
        self.target = getattr(target, "buffer", target)
        self.lock = lock
        self.escape = escape
        self.bound = bound
        self.pending = bytearray()  # the line begun, at most ``bound`` bytes between writes

    def write(self, data: bytes) -> int:
        """Take output; print every line it completes and every whole piece of a line
        over the bound; the number of bytes taken."""
        start = len(self.pending)
        self.pending += data
        out: list[bytes] = []
        end = self.pending.rfind(b"\n", start) + 1  # only the new bytes are searched
        if end:
            lines = bytes(self.pending[:end - 1]).split(b"\n")
            del self.pending[:end]
            for line in lines:
                self._pieces(line, out)
        while len(self.pending) > self.bound:
            cut = _cut(self.pending, self.bound)
            out.append(self._line(bytes(self.pending[:cut])))
            del self.pending[:cut]
        if out:
            self._emit(b"".join(out))
        return len(data)

    def flush(self) -> None:
        """Nothing to do until the end (see :meth:`close`)."""

    def close(self) -> None:
        """Print a last line that has no newline, whole, with one added."""
        if self.pending:
            self._emit(self._line(bytes(self.pending)))
            self.pending.clear()

    def _pieces(self, line: bytes, out: list[bytes]) -> None:
        while len(line) > self.bound:
            cut = _cut(line, self.bound)
            out.append(self._line(line[:cut]))
            line = line[cut:]
        out.append(self._line(line))

    def _line(self, content: bytes) -> bytes:
        return self.prefix + (escaped(content) if self.escape else content) + b"\n"

    def _emit(self, data: bytes) -> None:
        with self.lock:
            self.target.write(data)
            self.target.flush()


def _cut(data: bytes | bytearray, bound: int) -> int:
    """Where to cut ``data`` (longer than ``bound``) so that the first piece holds at most
    ``bound`` bytes and a UTF-8 character is not split (when the bytes are UTF-8)."""
    for cut in range(bound, max(bound - 4, 0), -1):
        if data[cut] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut
    return bound


def escaped(content: bytes) -> bytes:
    """One line of a runner's output as fan-out shows it on a terminal: control characters
    (C0 but tab, DEL, C1, also as raw bytes) and bidi overrides escaped by
    :func:`dapfab.errors.shown`, as in dapfab's own messages, so no runner can move the
    cursor or forge another runner's line; every other byte unchanged."""
    text = content.decode("utf-8", "surrogateescape")
    return "\t".join(shown(part) for part in text.split("\t")).encode("utf-8", "surrogateescape")


def _is_terminal(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


class _Feed:
    """The caller's stdin, read as it arrives and written to one pipe per runner."""

    def __init__(self, source: Any, count: int) -> None:
        self.source = source
        self.pipes = [os.pipe() for _ in range(count)]
        self.thread = threading.Thread(target=self._copy, name="dapfab-fanout-stdin", daemon=True)

    def reader(self, index: int) -> IO[bytes]:
        return os.fdopen(self.pipes[index][0], "rb", buffering=0)

    def start(self) -> None:
        self.thread.start()

    def _copy(self) -> None:
        writers = {index: write for index, (_, write) in enumerate(self.pipes)}
        try:
            while writers:
                chunk = read_chunk(self.source)
                if not chunk:
                    break
                for index, fd in list(writers.items()):
                    try:
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    except OSError:  # that runner is done reading: the others go on
                        os.close(fd)
                        del writers[index]
        finally:
            for fd in writers.values():
                os.close(fd)


Work = Callable[[str, int, threading.Event], "tuple[Any, int]"]


def fan_out(names: Sequence[str], work: Work, *, parallel: int = DEFAULT_PARALLEL) -> dict[str, RunnerOutcome]:
    """Run ``work(name, index, abort)`` (returning ``(result, exit code)``) for every name,
    at most ``parallel`` at once; an outcome per name, in order. A DapError is that
    runner's outcome; Ctrl-C or SIGTERM set ``abort``, wait for every started work to
    end (its remote command gone), and propagate."""
    abort = threading.Event()

    def one(index: int, name: str) -> RunnerOutcome:
        started = time.monotonic()
        try:
            result, code = work(name, index, abort)
            return RunnerOutcome(name, result, None, time.monotonic() - started, code)
        except DapError as error:
            return RunnerOutcome(name, None, error, time.monotonic() - started)

    outcomes: dict[str, RunnerOutcome] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, int(parallel)), thread_name_prefix="dapfab-fanout")
    futures = [pool.submit(one, index, name) for index, name in enumerate(names)]
    try:
        for name, future in zip(names, futures, strict=True):
            outcomes[name] = future.result()
    except BaseException:
        abort.set()  # every running command stops; the queued ones never start
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
    return outcomes


def printers(name: str, lock: threading.Lock, hide: Any = None, out_stream: IO[Any] | None = None,
             err_stream: IO[Any] | None = None) -> tuple[_LinePrinter | None, _LinePrinter | None]:
    """The prefixed stdout and stderr of runner ``name`` (None where ``hide`` hides it);
    each escapes control characters when its stream is a terminal."""
    hide_out, hide_err = hide_flags(hide)
    prefix = f"[{name}] ".encode()
    out, err = out_stream or sys.stdout, err_stream or sys.stderr
    return (None if hide_out else _LinePrinter(prefix, out, lock, escape=_is_terminal(out)),
            None if hide_err else _LinePrinter(prefix, err, lock, escape=_is_terminal(err)))


def run_in_runners(
    runners: Mapping[str, RunnerConfig],
    command: str | Mapping[str, str],
    *,
    parallel: int = DEFAULT_PARALLEL,
    warn: bool = False,
    hide: Any = None,
    in_stream: Any = None,
    timeout: float | None = None,
    out_stream: IO[Any] | None = None,
    err_stream: IO[Any] | None = None,
    stdin_prefix: bytes = b"",
) -> dict[str, RunnerOutcome]:
    """Run ``command`` (or ``command[name]`` per runner) on every runner of ``runners``
    (name -> RunnerConfig), at most ``parallel`` at a time; an outcome per name, in the
    order given (``.result`` is the :class:`~dapfab.result.Result`). Every runner's stdin
    starts with ``stdin_prefix`` (laptop files, docs/design.md §15).

    Without ``warn``, any failed runner (non-zero exit or a failed hop) raises
    :class:`FanOutError` carrying every outcome, once all are done. Ctrl-C or SIGTERM stop
    every remote command before Interrupted propagates.
    """
    names = list(runners)
    source = caller_stdin(in_stream)
    feed = _Feed(source, len(names)) if source is not None else None
    lock = threading.Lock()

    def work(name: str, index: int, abort: threading.Event) -> tuple[Result, int]:
        out, err = printers(name, lock, hide, out_stream, err_stream)
        code = command if isinstance(command, str) else command[name]
        stdin = feed.reader(index) if feed is not None else False
        given = laptopfiles.stdin_for(stdin_prefix, stdin or None) if stdin_prefix else stdin
        try:
            result = run_command(runners[name], code, hide=hide, in_stream=given, timeout=timeout,
                                 out_stream=out, err_stream=err, abort=abort)  # type: ignore[arg-type]
            return result, result.exited
        finally:
            for printer in (out, err):
                if printer is not None:
                    printer.close()
            if stdin:
                stdin.close()

    if feed is not None:
        # Every runner reads the same stream as it arrives: one not started yet would stall
        # the others once its pipe is full, so with stdin they all start at once.
        parallel = max(parallel, len(names))
        feed.start()
    outcomes = fan_out(names, work, parallel=parallel)
    if not warn and any(outcome.failed for outcome in outcomes.values()):
        raise FanOutError(outcomes)
    return outcomes


def kubectl_in_runners(
    runners: Mapping[str, RunnerConfig],
    args: Sequence[str],
    *,
    namespace: str | Mapping[str, str | None] | None = None,
    context: str | Mapping[str, str | None] | None = None,
    laptop_files: bool = True,
    **options: Any,
) -> dict[str, RunnerOutcome]:
    """:func:`run_in_runners` for ``kubectl ARGS``; ``namespace``/``context`` may be one
    value for all or a mapping per runner name. With ``laptop_files``, every runner gets
    the laptop files ARGS name (see :func:`dapfab.run.kubectl_in_runner`)."""
    def pick(value: Any, name: str) -> Any:
        return value.get(name) if isinstance(value, Mapping) else value

    files = laptopfiles.for_fan_out(args) if laptop_files else None
    if files is None or not files.needed:
        commands = {name: kubectl_command(args, namespace=pick(namespace, name),
                                          context=pick(context, name)) for name in runners}
        return run_in_runners(runners, commands, **options)
    data = laptopfiles.bundle(files)
    commands = {name: laptopfiles.runner_code(files, kubectl_argv(
        files.args, namespace=pick(namespace, name), context=pick(context, name)), len(data), "")
        for name in runners}
    return run_in_runners(runners, commands, stdin_prefix=data, **options)


def exit_code(outcomes: Mapping[str, RunnerOutcome]) -> int:
    """0 when every runner succeeded, else the exit code of the first one (in order) that
    did not."""
    for outcome in outcomes.values():
        if outcome.failed:
            return outcome.exited or 1
    return 0


__all__ = ["FanOutError", "RunnerOutcome", "exit_code", "fan_out", "kubectl_in_runners",
           "run_in_runners"]
