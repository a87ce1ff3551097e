#!/bin/bash
# shellcheck shell=bash
# A library for forward_report.sh and relay.sh: `listener PORT [here]` prints the inode of
# the socket listening on 127.0.0.1:PORT, read from /proc/net/tcp (which every PID namespace
# of the VM shares); with `here` it must also be held by a process of this PID namespace,
# i.e. by this launcher's own kubectl. Relays compare it before and after connecting, so a
# connection is carried only to the kubectl a forward started.
# tools: readlink
held_here() {
  local fd
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$1]" ] && return 0
  done
  return 1
}
listener() {
  local want1 want2 addr st inode
  printf -v want1 '0100007F:%04X' "$1"
  printf -v want2 '7F000001:%04X' "$1"
  while read -r _ addr _ st _ _ _ _ _ inode _; do
    [ "$st" = 0A ] || continue
    [ "$addr" = "$want1" ] || [ "$addr" = "$want2" ] || continue
    [ -z "$2" ] || held_here "$inode" || continue
    printf %s "$inode"
    return 0
  done </proc/net/tcp
  return 1
}
