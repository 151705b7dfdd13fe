"""Tester folders, bundles and a recording XML-RPC storer for the queue manager's tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import xmlrpc.server
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.util import make_zip
from vmchecker import config, tester_config
from vmchecker.bundle import BundleInfo, build_bundle, bundle_name

FAKE_EXECUTOR = Path(__file__).with_name("fake_executor.py")
FAKE_COMMAND = [sys.executable, str(FAKE_EXECUTOR)]
KEY = "0123456789abcdef0123456789abcdef"
# The course's run script for a hello bundle: the student's program runs as the student
# (vmchecker-run); an empty grade file is full points, a line takes them away.
HELLO_RUN = """\
#!/bin/bash
out=$(vmchecker-run ./hello); echo "$out"
if [ "$out" = "Hello, world!" ]; then : > "$VMCHECKER_GRADE"; else echo "-10: wrong output" > "$VMCHECKER_GRADE"; fi
"""


def make_tester(root: Path, slots: int = 2, executor_timeout: int = 60, storer_daemon: str = "",
                machines: dict | None = None, **settings) -> tester_config.TesterConfig:
    root.mkdir(parents=True, exist_ok=True)
    data = {"tester": {"name": "t1", "slots": slots, "executor_timeout": executor_timeout,
                       "storer_daemon": storer_daemon, **settings}}
    if machines:
        data["machines"] = machines
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    return tester_config.load_tester(root)


def make_bundle(dest_dir: Path, job_id: str, fake: dict | None = None, *, machine_type: str = "lxc",
                notify_url: str = "", archive_members: dict | None = None,
                build_sh: str = "#!/bin/bash\nmake\n", run_sh: str = HELLO_RUN,
                timeout: int = 30, boot_timeout: int = 120, machine_keys: dict | None = None,
                tester_key: str = "") -> Path:
    """A real bundle (vmchecker.bundle.build_bundle) whose archive holds ``fake.json``."""
    work = dest_dir.parent / f".src-{job_id}"
    work.mkdir(parents=True, exist_ok=True)
    members = dict(archive_members or {})
    if fake is not None:
        members["fake.json"] = json.dumps(fake)
    archive = make_zip(work / "archive.zip", members or {"README": "empty\n"})
    (work / "build.sh").write_text(build_sh)
    (work / "run.sh").write_text(run_sh)
    if machine_type in config.MACHINE_TYPES:
        machine = config.parse_machine({"name": "linux", "type": machine_type, "vm": "vmchecker-base",
                                        "limits": {"output_kb": 64}, "boot_timeout": boot_timeout,
                                        **(machine_keys or {})}, "test")
    else:  # what a storer with a newer backend might send: built without validation
        machine = config.Machine(name="linux", type=machine_type, vm="vm")
    info = BundleInfo(job_id=job_id, key=KEY, course="so", assignment="1-hello", account="bob",
                      submission="2026.02.20 10.00.00", upload_time="2026-02-20 10:00:00", timeout=timeout,
                      machine=machine, notify_url=notify_url, tester_key=tester_key)
    dest = dest_dir / bundle_name("so", "1-hello", "bob", job_id)
    return build_bundle(dest, info, archive_path=archive, tests_path=None,
                        build_script=work / "build.sh", run_script=work / "run.sh")


class RecordingStorer:
    """A real XML-RPC server on 127.0.0.1 that records ``notify`` calls (and, apart,
    ``tester_back`` calls in ``back_calls``)."""

    def __init__(self, port: int = 0, answer: Callable[..., object] | None = None):
        self.calls: list[tuple] = []
        self.back_calls: list[tuple] = []
        self._answer = answer or (lambda *args: True)
        self.server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", port), logRequests=False, allow_none=False)
        self.server.register_function(self._notify, "notify")
        self.server.register_function(self._back, "tester_back")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _notify(self, *args: object) -> object:
        self.calls.append(args)
        return self._answer(*args)

    def _back(self, *args: object) -> bool:
        self.back_calls.append(args)
        return True

    def __enter__(self) -> RecordingStorer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def kill_9(proc: subprocess.Popen) -> None:
    """SIGKILL a queue manager started as a process (unless it ended), and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc.stderr.close()
