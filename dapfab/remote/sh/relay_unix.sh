#!/bin/bash
# shellcheck shell=bash
# One laptop connection to k8s.proxy's socket, run as `relay_unix.sh SOCKET REFUSED`: stdin
# goes to the Unix socket and its answers to stdout. Exit REFUSED when it is not there.
# tools: socat
[ -S "$1" ] || exit "$2"
exec socat - "UNIX-CONNECT:$1"
