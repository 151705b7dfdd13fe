"""A stand-in for ``vmchecker-vm-executor --warm`` used by the warmer's own tests.

Run as ``fake_warm_up.py CONTROL_DIR --warm MACHINE_FILE --owner PID`` (the queue
manager appends the last four). It appends ``start`` to ``CONTROL_DIR/log``, exits 1 if
``CONTROL_DIR/fail`` exists, waits until ``CONTROL_DIR/go`` exists (a barrier the test
opens; a guard of PROBE_WAIT seconds only keeps a broken test from hanging), then
publishes a record of a guest that exists nowhere in the tester's pool, as the real
warm-up does, and appends ``done``.
"""

import json
import secrets
import sys
import time
from pathlib import Path

from vmchecker.config import parse_machine
from vmchecker.executor.warm import WarmPool, new_record

PROBE_WAIT = 120


def main() -> int:
    control = Path(sys.argv[1])
    machine_file = Path(sys.argv[sys.argv.index("--warm") + 1])
    owner = int(sys.argv[sys.argv.index("--owner") + 1])
    with open(control / "log", "a") as f:
        f.write("start\n")
    if (control / "fail").exists():
        print("the fake warm-up fails on demand", file=sys.stderr)
        return 1
    deadline = time.monotonic() + PROBE_WAIT
    while not (control / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    machine = parse_machine(json.loads(machine_file.read_text()), machine_file)
    WarmPool(machine_file.parent.parent).publish(
        new_record(f"vmck-warm-{owner}-{secrets.token_hex(3)}", machine, "fake", owner))
    with open(control / "log", "a") as f:
        f.write("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
