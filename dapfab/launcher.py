"""The remote launcher: the one place that knows how a command is laid out on the far side.

Every command dapfab runs in the VM goes through the same fixed program, started as::

    incus [--project P] exec VM -- unshare --pid --mount-proc --fork --kill-child -- bash -c BOOT dapfab

Only that line appears on the management host's process list; the user's command travels on
the channel's stdin, framed, and so does the user's stdin data:

    dapfab1 <n>\\n<n bytes of shell code>          once, first
    d <n>\\n<n bytes>                              stdin data for the command
    e\\n                                           end of the command's stdin
    h\\n                                           heartbeat: the caller is alive
    q\\n                                           the caller is done: kill everything now

BOOT is PID 1 of a fresh PID namespace. It prints :data:`STARTED` on stdout (so the laptop
can tell "the runner hop worked" from the command's own exit code), then runs the code with
``bash -lc`` (code over :data:`INLINE_MAX` characters is sourced by ``bash -lc`` from a
pipe, past the kernel's 128 KiB cap on one argument; never a here-string, which bash 5.2
writes to a temp file past 64 KiB) and feeds it the data frames. The command does not
inherit the frame stream (fd 3). When no frame arrives for
:data:`HEARTBEAT_TIMEOUT` seconds (frozen laptop, dropped link), when stdin ends (channel
closed) or on ``q``, every process in the namespace is killed. ``--kill-child`` ties the
namespace to ``unshare``: when the exec server SIGKILLs the top process, the tree goes too.

Commands whose whole stdin is known up front (none, or at most :data:`HELPER_STDIN_MAX`
bytes, as for ``runner_curl``) run on a persistent helper instead, to save one ``incus
exec`` per command: :data:`HELPER_BOOT`, started the same way, reads requests

    c <n> <m> <nonce>\n<n bytes of shell code><m bytes of stdin>

and runs each command in a PID namespace of its own (``unshare ... bash -lc``), between a
begin marker and end markers (:func:`begin_marker`, :func:`end_markers`) that carry the
nonce and the exit code. A helper runs one command at a time; between commands the pool
keeps its channel (one session) and keeps sending heartbeats. EOF, ``q`` or
:data:`HEARTBEAT_TIMEOUT` seconds of silence kill the helper's namespace, commands included.
"""

from __future__ import annotations

from dapfab.errors import RunnerError
from dapfab.quoting import join

MAGIC = b"dapfab1"
STARTED = b"\x00dapfab-started\n"
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TIMEOUT = 10
# Frames of stdin data are at most this large: one `head -c` in the VM per frame.
MAX_FRAME = 1 << 20

# Longer commands (in characters; at most 4 bytes each) do not go to `bash -lc` as one
# argument, which the kernel caps at 128 KiB (MAX_ARG_STRLEN): the login shell sources them
# from a here-string instead, so only each single argument of the final exec is capped.
INLINE_MAX = 30000

# Kept free of single quotes and of anything user-supplied: it is quoted once for the
# management host's shell and passed as one argv word through `incus exec`.
BOOT = r"""
IFS=' ' read -r magic n || exit 125
[ "$magic" = dapfab1 ] || exit 125
cmd=$(head -c "$n"; printf .) || exit 125
cmd=${cmd%.}
exec 3<&0 </dev/null
feed() {
  while IFS=' ' read -r -t __TIMEOUT__ kind n <&3; do
    case $kind in
      d) head -c "$n" <&3 || break ;;
      e) exec >&- ;;
      h) ;;
      *) break ;;
    esac
  done
  kill -KILL -1 2>/dev/null
}
printf '\0dapfab-started\n'
if [ ${#cmd} -lt __INLINE__ ]; then
  bash -lc "$cmd" < <(feed) 3<&- &
else
  bash -lc ". /dev/fd/4" 4< <(printf %s "$cmd") < <(feed) 3<&- &
fi
wait $! 2>/dev/null
""".replace("__TIMEOUT__", str(HEARTBEAT_TIMEOUT)).replace("__INLINE__", str(INLINE_MAX)).strip()


# The persistent helper: one per idle SSH channel, started like BOOT, that runs one command
# after another without a new `incus exec` each time (see the module docstring).
HELPER_STDIN_MAX = 48 << 10  # stdin sent with a command; fits an empty pipe, never blocks
HELPER_BOOT = r"""
exec 3<&0 </dev/null
run() {
  printf '\0dapfab-begin %s\n' "$2"
  if [ ${#1} -lt __INLINE__ ]; then
    unshare --pid --mount-proc --fork --kill-child -- bash -c "exec 5<&0; bash -lc \"\$1\" <&5 5<&- & wait \$!" dapfab "$1" 3<&-
  else
    unshare --pid --mount-proc --fork --kill-child -- bash -c "exec 5<&0; bash -lc \". /dev/fd/4\" <&5 5<&- & wait \$!" dapfab 4< <(printf %s "$1") 3<&-
  fi
  printf '\0dapfab-end %s %d\n' "$2" $?
  printf '\0dapfab-end %s\n' "$2" >&2
}
printf '\0dapfab-started\n'
while IFS=' ' read -r -t __TIMEOUT__ kind n m nonce <&3; do
  case $kind in
    c)
      cmd=$(head -c "$n" <&3; printf .) || break
      cmd=${cmd%.}
      if [ "$m" -gt 0 ]; then
        head -c "$m" <&3 > >(run "$cmd" "$nonce"; cat >/dev/null) || break
      else
        run "$cmd" "$nonce" </dev/null &
      fi ;;
    h) ;;
    *) break ;;
  esac
done
kill -KILL -1 2>/dev/null
""".replace("__TIMEOUT__", str(HEARTBEAT_TIMEOUT)).replace("__INLINE__", str(INLINE_MAX)).strip()


