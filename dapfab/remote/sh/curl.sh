#!/bin/bash
# shellcheck shell=bash
# One in-cluster HTTP request (docs/design.md §9), run as `curl.sh CONFIG_SIZE [BODY]`. stdin
# holds curl's config (CONFIG_SIZE bytes), then the request body if BODY is set. Nothing is
# written to a file: the config comes through a pipe, the header dump through a pipe into a
# variable. stdout is the body as curl wrote it; stderr is curl's own error text, then the
# curl marker with curl's exit code, and the header dump.
# tools: curl head
exec 4>&1
data=()
[ -z "$2" ] || data=(--data-binary @-)
headers=$(curl --config <(head -c "$1") --dump-header /dev/fd/5 "${data[@]}" 5>&1 >&4 4>&-)
code=$?
printf '\0dapfab-curl %d\n%s' "$code" "$headers" >&2
exit "$code"
