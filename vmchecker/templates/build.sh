#!/bin/bash
# Runs in the guest as the unprivileged student user, in the job folder holding the
# unpacked submission with the tests over it (the tests are read-only to it). A build
# that exits non-zero scores points_on_failure. Its output is kept as
# build-stdout.vmr / build-stderr.vmr.
set -e
make