def request_frame(code: str, stdin: bytes, nonce: str) -> bytes:
    """A helper request: run ``code`` with ``stdin`` (at most :data:`HELPER_STDIN_MAX` bytes)."""
    data = code.encode("utf-8", "surrogateescape")
    return b"c %d %d %s\n" % (len(data), len(stdin), nonce.encode()) + data + stdin


def begin_marker(nonce: str) -> bytes:
    """What the helper prints on stdout just before it starts a command."""
    return b"\0dapfab-begin " + nonce.encode() + b"\n"


def end_markers(nonce: str) -> tuple[bytes, bytes]:
    """What the helper prints after a command: on stdout (followed by the exit code and a
    newline) and on stderr (complete)."""
    mark = b"\0dapfab-end " + nonce.encode()
    return mark + b" ", mark + b"\n"


def vm_argv(pty: bool = False) -> list[str]:
    """The argv that ``incus exec`` runs in the VM for every dapfab command."""
    return ["unshare", "--pid", "--mount-proc", "--fork", "--kill-child", "--", "bash", "-c", BOOT, "dapfab"]


def launch_command(
    incus: str, vm_name: str, project: str | None, *, pty: bool = False, helper: bool = False
) -> str:
    """The command line sent to the management host: the incus invocation and nothing else."""
    words = [incus]
    if project:
        words += ["--project", project]
    words += ["exec", vm_name]
    if pty:
        words.append("-t")
    words.append("--")
    argv = vm_argv(pty)
    if helper:
        argv[-2:] = [HELPER_BOOT, "dapfab-helper"]
    return join(words) + " " + join(argv)


def command_frame(code: str) -> bytes:
    """The first frame: the shell code the VM runs with ``bash -lc``."""
    data = code.encode("utf-8", "surrogateescape")
    return MAGIC + b" %d\n" % len(data) + data


def data_frame(chunk: bytes) -> bytes:
    """One frame of stdin data for the command."""
    return b"d %d\n" % len(chunk) + chunk


def runner_failure(exit_code: int, stderr: bytes, *, incus: str, vm_name: str) -> RunnerError:
    """The error for a launch that never printed :data:`STARTED`: the runner hop broke.

    The incus client reports a missing or stopped VM with exit 1 and an ``Error:`` line
    whose wording differs between Incus and LXD, so only stable fragments are matched.
    """
    text = stderr.decode("utf-8", "replace").strip()
    errors = [line[6:].strip() for line in text.splitlines() if line.startswith("Error:")]
    detail = errors[-1] if errors else (text.splitlines()[-1] if text else f"exit {exit_code}")
    lowered = text.lower()
    if not errors and exit_code == 127 and incus in text:
        return RunnerError(
            f"`{incus}` is not installed on the management host ({detail})",
            hint="install incus there, or set dap.runner.incus (e.g. `lxc` for LXD)",
        )
    if exit_code in EXIT_ERROR_LINES and text.endswith(EXIT_ERROR_LINES[exit_code].decode().strip()):
        # The server's own words for a top process that exits 127/126: here, the launcher's
        # `unshare` or `bash` is missing in the VM (not the VM itself).
        return RunnerError(
            f"the launcher could not start in VM {vm_name} ({detail})",
            hint="the VM needs bash and util-linux (unshare); `inv config.doctor` checks it",
        )
    if "not found" in lowered and errors:
        return RunnerError(
            f"VM {vm_name} not found ({detail})",
            hint=f"check dap.runner.vm / dap.runner.project; `{incus} list` shows the instances",
        )
    if "not running" in lowered:
        return RunnerError(
            f"VM {vm_name} is not running ({detail})",
            hint=f"start it: {incus} start {vm_name}",
        )
    if exit_code == 127:
        return RunnerError(
            f"the launcher could not start in VM {vm_name} ({detail})",
            hint="the VM needs bash and util-linux (unshare); `inv config.doctor` checks it",
        )
    return RunnerError(
        f"`{incus} exec {vm_name}` failed with exit {exit_code} ({detail})",
        hint="run `inv config.doctor` to test every hop",
    )


# When the top process exits 127 or 126, the Incus and LXD exec servers report an error
# that the client prints as the last line of its stderr (exit code unchanged); the command's
# own stderr never ends with it unless the command printed it itself.
EXIT_ERROR_LINES = {127: b"Error: Command not found\n", 126: b"Error: Command not executable\n"}

EOF_FRAME = b"e\n"
HEARTBEAT_FRAME = b"h\n"
QUIT_FRAME = b"q\n"
