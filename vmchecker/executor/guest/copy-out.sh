# Copy a job's results out of the guest (sh; runs as root once the steps' processes are dead).
#
# Usage: sh -c "$(cat copy-out.sh)" sh FOLDER CAP COUNT OUT
#
# Writes the first COUNT regular *.vmr files at the top of FOLDER, each cut to CAP bytes,
# as a tar to OUT ("-": stdout). A symlink is never followed: root would follow it to any
# file of the guest. A missing FOLDER gives an empty tar. Files within CAP (the usual
# case) go into the tar as they are; only when one is larger are all first copied, cut,
# into a folder of their own: a slow guest pays tens of milliseconds per process.
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
if [ -z "$(find "$@" -prune -size +"$cap"c)" ]; then
  exec tar -cf "$out" -- "$@"
fi
cut=$(mktemp -d) || exit 1
for f in "$@"; do
  head -c "$cap" -- "$f" > "$cut/$f" || exit 1
done
tar -cf "$out" -C "$cut" -- "$@" && rm -rf "$cut"
