#!/usr/bin/env bash
# Builds the vmchecker LXC base container from Debian packages only.
#
#   lxc-resources/build-base.sh [NAME]          (default NAME: vmchecker-base)
#
# The rootfs comes from mmdebstrap (debootstrap if mmdebstrap is missing) against the
# apt mirror this machine is configured with, plus a compiler toolchain. The config is
# written by hand: no network (lxc.net.0.type = empty), a tiny init of our own
# (init.c, compiled inside the rootfs) that ends on SIGTERM, no hooks. Jobs never run
# in the base: the executor runs each one in an overlay clone, so the base stays clean.
#
# Idempotent: a stamp holds a hash of the recipe (this script, init.c, suite, mirror,
# packages); when it matches, the script returns at once. Otherwise it builds under a
# hidden temporary name and renames it into place, so a killed build never leaves a
# half container under NAME.
#
# Environment: VMCHECKER_MIRROR (default: from /etc/apt/sources.list{,.d/*}),
# VMCHECKER_SUITE (default: this machine's codename), VMCHECKER_EXTRA_PACKAGES
# (comma-separated, added to the package list).
set -euo pipefail

NAME=${1:-vmchecker-base}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LXCPATH=$(lxc-config lxc.lxcpath)
STAMP_FILE=vmchecker-recipe
PACKAGES="gcc,make,libc6-dev,python3,procps,psmisc,coreutils,util-linux,findutils,diffutils,grep,sed,tar,gzip,zip,unzip,bash,iproute2"
if [[ -n ${VMCHECKER_EXTRA_PACKAGES:-} ]]; then
  PACKAGES+=",${VMCHECKER_EXTRA_PACKAGES}"
fi

die() { echo "build-base.sh: $*" >&2; exit 1; }

