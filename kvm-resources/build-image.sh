#!/usr/bin/env bash
# Builds the vmchecker KVM guest from Debian packages only and defines its libvirt domain.
#
#   kvm-resources/build-image.sh [NAME]          (default NAME: vmchecker-kvm-base)
#
# Under the state folder ($VMCHECKER_KVM_STATE, default /var/lib/vmchecker/kvm):
#   vmlinuz, initrd.img   the kernel of the package linux-image-amd64 depends on (apt-get
#                         download + dpkg-deb -x) and a busybox-static initramfs that
#                         loads virtio + ext4 and switch_roots to /dev/vda
#   base.qcow2            read-only: an ext4 image (mkfs.ext4 -d) of an mmdebstrap rootfs
#                         with gcc, make, libc6-dev and qemu-guest-agent; its init is
#                         guest-init.sh + lxc-resources/init.c (no systemd, no udev in the guest)
#   NAME.qcow2            the overlay disk of the persistent domain NAME, holding the
#                         internal snapshot "clean" (RAM included), taken once the agent
#                         answers: machines with revert: snapshot revert to it per job;
#                         machines with revert: overlay boot transient copies of NAME's
#                         definition on fresh overlays of base.qcow2
#   jobs/                 the executor's per-job overlays and serial console logs
#
# It installs nothing (tools/install-deps.sh does; INSTALL.md lists the packages), starts
# virtlogd and libvirtd by hand when they are not running (no systemd here) and waits for
# libvirt to answer. Idempotent: stamps hold a hash of the recipe (these scripts, the
# kernel version, packages, suite, mirror, guest size); when they match it returns at
# once. Pieces are built under temporary names and renamed into place, so a killed build
# never leaves a half image under a final name.
#
# Environment: VMCHECKER_KVM_STATE, VMCHECKER_MIRROR, VMCHECKER_SUITE,
# VMCHECKER_EXTRA_PACKAGES (comma-separated), VMCHECKER_KVM_MEMORY_MB (512),
# VMCHECKER_KVM_DOMAIN_TYPE (auto|kvm|qemu; auto = kvm only with vmx/svm and a usable
# /dev/kvm), VMCHECKER_KVM_SNAPSHOT (clean).
set -euo pipefail

NAME=${1:-vmchecker-kvm-base}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${VMCHECKER_KVM_STATE:-/var/lib/vmchecker/kvm}
SNAPSHOT=${VMCHECKER_KVM_SNAPSHOT:-clean}
MEMORY_MB=${VMCHECKER_KVM_MEMORY_MB:-512}
DOMAIN_TYPE=${VMCHECKER_KVM_DOMAIN_TYPE:-auto}
BOOT_TIMEOUT=180
URI=qemu:///system
PACKAGES="gcc,make,libc6-dev,qemu-guest-agent,mount,python3,procps,psmisc,coreutils,util-linux,findutils,diffutils,grep,sed,tar,gzip,bash"
if [[ -n ${VMCHECKER_EXTRA_PACKAGES:-} ]]; then
  PACKAGES+=",${VMCHECKER_EXTRA_PACKAGES}"
fi
# Load order of the modules the initramfs needs (the rest of virtio/ext4 is built in).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console crc16 mbcache jbd2 crc32c_generic ext4"

# Run in the guest before the snapshot (see define_domain).
WARM_UP='cd /tmp && printf "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n" > w.c
printf "w: w.c\n\tgcc -Wall -o w w.c\n" > Makefile && make -s && ./w && rm -f w w.c Makefile
perl -MPOSIX -MTime::HiRes -e 1 && tar --version && date && head --version && mkdir --version && bash --version
id root && cat /etc/passwd >/dev/null && sync'

die() { echo "build-image.sh: $*" >&2; exit 1; }
say() { echo "build-image.sh: $*"; }

[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad domain name '$NAME'"
[[ $(id -u) == 0 ]] || die "must run as root (libvirt's system instance, $STATE)"
[[ $DOMAIN_TYPE =~ ^(auto|kvm|qemu)$ ]] || die "VMCHECKER_KVM_DOMAIN_TYPE must be auto, kvm or qemu"
for tool in qemu-system-x86_64 qemu-img virsh libvirtd virtlogd mmdebstrap busybox mkfs.ext4 dpkg-deb apt-get apt-cache gzip flock; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: run tools/install-deps.sh (see kvm-resources/INSTALL.md)"
done
busybox --list | grep -qx switch_root || die "busybox has no switch_root: install busybox-static"

# --------------------------------------------------------------------- libvirt

start_libvirt() {
  virsh -c "$URI" version >/dev/null 2>&1 && return 0
  pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; virtlogd -d; }
  pgrep -x libvirtd >/dev/null || { say "starting libvirtd"; libvirtd -d; }
  local i
  for ((i = 0; i < 60; i++)); do
    virsh -c "$URI" version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "libvirtd does not answer on $URI after 30 s"
}

