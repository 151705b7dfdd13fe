#!/bin/bash
# Demo run script for 1-hello: passes when ./hello prints exactly "Hello, world!".
# A failing run writes grade.vmr with a -10 line; a passing one leaves the grade to the
# default (full points).
expected="Hello, world!"
if [ ! -x ./hello ]; then
    echo "FAIL: the build produced no ./hello"
    echo "-10: no hello program was built" > grade.vmr
    exit 0
fi
actual=$(./hello)
if [ "$actual" = "$expected" ]; then
    echo "PASS: ./hello printed \"$expected\""
else
    echo "FAIL: expected \"$expected\", got \"$actual\""
    echo "-10: hello did not print \"$expected\"" > grade.vmr
fi
