#!/bin/bash
# run.sh of the worked example "sum" (docs/course-authors.md).
# Runs in the guest after build.sh succeeded, in the job folder, as the trusted guest
# user: it alone writes the grade. The student's program runs only through
# vmchecker-run, as the student user, under a time limit.
#
# For each tests/NAME.in: feed it to ./main, compare what ./main prints with
# tests/NAME.out; each failed test writes one grade line "-3: test NAME failed (...)"
# to $VMCHECKER_GRADE. No line at all: full points (10). The tenth point is for a
# program that builds: failing all three tests leaves 1.
set -u
PROGRAM=./main
POINTS_PER_TEST=3
TIME_LIMIT=5                # seconds per test
MAX_OUTPUT=65536            # bytes of the program's output compared

: > "$VMCHECKER_GRADE"      # the grade file must exist: no file means points_on_failure
if [ ! -x "$PROGRAM" ]; then
    echo "the build produced no $PROGRAM"
    echo "-10: the build produced no $PROGRAM" >> "$VMCHECKER_GRADE"
    exit 0
fi
shopt -s nullglob
for input in tests/*.in; do
    name=$(basename "$input" .in)
    actual="$VMCHECKER_RESULTS/test-$name.vmr"      # *.vmr here is copied out: the student sees it
    # its error output is not graded (the exit status below says why it stopped)
    vmchecker-run --timeout "$TIME_LIMIT" "$PROGRAM" < "$input" 2> /dev/null \
        | head -c "$MAX_OUTPUT" > "$actual"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ] && cmp -s "tests/$name.out" "$actual"; then
        echo "test $name: passed"
        continue
    fi
    if [ "$status" -eq 124 ]; then why="did not finish within $TIME_LIMIT s"
    elif [ "$status" -gt 128 ]; then why="killed by signal $((status - 128))"
    elif [ "$status" -ne 0 ]; then why="exit status $status"
    else why="wrong output"
    fi
    echo "test $name: failed ($why)"
    echo "-$POINTS_PER_TEST: test $name failed ($why)" >> "$VMCHECKER_GRADE"
done
exit 0