# rm -rf that first detaches whatever a killed mmdebstrap left mounted inside (proc,
# sys, dev) and never crosses into another filesystem.
remove_tree() {
  local path
  for path in "$@"; do
    [[ -e $path ]] || continue
    { findmnt -rn -o TARGET | grep -F "$path/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$path"
  done
}

[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad container name '$NAME'"
[[ $(id -u) == 0 ]] || die "must run as root (LXC containers live in $LXCPATH)"

# --------------------------------------------------------------------- suite, mirror

suite() {
  if [[ -n ${VMCHECKER_SUITE:-} ]]; then echo "$VMCHECKER_SUITE"; return; fi
  # shellcheck disable=SC1091
  (. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
}

# The first "deb" source for SUITE, from one-line (.list) or deb822 (.sources) files.
configured_mirror() {
  local suite=$1 files=()
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  ((${#files[@]})) || return 1
  awk -v suite="$suite" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " suite " ") && uris != "") {
        split(uris, u, " "); print u[1]; found = 1; exit
      }
      types = ""; suites = ""; uris = ""; enabled = ""
    }
    FILENAME ~ /\.sources$/ {
      if (FILENAME != current) { flush(); current = FILENAME }
      if ($0 ~ /^[ \t]*#/) next
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
      if (key == "types") types = $0
      else if (key == "suites") suites = $0
      else if (key == "uris") uris = $0
      else if (key == "enabled") enabled = tolower($0)
      next
    }
    {
      if (FILENAME != current) { flush(); current = FILENAME }
      line = $0; sub(/#.*/, "", line); gsub(/\[[^]]*\]/, "", line)
      n = split(line, f, " ")
      if (n >= 3 && f[1] == "deb" && f[3] == suite) { print f[2]; found = 1; exit }
    }
    END { if (!found) flush() }
  ' "${files[@]}"
}

SUITE=$(suite)
MIRROR=${VMCHECKER_MIRROR:-$(configured_mirror "$SUITE" || true)}
[[ -n $MIRROR ]] || die "no apt source for suite '$SUITE' in /etc/apt/sources.list{,.d/*}; set VMCHECKER_MIRROR"

RECIPE=$( { cat "$HERE/build-base.sh" "$HERE/init.c"; echo "$SUITE $MIRROR $PACKAGES"; } | sha256sum | cut -d' ' -f1)
DEST=$LXCPATH/$NAME

is_current() {
  [[ -f $DEST/$STAMP_FILE && $(cat "$DEST/$STAMP_FILE") == "$RECIPE" \
     && -f $DEST/config && -x $DEST/rootfs/sbin/vmchecker-init ]]
}

if is_current; then
  echo "build-base.sh: $NAME is up to date ($DEST)"
  exit 0
fi

# One build per name at a time; the loser of a race re-checks and finds it built.
mkdir -p "$LXCPATH"
exec 9>"$LXCPATH/.$NAME.build.lock"
flock 9
if is_current; then
  echo "build-base.sh: $NAME is up to date ($DEST)"
  exit 0
fi

# Leftovers of killed builds (we hold the lock, so none of them is running).
remove_tree "$LXCPATH/.$NAME.tmp."* "$LXCPATH/.$NAME.old."*

TMP=$LXCPATH/.$NAME.tmp.$$
trap 'remove_tree "$TMP"' EXIT
mkdir -p "$TMP"

# --------------------------------------------------------------------- rootfs

start=$SECONDS
echo "build-base.sh: building $NAME: $SUITE from $MIRROR with $PACKAGES"
if command -v mmdebstrap >/dev/null; then
  mmdebstrap --mode=root --variant=apt --include="$PACKAGES" \
    --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$TMP/rootfs" "$MIRROR"
elif command -v debootstrap >/dev/null; then
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP/rootfs" "$MIRROR"
else
  die "neither mmdebstrap nor debootstrap is installed (apt-get install mmdebstrap)"
fi

# The init, compiled with the guest's own toolchain so it links against the guest libc.
cp "$HERE/init.c" "$TMP/rootfs/tmp/vmchecker-init.c"
chroot "$TMP/rootfs" gcc -O2 -Wall -o /sbin/vmchecker-init /tmp/vmchecker-init.c
rm -f "$TMP/rootfs/tmp/vmchecker-init.c"
# The unprivileged user that runs the student's code (machines.*.student_user).
chroot "$TMP/rootfs" useradd --create-home --uid 1500 --user-group --shell /bin/bash student
echo "$NAME" > "$TMP/rootfs/etc/hostname"

# --------------------------------------------------------------------- config

cat > "$TMP/config" <<EOF
# vmchecker base container, written by lxc-resources/build-base.sh. Jobs run in
# overlay clones of it (vmchecker/executor/lxc.py); do not start this container.
lxc.include = /usr/share/lxc/config/common.conf
# No hooks: the clone hook rewrites /etc/hosts (a mount per clone), the lxcfs ones
# are not needed by a guest that lives a few seconds.
lxc.hook.clone =
lxc.hook.mount =
lxc.hook.post-stop =
lxc.arch = linux64
lxc.uts.name = $NAME
lxc.rootfs.path = dir:$DEST/rootfs
lxc.apparmor.profile = unconfined
lxc.net.0.type = empty
lxc.tty.max = 0
lxc.pty.max = 16
lxc.console.path = none
lxc.init.cmd = /sbin/vmchecker-init
lxc.signal.halt = SIGTERM
lxc.environment = PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
lxc.environment = LANG=C.UTF-8
EOF
echo "$RECIPE" > "$TMP/$STAMP_FILE"

# --------------------------------------------------------------------- swap in

# Job clones read the base's rootfs through their overlay: never swap it under them.
# Checked just before the swap, so the window for a new clone is milliseconds.
busy=$(grep -ls -- "$DEST/rootfs" "$LXCPATH"/*/config 2>/dev/null | grep -v "^$DEST/config$" || true)
if [[ -n $busy ]]; then
  die "clones of $NAME exist (jobs running, or left by a killed executor): $(echo "$busy" | xargs -n1 dirname | xargs -n1 basename | tr '\n' ' ')- stop the tester, then lxc-destroy -f -n CLONE for each"
fi

if [[ -e $DEST ]]; then
  lxc-stop -k -n "$NAME" >/dev/null 2>&1 || true
  mv "$DEST" "$LXCPATH/.$NAME.old.$$"
fi
mv "$TMP" "$DEST"
trap - EXIT
remove_tree "$LXCPATH/.$NAME.old.$$"
echo "build-base.sh: built $NAME in $((SECONDS - start)) s ($DEST)"
