#!/bin/bash
# Demo build script: runs in the guest, in the job folder, with the student's files
# and the assignment's tests unpacked there. Its output lands in build-*.vmr.
set -e
make
