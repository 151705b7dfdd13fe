#!/bin/busybox sh
# /init of the vmchecker KVM guest's initramfs (busybox-static only).
#
# The Debian kernel has virtio and ext4 as modules; this loads them in dependency order
# (modules.order, written by build-image.sh), mounts the root disk /dev/vda read-write
# and hands over to the guest's own init. On failure it says why on the serial console
# and powers off, so the executor reports the console tail instead of waiting forever.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "vmchecker initramfs: $*" > /dev/console
    sleep 1
    poweroff -f
}

while read -r module; do
    insmod "/modules/$module.ko" || echo "vmchecker initramfs: insmod $module failed" > /dev/console
done < /modules.order

i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -le 200 ] || fail "no /dev/vda after 20 s"
    sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount /dev/vda"
[ -x /newroot/sbin/vmchecker-init ] || fail "/sbin/vmchecker-init missing on /dev/vda"
umount /proc /sys /dev
exec switch_root /newroot /sbin/vmchecker-init
