#!/bin/bash
# shellcheck shell=bash
# The pty session's companion on the ordinary launcher (bounded by dapfab's heartbeat):
# keeps DIR/alive ($1) fresh while the laptop is alive and the directory exists.
# tools: touch sleep
while touch -c -- "$1/alive" && [ -e "$1/alive" ]; do sleep 1; done
