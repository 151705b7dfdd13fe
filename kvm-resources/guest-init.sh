#!/bin/sh
# /sbin/vmchecker-init: PID 1 of a vmchecker KVM guest (no systemd, no udev).
#
# Mounts what a build/run step expects, turns on the cgroup v2 controllers the executor
# puts each step under (memory, pids, cpu), starts the QEMU guest agent (the executor's
# only channel: no guest network) and becomes the zombie reaper. All kernel messages go
# to the serial console, which the host logs to a file (kernel_messages).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control
echo vmchecker > /proc/sys/kernel/hostname
echo 8 > /proc/sys/kernel/printk

# Without udev there is no /dev/virtio-ports/NAME link: find the agent's port by name.
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
done
if [ -z "$port" ]; then
    echo "vmchecker-init: no org.qemu.guest_agent.0 virtio port" > /dev/console
else
    (while :; do /usr/sbin/qemu-ga -m virtio-serial -p "$port"; sleep 0.5; done) &
fi
echo "vmchecker-init: ready" > /dev/console
exec /sbin/vmchecker-reaper
