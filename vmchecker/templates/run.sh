#!/bin/bash
# run.sh: the assignment's tests. It runs in the guest after build.sh succeeded, in the
# job folder (the student's files with the tests unpacked over them), as the trusted
# guest user: the tests and this script are read-only to the student's code.
#
# - Start the student's program only through `vmchecker-run [--timeout S] PROGRAM ...`:
#   it runs as the unprivileged student user, within the machine's limits.
# - Write grade lines to "$VMCHECKER_GRADE", one per deduction or bonus ("-2: test 3
#   failed", "+1: bonus"); the grade is total_points plus these lines, never above
#   max_points. No line means full points, but the file must exist: if this script
#   does not write it, does not finish or exits non-zero, the submission gets only
#   points_on_failure. Other result files: "$VMCHECKER_RESULTS"/NAME.vmr.
# - What this script prints goes to run-stdout.vmr / run-stderr.vmr for the student.
#
# This template: for each tests/NAME.in, run ./main with it on standard input and
# compare what it prints with tests/NAME.out; each failed test costs POINTS_PER_TEST.
# The whole contract, with a worked example: docs/course-authors.md in vmchecker's source.
set -u
PROGRAM=./main
POINTS_PER_TEST=2
TIME_LIMIT=10               # seconds per test
MAX_OUTPUT=1048576          # bytes of the program's output compared

: > "$VMCHECKER_GRADE"
if [ ! -x "$PROGRAM" ]; then
    echo "the build produced no $PROGRAM"
    echo "-100: the build produced no $PROGRAM" >> "$VMCHECKER_GRADE"
    exit 0
fi
shopt -s nullglob
for input in tests/*.in; do
    name=$(basename "$input" .in)
    actual="$VMCHECKER_RESULTS/$name.actual"
    vmchecker-run --timeout "$TIME_LIMIT" "$PROGRAM" < "$input" 2> "$VMCHECKER_RESULTS/$name.err" \
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