domain_type() {
  case $DOMAIN_TYPE in
    kvm|qemu) echo "$DOMAIN_TYPE" ;;
    *) if grep -qwE 'vmx|svm' /proc/cpuinfo && (exec 3<>/dev/kvm) 2>/dev/null; then echo kvm; else echo qemu; fi ;;
  esac
}

# --------------------------------------------------------------------- recipe

SUITE=${VMCHECKER_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")}
MIRROR=${VMCHECKER_MIRROR:-$(apt-get indextargets --format '$(SITE) $(RELEASE)' 'Created-By: Packages' 2>/dev/null \
  | awk -v s="$SUITE" '$2 == s { print $1; exit }')}
[[ -n $MIRROR ]] || die "no apt source for suite '$SUITE' (run apt-get update, or set VMCHECKER_MIRROR)"
KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
[[ -n $KERNEL_PKG ]] || die "cannot tell which kernel linux-image-amd64 depends on (run apt-get update)"
KERNEL_VERSION=$(apt-cache policy "$KERNEL_PKG" | awk '/Candidate:/ { print $2 }')

IMAGE_RECIPE=$( { cat "$HERE/build-image.sh" "$HERE/initramfs-init.sh" "$HERE/guest-init.sh" "$HERE/../lxc-resources/init.c"
                  echo "$SUITE $MIRROR $PACKAGES $KERNEL_PKG $KERNEL_VERSION $MODULES"; } | sha256sum | cut -d' ' -f1)
DTYPE=$(domain_type)
DOMAIN_RECIPE=$(echo "$IMAGE_RECIPE $NAME $SNAPSHOT $MEMORY_MB $DTYPE" | sha256sum | cut -d' ' -f1)

image_current() {
  [[ -f $STATE/base.stamp && $(cat "$STATE/base.stamp") == "$IMAGE_RECIPE" \
     && -f $STATE/base.qcow2 && -f $STATE/vmlinuz && -f $STATE/initrd.img ]]
}

domain_current() {
  [[ -f $STATE/$NAME.stamp && $(cat "$STATE/$NAME.stamp") == "$DOMAIN_RECIPE" && -f $STATE/$NAME.qcow2 ]] \
    && virsh -c "$URI" snapshot-info "$NAME" "$SNAPSHOT" >/dev/null 2>&1
}

mkdir -p "$STATE/jobs"
start_libvirt
if image_current && domain_current; then
  say "$NAME is up to date ($STATE)"
  exit 0
fi

# One build per state folder at a time; the loser of a race re-checks and finds it built.
exec 9>"$STATE/.build.lock"
flock 9
TMP=$STATE/.build.$$
trap 'rm -rf "$TMP"' EXIT
rm -rf "$STATE"/.build.[0-9]*   # leftovers of killed builds (we hold the lock)
mkdir -p "$TMP"

# --------------------------------------------------------------------- image

build_image() {
  local start=$SECONDS rootfs=$TMP/rootfs kdir=$TMP/kernel ird=$TMP/initramfs m path
  say "building the guest image: $SUITE from $MIRROR, kernel $KERNEL_PKG $KERNEL_VERSION"

  (cd "$TMP" && apt-get download -q "$KERNEL_PKG=$KERNEL_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  ls "$TMP"/"$KERNEL_PKG"_*.deb >/dev/null 2>&1 || die "apt-get download $KERNEL_PKG failed"
  dpkg-deb -x "$TMP"/"$KERNEL_PKG"_*.deb "$kdir"
  local kver=${KERNEL_PKG#linux-image-}
  cp "$kdir/boot/vmlinuz-$kver" "$TMP/vmlinuz"

  mkdir -p "$ird"/{bin,dev,proc,sys,newroot,modules}
  cp "$(command -v busybox)" "$ird/bin/busybox"
  cp "$HERE/initramfs-init.sh" "$ird/init"
  chmod 755 "$ird/init"
  : > "$ird/modules.order"
  for m in $MODULES; do
    path=$(find "$kdir/lib/modules/$kver/kernel" -name "$m.ko" | head -n1)
    if [[ -n $path ]]; then
      cp "$path" "$ird/modules/"
      echo "$m" >> "$ird/modules.order"
    elif ! grep -qw "$m" "$kdir/lib/modules/$kver/modules.builtin" 2>/dev/null; then
      die "kernel module $m is neither in $KERNEL_PKG nor built in"
    fi
  done
  (cd "$ird" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$TMP/initrd.img")

  mmdebstrap --mode=root --variant=apt --include="$PACKAGES" --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$rootfs" "$MIRROR"
  cp "$HERE/../lxc-resources/init.c" "$rootfs/tmp/init.c"  # the same PID 1 as LXC guests, powering off
  chroot "$rootfs" gcc -O2 -Wall -DPOWER_OFF -o /sbin/vmchecker-reaper /tmp/init.c
  install -m 755 "$HERE/guest-init.sh" "$rootfs/sbin/vmchecker-init"
  rm -rf "$rootfs/tmp/init.c" "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  echo vmchecker > "$rootfs/etc/hostname"
  # The unprivileged user that runs the student's code (machines.*.student_user).
  chroot "$rootfs" useradd --create-home --uid 1500 --user-group --shell /bin/bash student
  : > "$rootfs/etc/fstab"
  mkfs.ext4 -q -F -L vmchecker -d "$rootfs" "$TMP/base.raw" 2G
  qemu-img convert -O qcow2 "$TMP/base.raw" "$TMP/base.qcow2"
  rm -rf "$rootfs" "$kdir" "$TMP/base.raw"
  chmod 444 "$TMP/base.qcow2"

  # The old domain's disk is an overlay of the old base: it goes first.
  remove_domain
  rm -f "$STATE/base.stamp"   # the pieces are swapped one by one: no stamp until all are in
  for piece in vmlinuz initrd.img base.qcow2; do
    mv -f "$TMP/$piece" "$STATE/$piece"
  done
  echo "$IMAGE_RECIPE" > "$STATE/base.stamp"
  say "built the guest image in $((SECONDS - start)) s"
}

# --------------------------------------------------------------------- domain

remove_domain() {
  rm -f "$STATE/$NAME.stamp"
  if virsh -c "$URI" dominfo "$NAME" >/dev/null 2>&1; then
    virsh -c "$URI" destroy "$NAME" >/dev/null 2>&1 || true
    virsh -c "$URI" undefine "$NAME" --snapshots-metadata >/dev/null
  fi
  rm -f "$STATE/$NAME.qcow2"
}

domain_xml() {
  cat <<EOF
<domain type='$DTYPE'>
  <name>$NAME</name>
  <description>vmchecker KVM base guest, built by kvm-resources/build-image.sh</description>
  <memory unit='MiB'>$MEMORY_MB</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$STATE/vmlinuz</kernel>
    <initrd>$STATE/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet panic=1</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='$STATE/$NAME.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$STATE/$NAME.console.log' append='on'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
</domain>
EOF
}

# Run a shell command in the guest through the agent; wait for it; fail on non-zero exit.
guest_run() {
  local cmd reply pid i
  cmd=$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')
  cmd=${cmd//$'\n'/\\n}
  cmd=${cmd//$'\t'/\\t}
  reply=$(virsh -c "$URI" qemu-agent-command "$NAME" \
    "{\"execute\":\"guest-exec\",\"arguments\":{\"path\":\"/bin/sh\",\"arg\":[\"-c\",\"$cmd\"]}}")
  pid=$(grep -o '"pid":[0-9]*' <<<"$reply" | cut -d: -f2)
  for ((i = 0; i < 1200; i++)); do
    reply=$(virsh -c "$URI" qemu-agent-command "$NAME" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}")
    if grep -q '"exited":true' <<<"$reply"; then
      grep -q '"exitcode":0' <<<"$reply"
      return
    fi
    sleep 0.1
  done
  return 1
}

define_domain() {
  local start=$SECONDS i
  say "defining domain $NAME (type $DTYPE, $MEMORY_MB MiB) and its snapshot '$SNAPSHOT'"
  remove_domain
  qemu-img create -q -f qcow2 -F qcow2 -b "$STATE/base.qcow2" "$STATE/$NAME.qcow2"
  domain_xml > "$TMP/$NAME.xml"
  virsh -c "$URI" define "$TMP/$NAME.xml" >/dev/null
  : > "$STATE/$NAME.console.log"
  virsh -c "$URI" start "$NAME" >/dev/null
  for ((i = 0; i < BOOT_TIMEOUT * 2; i++)); do
    virsh -c "$URI" qemu-agent-command "$NAME" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ((i >= BOOT_TIMEOUT * 2)); then
    tail -n 30 "$STATE/$NAME.console.log" >&2 || true
    virsh -c "$URI" destroy "$NAME" >/dev/null 2>&1 || true
    die "the guest agent of $NAME did not answer within $BOOT_TIMEOUT s (serial console above)"
  fi
  # Warm the page cache with what every job runs (the executor's step wrapper, tar, the
  # toolchain): the snapshot keeps the cache, so no job reads these from disk under TCG.
  guest_run "$WARM_UP" || die "warming up $NAME failed"
  sleep 1
  virsh -c "$URI" snapshot-create-as "$NAME" "$SNAPSHOT" --atomic >/dev/null
  # Jobs revert to the snapshot: the base itself needs no CPU meanwhile.
  virsh -c "$URI" suspend "$NAME" >/dev/null
  echo "$DOMAIN_RECIPE" > "$STATE/$NAME.stamp"
  say "domain $NAME booted and snapshotted in $((SECONDS - start)) s"
}

image_current || build_image
domain_current || define_domain
trap - EXIT
rm -rf "$TMP"
say "$NAME is ready ($STATE)"
