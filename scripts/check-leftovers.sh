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
shm=$(find /dev/shm/tvm -mindepth 1 -maxdepth 1 -type d 2>/dev/null || true)
if [ -n "$shm" ]; then
  echo "leftover snapshot dirs on /dev/shm:"; echo "$shm"; exit 1
fi
cg=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 4 -path '*/tvm/*' -type d 2>/dev/null || true)
if [ -n "$cg" ]; then
  echo "leftover host cgroups:"; echo "$cg"; exit 1
fi
echo "==> no VMM process, VM dir, snapshot dir or host cgroup left behind"
