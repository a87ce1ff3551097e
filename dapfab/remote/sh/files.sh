#!/bin/bash
# shellcheck shell=bash
# kubectl with laptop files (docs/design.md §15), run as `files.sh DIR SIZE CAP NONCE KUBECTL...`
# in the launcher's or helper's fresh PID and mount namespace (one per call): mounts a tmpfs
# (0700, at most CAP bytes) on DIR, seen by this call only and gone with its namespace
# however the call ends (exit, kill, a silent laptop); unpacks the first SIZE bytes of stdin
# (a tar) into it; runs KUBECTL... on the rest of stdin. With a NONCE, after a kubectl that
# exited 0, it prints the `files` marker and a tar of DIR/out (`kubectl cp POD:PATH LOCAL`).
# tools: mount mkdir head tar cat
dir=$1
size=$2
cap=$3
nonce=$4
shift 4
if ! { [ -d "$dir" ] || mkdir -m 0700 "$dir"; } || ! mount -t tmpfs -o "mode=0700,size=$cap" dapfab-files "$dir"; then
  echo "dapfab: runner: cannot mount a private tmpfs on $dir for the laptop's files (the VM user must be root; or pass --no-laptop-files)" >&2
  exit 125
fi
if [ "$size" -gt 0 ]; then
  # tar may stop before the archive's padding: the rest of the bundle is drained, never
  # left for kubectl's stdin.
  head -c "$size" | { tar -x --no-same-owner -C "$dir"; code=$?; cat >/dev/null; exit "$code"; } || exit 125
fi
[ -n "$nonce" ] || exec "$@"
mkdir "$dir/out" || exit 125
"$@"
code=$?
if [ "$code" = 0 ]; then
  printf '\0dapfab-files %s\n' "$nonce"
  tar -c -C "$dir" out
fi
exit "$code"
