#!/bin/bash
# shellcheck shell=bash
# The pty session, started as `incus exec VM -t -- bash -c UNSTAGE dapfab DIR STALE`: reads
# and removes DIR/cmd and runs it in a PID namespace of its own. A watcher kills the session
# when DIR/alive (kept fresh by keep_guard.sh) is more than STALE seconds old, and removes
# DIR when the session ends, however it ends.
# tools: cat rm sleep stat unshare
d=$1
stale=$2
c=$(cat "$d/cmd")
rm -f "$d/cmd"
me=$$
(
  trap '' HUP
  while sleep 1; do
    kill -0 "$me" 2>/dev/null || break
    t=$(stat -c %Y "$d/alive" 2>/dev/null) || t=0
    printf -v now "%(%s)T" -1
    [ $((now - t)) -le "$stale" ] || { kill -KILL "$me"; break; }
  done
  rm -rf "$d"
) </dev/null >/dev/null 2>&1 &
exec unshare --pid --mount-proc --fork --kill-child -- bash -lc "$c"
