#!/bin/bash
# shellcheck shell=bash
# The runner side of k8s.proxy, run as `api_proxy.sh [KUBECTL_FLAG...]`: kubectl proxy on a
# Unix socket in a private directory (mktemp -d: 0700, never a TCP port a VM user could
# reach), restarted on the same socket when it exits. The directory is what keeps other VM
# users out; the laptop's token is checked and taken out on the laptop and never comes here.
# Prints the socket marker (`\0dapfab-socket <path>`) each time the socket is up; a kubectl
# that never served ends it with kubectl's exit code, a missing socat with 127. The launcher ends it (and
# kubectl) with the session; the directory's lock then frees, and the next proxy started
# in this VM removes directories whose lock is free.
# The default --reject-paths blocks exec and attach: `^$` matches no path.
# Go strips the brackets from [::1], so the default --accept-hosts never matches ::1.
# tools: kubectl socat mktemp flock rm sleep
if ! command -v socat >/dev/null; then
  echo "socat is not installed in the VM (k8s.proxy relays to its socket with it)" >&2
  exit 127
fi
tmp=${TMPDIR:-/tmp}
for old in "$tmp"/dapfab-api.*; do
  if [ -O "$old" ] && [ -d "$old" ] && [ ! -L "$old" ] && flock -n "$old/lock" true 2>/dev/null; then
    rm -rf "$old"
  fi
done
dir=$(mktemp -d "$tmp/dapfab-api.XXXXXXXX") || exit 125
exec 4>"$dir/lock"
flock 4
sock=$dir/api.sock
served=
while :; do
  rm -f "$sock"
  kubectl proxy --unix-socket="$sock" --api-prefix=/ --reject-paths='^$' \
    --accept-hosts='^localhost$,^127\.0\.0\.1$,^::1$' "$@" </dev/null >/dev/null 4>&- &
  pid=$!
  until [ -S "$sock" ] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  if [ -S "$sock" ]; then
    served=1
    printf '\0dapfab-socket %s\n' "$sock"
  fi
  wait "$pid"
  code=$?
  [ -n "$served" ] || exit "$code"
  echo "kubectl proxy exited with $code; restarting it on the same socket" >&2
  sleep 1
done
