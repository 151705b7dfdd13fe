#!/usr/bin/env bash
# Kernel tuning for a tester host that runs LXC (or Docker) jobs; safe to run twice.
#
#   tools/tune-host.sh
#
# favordynmods on the cgroup2 mount. Every process that enters a guest's cgroup (LXC's
# attach moves one in for each step, and the copy-in and copy-out) takes the kernel's
# cgroup_threadgroup_rwsem for writing, which by default waits for an RCU grace period:
# 10 to 25 ms on these machines once the CPU has idled for a second, several times per
# job. With favordynmods the move is cheap and every fork pays a few atomic operations
# instead (the kernel's cgroup-v2 documentation). Kernels before 6.0 do not know the
# option; the script then says so and leaves the mount as it is. Not kept across a reboot:
# run it again (make demo and make test do).
set -euo pipefail
mounted=0
while read -r _dev where fstype options _rest; do
  [[ $fstype == cgroup2 ]] || continue
  mounted=1
  if [[ ,$options, == *,favordynmods,* ]]; then
    echo "tune-host.sh: $where already has favordynmods"
  elif mount -o remount,favordynmods "$where" 2>/dev/null; then
    echo "tune-host.sh: $where remounted with favordynmods"
  else
    echo "tune-host.sh: this kernel ($(uname -r)) cannot remount $where with favordynmods; LXC steps wait for an RCU grace period each" >&2
  fi
  break   # the option is the kernel's, not the mount's: one cgroup2 mount is enough
done < /proc/self/mounts
(( mounted )) || echo "tune-host.sh: no cgroup2 mount; nothing to tune" >&2
