#!/usr/bin/env bash
# Builds the VMware test lab server (the Go sources beside this script) offline from
# Debian's govmomi sources, in GOPATH mode (module mode would want the network), and
# prints the binary's path. Rebuilds only when a source or the Go version changed.
#
#   tests/lab/vmware/build.sh        (needs: apt-get install golang-go golang-github-vmware-govmomi-dev)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/bin
BIN=$OUT/vmck-vsphere
GOSRC=${VMCK_GOSRC:-/usr/share/gocode}
die() { echo "build.sh: $*" >&2; exit 1; }

command -v go >/dev/null || die "go is missing (apt-get install golang-go)"
[[ -d $GOSRC/src/github.com/vmware/govmomi/simulator ]] \
  || die "no govmomi sources in $GOSRC (apt-get install golang-github-vmware-govmomi-dev)"
stamp="$(cat "$HERE"/*.go "$HERE/build.sh" | sha256sum | cut -c1-16) $(go version)"
if [[ -x $BIN && -f $OUT/stamp && $(cat "$OUT/stamp") == "$stamp" ]]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$OUT"
cd "$HERE"
# Our own build cache, so the build needs no HOME; a second build after an edit takes 2 s.
GOPATH=$OUT/gopath:$GOSRC GO111MODULE=off GOFLAGS= GOCACHE=$OUT/cache \
  go build -o "$BIN.$$" . || { rm -f "$BIN.$$"; die "go build failed"; }
mv "$BIN.$$" "$BIN"   # atomic: a lab starting meanwhile runs the old binary or the new one
echo "$stamp" > "$OUT/stamp"
echo "$BIN"
