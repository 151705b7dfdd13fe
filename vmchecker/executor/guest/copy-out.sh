# Copy a job's results out of the guest (sh; runs as root once the steps' processes are dead).
#
# Usage: sh -c "$(cat copy-out.sh)" sh FOLDER CAP COUNT OUT
#
# Writes the first COUNT regular *.vmr files at the top of FOLDER, each cut to CAP bytes,
# as a tar to OUT ("-": stdout). A symlink is never followed: root would follow it to any
# file of the guest. A missing FOLDER gives an empty tar. Files within CAP (the usual
# case, told by wc, which only stats them) go into the tar as they are; only when one is
# larger (or wc says something else) are all first copied, cut, into a folder of their
# own: a slow guest pays tens of milliseconds per process.
dir=$1 cap=$2 count=$3 out=$4
[ "$out" = - ] || rm -f -- "$out"
set --
if cd -- "$dir" 2>/dev/null; then
  n=0
  for f in *.vmr; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    n=$((n + 1)); [ "$n" -le "$count" ] || break
    set -- "$@" "./$f"
  done
fi
if [ $# -eq 0 ]; then
  exec tar -cf "$out" -T /dev/null
fi
# Every number wc says (each file's size, and their total when there are several) within
# CAP, and at least one per file: small enough to take as they are.
small=yes sizes=0
set -f
for word in $(wc -c -- "$@" 2>/dev/null); do
  case $word in
    *[!0-9]*) ;;   # a name, or a word of one
    *) sizes=$((sizes + 1)); [ "$word" -le "$cap" ] || small=no ;;
  esac
done
set +f
[ "$sizes" -ge $# ] || small=no
if [ $small = yes ]; then
  exec tar -cf "$out" -- "$@"
fi
cut=$(mktemp -d) || exit 1
for f in "$@"; do
  head -c "$cap" -- "$f" > "$cut/$f" || exit 1
done
tar -cf "$out" -C "$cut" -- "$@" && rm -rf "$cut"
