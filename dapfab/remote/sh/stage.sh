#!/bin/bash
# shellcheck shell=bash
# Stages a pty command (docs/design.md §9): stdin is the command; it is written to a fresh
# private directory (mktemp -d: 0700) whose path is printed. Nothing else is sent on the
# pty session's command line.
# tools: mktemp cat
umask 077
d=$(mktemp -d -t dapfab.XXXXXXXXXX) && cat >"$d/cmd" && : >"$d/alive" && printf %s "$d"
