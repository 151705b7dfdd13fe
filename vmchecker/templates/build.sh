#!/bin/bash
# Runs in the guest, in the folder holding the unpacked submission and tests.
# Its output is kept as build-stdout.vmr / build-stderr.vmr.
set -e
make
