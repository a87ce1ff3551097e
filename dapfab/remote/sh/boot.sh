#!/bin/bash
# shellcheck shell=bash
# The one-shot launcher (docs/design.md §9): PID 1 of a fresh PID namespace, started as
#   incus exec VM -T -- unshare --pid --mount-proc --fork --kill-child -- bash -c BOOT dapfab TIMEOUT INLINE
# It reads "dapfab1 <n>\n<n bytes of shell code>" on stdin, prints the started marker, runs the
# code with `bash -lc` and feeds it the data frames that follow. No frame for TIMEOUT seconds,
# end of stdin, or a `q` frame: every process in the namespace is killed.
# tools: unshare head
silence=$1
inline=$2
IFS=" " read -r magic n || exit 125
[ "$magic" = dapfab1 ] || exit 125
# The trailing dot keeps the code's own trailing newlines, which $(...) would strip.
cmd=$(head -c "$n"; printf .) || exit 125
cmd=${cmd%.}
# The frame stream moves to fd 3; the command never inherits it.
exec 3<&0 </dev/null
feed() {
  while IFS=" " read -r -t "$silence" kind n <&3; do
    case $kind in
      d) head -c "$n" <&3 || break ;;
      e) exec >&- ;;
      h) ;;
      *) break ;;
    esac
  done
  kill -KILL -1 2>/dev/null
}
printf "\0dapfab-started\n"
if [ ${#cmd} -lt "$inline" ]; then
  bash -lc "$cmd" < <(feed) 3<&- &
else
  # Past the kernel's 128 KiB cap on one argument: source the code from a pipe (never a
  # here-string, which bash 5.2 writes to a temp file past 64 KiB).
  bash -lc ". /dev/fd/4" 4< <(printf %s "$cmd") < <(feed) 3<&- &
fi
wait $! 2>/dev/null
