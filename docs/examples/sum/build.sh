#!/bin/bash
# build.sh of the worked example "sum" (docs/course-authors.md).
# Runs in the guest as the unprivileged student user, in the job folder: the student's
# main.c with the tests unpacked over it (tests/*.in, tests/*.out, read-only here).
# Exit non-zero and the submission scores points_on_failure; what it prints is kept as
# build-stdout.vmr / build-stderr.vmr, so the student sees the compiler's messages.
set -e
gcc -Wall -O2 -o main main.c
