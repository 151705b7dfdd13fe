"""The web interface with the whole system behind it, in a real browser.

Nothing stands in: ``vmchecker-web`` (waitress), the storer daemon, a real sshd on
loopback for the storer's SFTP, a queue manager and LXC guests from the base
container. A student logs in with Chromium, uploads a real archive, watches the status
move as the system grades it, and reads the build output, the run output and the grade;
the course's admin then reads the job's timeline there, which the student never sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.lab import lxc_unusable, skip_unless_lab, sshd
from tests.util import free_port, make_zip, stop_process, wait_for
from tests.web.helpers import HELLO, PASSWORDS, WebServer, open_course, write_users
from tests.web.test_browser import log_in, page, shot  # noqa: F401  (page is a fixture)
from vmchecker.contract import Stage

BASE = "vmchecker-base"
pytestmark = [pytest.mark.browser, pytest.mark.lxc, pytest.mark.sshd]

# The student's program runs as the student (vmchecker-run); an empty grade file is full points.
RUN_SH = ('#!/bin/bash\nout=$(vmchecker-run ./hello)\nif [ "$out" = "Hello, world!" ]; then echo "PASS: hello";'
          ' : > "$VMCHECKER_GRADE"; else echo FAIL; echo "-10: wrong output" > "$VMCHECKER_GRADE"; fi\n')


class Process:
    """A vmchecker command in the background, logging to a file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, env: dict):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=self.log, stderr=self.log, env=env)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self.log.close()


@pytest.fixture
def system(tmp_path: Path):
    skip_unless_lab()
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    daemon_port = free_port()
    course = open_course(tmp_path, f"http://127.0.0.1:{daemon_port}/", show_grades_before_deadline=True)
    keys = course.root / "keys"
    keys.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    stack = []
    tester = None
    try:
        ssh = sshd.SshServer(authorized_keys=[(keys / "id_ed25519.pub").read_text()]).start()
        stack.append(ssh)
        tester = sshd.tester_folder(ssh, "vmck-web-tester-")
        (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
        (course.root / "run.sh").write_text(RUN_SH)
        data = yaml.safe_load(course.path.read_text())
        data["testers"] = {"t1": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user,
                                  "queue": str(tester / "queue"), "done": str(tester / "done")}}
        data["machines"]["linux"].update(testers=["t1"], vm=BASE)
        course.path.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {**os.environ, "VMCHECKER_CONFIG": str(tmp_path / "global.yaml")}
        stack.append(Process(["vmchecker.cli.storer_daemon", "--listen", f"127.0.0.1:{daemon_port}", "--state",
                              str(tmp_path / "state"), "--poll", "0.5"], tmp_path / "daemon.log", env))
        stack.append(Process(["vmchecker.cli.queue_manager", str(tester)], tmp_path / "queue-manager.log", env))
        web = WebServer(tmp_path / "global.yaml", write_users(tmp_path / "users"), tmp_path / "secret")
        stack.append(web)
        yield web
    finally:
        for part in reversed(stack):
            part.stop() if not isinstance(part, sshd.SshServer) else part.close()
        if tester is not None:
            shutil.rmtree(tester, ignore_errors=True)


def test_student_sees_a_real_grading(system, page, tmp_path: Path) -> None:  # noqa: F811
    url = system.url
    log_in(page, url, "student", PASSWORDS["student"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello")
    page.set_input_files("#archive", str(make_zip(tmp_path / "hello.zip", HELLO)))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector(".flash")
    assert "Your archive was saved" in page.inner_text(".flash")
    seen = []

    def graded() -> bool:
        status = page.get_attribute("#submission-1 .badge", "data-status")
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("done", "error"):
            return True
        page.reload()
        return False

    wait_for(graded, "the page to show the submission graded", timeout=120, interval=0.5)
    assert seen[-1] == "done", seen
    assert set(seen) <= {"saved", "queued", "running", "done"}
    assert "gcc" in page.inner_text("pre.vmr[data-name='build-stdout.vmr']")
    assert "PASS: hello" in page.inner_text("pre.vmr[data-name='run-stdout.vmr']")
    assert page.inner_text("#submission-1 .grade") == "10 / 10"
    shot(page, "09-graded-for-real")
    assert page.query_selector("details.timeline") is None   # the timeline is the graders'

    page.context.clear_cookies()   # the course's admin now reads the same submission
    log_in(page, url, "alice", PASSWORDS["alice"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello/accounts/student")
    page.click("#submission-1 details.timeline summary")
    stages = [row.get_attribute("data-stage") for row in page.query_selector_all("#submission-1 table.timeline tr[data-stage]")]
    expected = [s.value for s in Stage if s not in (Stage.ON_TESTER, Stage.CHECK_STARTED, Stage.CHECK_ENDED)]
    assert [s for s in stages if s != Stage.ON_TESTER] == expected and Stage.ON_TESTER in stages, stages
    assert "grade written" in page.inner_text("#submission-1 table.timeline")
    shot(page, "10-timeline-for-graders")
