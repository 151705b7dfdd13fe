#!/bin/bash
# Demo run script for 1-hello: passes when ./hello prints exactly "Hello, world!".
# It runs as the trusted guest user; the student's program runs only through
# vmchecker-run (as the unprivileged student user). Grade lines go to $VMCHECKER_GRADE:
# none means full points, a failing run writes a -10 line.
set -u
expected="Hello, world!"
: > "$VMCHECKER_GRADE"
fail() {
    echo "FAIL: $1"
    echo "-10: $1" >> "$VMCHECKER_GRADE"
    exit 0
}
[ -x ./hello ] || fail "no hello program was built"
actual=$(vmchecker-run --timeout 10 ./hello | head -c 4096; exit "${PIPESTATUS[0]}")
status=$?
if [ "$status" -eq 124 ]; then fail "hello did not finish within 10 s"
elif [ "$status" -gt 128 ]; then fail "hello was killed by signal $((status - 128))"
elif [ "$status" -ne 0 ]; then fail "hello exited with status $status"
elif [ "$actual" != "$expected" ]; then fail "hello did not print \"$expected\""
fi
echo "PASS: ./hello printed \"$expected\""
