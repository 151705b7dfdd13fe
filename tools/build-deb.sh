#!/usr/bin/env bash
# Builds the Debian package: build/deb/vmchecker_<version>_all.deb, with Debian's own
# tools (dpkg-buildpackage, debhelper, dh-python), offline, as `make deb` does.
#
# The version is setup.py's; debian/changelog is written from it (dated by the last
# commit, so two builds of one tree give the same bytes) in a copy of the tree under
# build/deb/src/: the tracked and the untracked-but-not-ignored files, nothing of .venv/
# or build/. dpkg-buildpackage puts its output next to that copy, in build/deb/, never
# in the repository's parent. A stamp holding the hash of the inputs makes a second run
# with nothing changed return at once (FORCE=1 builds anyway).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/build/deb
SRC=$OUT/src
cd "$ROOT"

die() { echo "build-deb.sh: $*" >&2; exit 1; }

VERSION=$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' setup.py)
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "no version=\"...\" found in setup.py (got '$VERSION')"
DEB=$OUT/vmchecker_${VERSION}_all.deb
MAINTAINER=$(sed -n 's/^Maintainer: *//p' debian/control)

# The files of the tree, as a fresh clone plus uncommitted work would have them.
files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      [[ -f $f || -L $f ]] && printf '%s\0' "$f"   # a file deleted but not yet committed
    done
  else
    find . -path ./build -prune -o -path ./.venv -prune -o -path ./.git -prune -o \( -type f -o -type l \) -print0
  fi
}

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y setup.py)
else
  EPOCH=$(stat -c %Y setup.py)
fi

# One build at a time in this tree (two test runs may ask at once); the second finds the
# first's package up to date.
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

INPUTS=$( { files | sort -z | xargs -0 sha256sum; echo "$VERSION $EPOCH"; } | sha256sum | cut -d' ' -f1)
if [[ ${FORCE:-0} != 1 && -f $DEB && -f $OUT/.inputs && $(cat "$OUT/.inputs") == "$INPUTS" ]]; then
  echo "build-deb.sh: $DEB is up to date"
  exit 0
fi

missing=$(dpkg-checkbuilddeps 2>&1) || die "${missing##*error: }: apt-get install debhelper dh-python python3-setuptools"

start=$SECONDS
rm -rf "$SRC" "$OUT"/vmchecker_* "$OUT/.inputs"
mkdir -p "$SRC"
files | tar --null -T - -c | tar -x -C "$SRC"
find "$SRC" -exec touch -h -d "@$EPOCH" {} +   # mtimes of the tree, not of this checkout
cat > "$SRC/debian/changelog" <<CHANGELOG
vmchecker ($VERSION) unstable; urgency=medium

  * Built from the source tree by make deb (version from setup.py).

$(printf ' -- %s  ' "$MAINTAINER")$(LC_ALL=C date -u -R -d "@$EPOCH")
CHANGELOG

(cd "$SRC" && dpkg-buildpackage --build=binary --no-sign -j1 >"$OUT/build.log" 2>&1) || {
  tail -n 40 "$OUT/build.log" >&2
  die "dpkg-buildpackage failed (whole log: $OUT/build.log)"
}
[[ -f $DEB ]] || die "dpkg-buildpackage did not make $DEB (log: $OUT/build.log)"
echo "$INPUTS" > "$OUT/.inputs"
echo "build-deb.sh: built $DEB in $((SECONDS - start)) s"
