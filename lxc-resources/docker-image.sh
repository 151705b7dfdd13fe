#!/usr/bin/env bash
# Turns the LXC base container into a Docker image (no registry needed): the Docker
# backend's demo/test image and the guest image of the VMware lab server.
#
#   lxc-resources/docker-image.sh [BASE [IMAGE]]   (defaults: vmchecker-base vmchecker-base:latest)
#
# The one line that does it:
#   tar -C /var/lib/lxc/BASE/rootfs -c . | docker import --change 'CMD ["/sbin/vmchecker-init"]' - IMAGE
#
# Idempotent: the image carries the base's recipe hash as a label; when it matches, the
# script returns at once. Starts dockerd (tools/dockerd.sh) when it is not running.
set -euo pipefail
BASE=${1:-vmchecker-base}
IMAGE=${2:-vmchecker-base:latest}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$(lxc-config lxc.lxcpath)/$BASE
die() { echo "docker-image.sh: $*" >&2; exit 1; }

[[ -d $DEST/rootfs && -f $DEST/vmchecker-recipe ]] || die "no LXC base $BASE in $DEST: run lxc-resources/build-base.sh $BASE first"
"$HERE/../tools/dockerd.sh" start
RECIPE=$(cat "$DEST/vmchecker-recipe")
have=$(docker image inspect --format '{{index .Config.Labels "vmchecker.recipe"}}' "$IMAGE" 2>/dev/null || true)
[[ $have == "$RECIPE" ]] && exit 0
echo "importing $DEST/rootfs as Docker image $IMAGE"
tar -C "$DEST/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
  | docker import --change 'CMD ["/sbin/vmchecker-init"]' --change "LABEL vmchecker.recipe=$RECIPE" - "$IMAGE" >/dev/null
