#!/bin/bash
# shellcheck shell=bash
# One laptop connection to a runner port (after listener.sh), run as
# `relay.sh PORT INODE REFUSED NOT_OURS`: stdin goes to 127.0.0.1:PORT and its answers to
# stdout. With INODE set, only while that socket (the forward's kubectl) listens on PORT,
# checked before and after connecting. Exit REFUSED when nothing listens, NOT_OURS when
# another socket holds the port.
# tools: cat
port=$1
inode=$2
if [ -n "$inode" ] && [ "$(listener "$port")" != "$inode" ]; then exit "$4"; fi
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit "$3"
if [ -n "$inode" ] && [ "$(listener "$port")" != "$inode" ]; then exit "$4"; fi
cat <&0 >&3 &
exec cat <&3
