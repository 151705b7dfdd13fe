#!/bin/bash
# Runs in the guest after build.sh succeeded. Write the grade lines (e.g. "-1: leak")
# to stdout; the output is kept as run-stdout.vmr / run-stderr.vmr.
./hello
