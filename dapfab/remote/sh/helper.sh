#!/bin/bash
# shellcheck shell=bash
# The reusable helper (docs/design.md §9), started like boot.sh as
#   ... bash -c HELPER dapfab-helper TIMEOUT INLINE
# It reads requests "c <n> <m> <nonce>\n<n bytes of shell code><m bytes of stdin>" and runs
# each command in a PID namespace of its own, between a begin marker and end markers that
# carry the nonce (and, on stdout, the exit code). `h` frames keep it alive between commands;
# end of stdin, `q`, or TIMEOUT seconds without a frame kill its namespace, commands included.
# tools: unshare head cat
silence=$1
inline=$2
exec 3<&0 </dev/null
run() {
  printf "\0dapfab-begin %s\n" "$2"
  # Inside the namespace the command's stdin is moved to fd 5 and back, so that the
  # backgrounded `bash -lc` (job control off) still reads it.
  if [ ${#1} -lt "$inline" ]; then
    unshare --pid --mount-proc --fork --kill-child -- bash -c "exec 5<&0; bash -lc \"\$1\" <&5 5<&- & wait \$!" dapfab "$1" 3<&-
  else
    unshare --pid --mount-proc --fork --kill-child -- bash -c "exec 5<&0; bash -lc \". /dev/fd/4\" <&5 5<&- & wait \$!" dapfab 4< <(printf %s "$1") 3<&-
  fi
  printf "\0dapfab-end %s %d\n" "$2" $?
  printf "\0dapfab-end %s\n" "$2" >&2
}
printf "\0dapfab-started\n"
while IFS=" " read -r -t "$silence" kind n m nonce <&3; do
  case $kind in
    c)
      cmd=$(head -c "$n" <&3; printf .) || break
      cmd=${cmd%.}
      if [ "$m" -gt 0 ]; then
        # The stdin goes through a pipe; what the command leaves unread is drained.
        head -c "$m" <&3 > >(run "$cmd" "$nonce"; cat >/dev/null) || break
      else
        run "$cmd" "$nonce" </dev/null &
      fi ;;
    h) ;;
    *) break ;;
  esac
done
kill -KILL -1 2>/dev/null
