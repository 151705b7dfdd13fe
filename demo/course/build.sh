#!/bin/bash
# Demo build script: runs in the guest as the unprivileged student user, in the job
# folder, with the student's files and the assignment's tests unpacked there. A failing
# build scores 0. Its output lands in build-*.vmr.
set -e
make
