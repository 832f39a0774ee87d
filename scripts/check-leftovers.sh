#!/usr/bin/env bash
# Fails if any TVM VMM process is still running (ours carry the tvm.agent port name)
# or any test runtime dir still holds a VM.
set -euo pipefail
left=$(pgrep -af 'qemu-system-x86_64.*tvm\.agent' || true)
if [ -n "$left" ]; then
  echo "leftover VMM processes:"; echo "$left"; exit 1
fi
dirs=$(find /tmp /run/tvm -maxdepth 4 -path '*/vms/*' -type d 2>/dev/null | grep -E '/vms/[0-9a-z]{26}$' || true)
if [ -n "$dirs" ]; then
  echo "leftover VM dirs:"; echo "$dirs"; exit 1
fi
echo "==> no VMM process or VM dir left behind"
