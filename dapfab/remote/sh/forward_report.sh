#!/bin/bash
# shellcheck shell=bash
# A port-forward that reports its listener (after listener.sh), run as
# `forward_report.sh KUBECTL_COMMAND`: kubectl's output passes through, and after its
# "Forwarding from" line comes the listener marker with the inode of the socket it listens
# on. The exit code is kubectl's.
# tools:
set -o pipefail
eval "$1" | while IFS= read -r line; do
  printf '%s\n' "$line"
  case $line in 'Forwarding from 127.0.0.1:'*)
    port=${line#'Forwarding from 127.0.0.1:'}
    port=${port%% *}
    printf '\0dapfab-listener %s\n' "$(listener "$port" here)" ;;
  esac
done
