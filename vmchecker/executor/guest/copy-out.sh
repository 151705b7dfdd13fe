# Copy a job's results out of the guest (sh; runs as root once the steps' processes are dead).
#
# Usage: sh -c "$(cat copy-out.sh)" sh FOLDER CAP COUNT OUT
#
# Writes the first COUNT regular *.vmr files at the top of FOLDER, each cut to CAP bytes,
# as a tar to OUT ("-": stdout). A symlink is never followed: root would follow it to any
# file of the guest. A missing FOLDER gives an empty tar.
[ "$4" = - ] || rm -f -- "$4"
out=$(mktemp -d) || exit 1
if cd -- "$1" 2>/dev/null; then
  n=0
  for f in *.vmr; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    n=$((n + 1)); [ "$n" -le "$3" ] || break
    head -c "$2" -- "$f" > "$out/$f"
  done
fi
tar -cf "$4" -C "$out" . && rm -rf "$out"
