#!/usr/bin/env bash
# Installs the Debian packages vmchecker needs on a storer+tester machine, only those
# missing, so running it twice is cheap. Usage: tools/install-deps.sh [extra packages]
set -euo pipefail
packages=(
  lxc lxc-dev debootstrap mmdebstrap pkg-config gcc make   # LXC backend + binding build
  openssh-server openssh-client                           # storer <-> tester transport
  iproute2 procps psmisc zip unzip sqlite3                # namespaces, process tools
  bubblewrap util-linux                                   # the check step's sandbox (bwrap, prlimit)
  chromium chromium-driver slapd ldap-utils               # web: browser tests, LDAP server for tests
  qemu-system-x86 qemu-utils libvirt-daemon-system        # KVM backend (TCG where no hardware
  libvirt-clients libvirt-dev busybox-static e2fsprogs    #   virtualization) and its guest image
  docker.io                                               # Docker backend; guests of the VMware lab
  golang-go golang-github-vmware-govmomi-dev              # the VMware lab server (tests/lab/vmware),
  golang-github-google-uuid-dev                           #   built offline from Debian's sources
  debhelper dh-python python3-setuptools dpkg-dev         # make deb (tools/build-deb.sh)
  prometheus                                              # tests/test_prometheus.py scrapes the daemons
  "$@"
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
