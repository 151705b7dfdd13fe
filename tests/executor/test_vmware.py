"""What only the VMware backend does: the credentials file, a server that is down or
refuses the password, a VM reverted between jobs, linked clones (side by side, kept when
a job failed, destroyed when their executor died), a session the server dropped.

The first tests need no server. The others run on the VMware lab (a vSphere API server
on loopback whose VMs are Docker containers, tests/lab/vmware_lab.py) and carry the
``vmware`` marker. The behaviour every backend shares is in test_behaviour.py; nothing
here asserts on how long something took.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("pyVmomi")

from tests.executor.helpers import around_run_step, run_job, vmr  # noqa: E402
from tests.executor.vmware_fixtures import clone_leftovers, running_guests  # noqa: E402
from tests.util import free_port, side_by_side, wait_for  # noqa: E402
from vmchecker.config import parse_machine  # noqa: E402
from vmchecker.errors import ExecutorError  # noqa: E402
from vmchecker.executor.vmware import VmwareHost  # noqa: E402
from vmchecker.executor.vmware_api import Session  # noqa: E402
from vmchecker.executor.vmware_modes import LinkedCloneVM  # noqa: E402
from vmchecker.executor.vmware_vm import Report  # noqa: E402

BARRIER_WAIT = 600   # a guard: a job that fails first breaks the wait at once


def _credentials(path: Path, text: str = "secret\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _offline_machine(tmp_path: Path, **overrides) -> dict:
    """A vmware machine whose server is nowhere (a free port on loopback)."""
    return {"type": "vmware", "vm": "so-1", "vmware_url": f"http://127.0.0.1:{free_port()}/sdk",
            "vmware_user": "vmck", "vmware_credentials": str(_credentials(tmp_path / "cred")), **overrides}


# --------------------------------------------------------------------------- no server needed


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_credentials_open_to_others_are_refused(tmp_path, mode):
    host = VmwareHost(tmp_path / "state")
    cred = _credentials(tmp_path / "cred", mode=mode)
    with pytest.raises(ExecutorError, match=rf"{cred} is open to others .*chmod 600"):
        host.session("https://vc.example.org/sdk", "vmck", str(cred))


def test_missing_credentials_are_refused(tmp_path):
    host = VmwareHost(tmp_path / "state")
    with pytest.raises(ExecutorError, match="does not exist on this tester"):
        host.session("https://vc.example.org/sdk", "vmck", str(tmp_path / "nope"))
    with pytest.raises(ExecutorError, match="no vmware_credentials"):
        host.session("https://vc.example.org/sdk", "vmck", "")


def test_server_down_is_a_job_error_naming_the_url(tmp_path):
    host = VmwareHost(tmp_path / "state")
    machine = _offline_machine(tmp_path, revert="linked-clone")
    job, out = run_job(host, tmp_path / "b", machine)
    assert job.status == "error"
    assert f"cannot connect to VMware at {machine['vmware_url']}" in vmr(out, "vmchecker-stderr.vmr")
    assert host.clone_records() == [] and not (tmp_path / "state" / "clones").exists()


def test_a_job_with_group_readable_credentials_is_refused_before_anything_runs(tmp_path):
    host = VmwareHost(tmp_path / "state")
    machine = _offline_machine(tmp_path)
    Path(machine["vmware_credentials"]).chmod(0o640)
    job, out = run_job(host, tmp_path / "b", machine)
    assert job.status == "error" and "is open to others" in vmr(out, "vmchecker-stderr.vmr")
    assert job.steps == {}


def test_a_password_in_the_config_is_refused():
    from vmchecker.errors import ConfigError

    with pytest.raises(ConfigError, match="vmware_credentials"):
        parse_machine({"name": "m", "type": "vmware", "vm": "x", "vmware_password": "secret"}, "course.yaml")


def test_transfer_urls_with_host_star_go_to_the_server_we_connected_to():
    session = Session("https://vc.example.org:8443/sdk", "vmck", "/nowhere")
    url = session.transfer_url("https://*/guestFile?id=1&token=x")
    assert (url.scheme, url.netloc, url.path, url.query) == ("https", "vc.example.org:8443", "/guestFile", "id=1&token=x")
    assert session.transfer_url("https://esx1.example.org:443/guestFile?id=2").netloc == "esx1.example.org:443"


def test_a_report_the_wrapper_did_not_write_is_an_error_naming_the_vm():
    report = Report.parse(b"vmck 0 - 1500 2048 3 5 0 0\nabc", "/vmchecker/steps/2", 0, "so-1")
    assert (report.exit_code, report.signal, report.cpu_us, report.max_rss_kb) == (0, None, 1500, 2048)
    assert (report.out, report.out_total, report.err, report.err_total) == (b"abc", 5, b"", 0)
    with pytest.raises(ExecutorError, match="the step wrapper failed in VMware VM 'so-1' .*: error fork"):
        Report.parse(b"error fork: Resource temporarily unavailable\n", "/x", 126, "so-1")


# --------------------------------------------------------------------------- on the lab


@pytest.mark.vmware
def test_wrong_password_is_a_job_error_naming_the_url_and_leaves_nothing(vmware_host, tmp_path):
    cred = _credentials(tmp_path / "wrong", "not-the-password\n")
    host = VmwareHost(tmp_path / "state")   # a session of its own: the shared one is logged in
    machine = vmware_host.machine_keys(vmware_credentials=str(cred), revert="linked-clone")
    job, out = run_job(host, tmp_path / "b", machine)
    assert job.status == "error"
    errors = vmr(out, "vmchecker-stderr.vmr")
    assert f"VMware at {vmware_host.lab.url} refused the login of 'vmck'" in errors and str(cred) in errors
    assert clone_leftovers(vmware_host) == [] and host.clone_records() == []


@pytest.mark.vmware
def test_unknown_vm_or_snapshot_is_a_job_error_naming_it(vmware_host, tmp_path):
    job, out = run_job(vmware_host, tmp_path / "a", vmware_host.machine_keys(vms=["no-such-vm"]))
    assert job.status == "error" and "has no VM named 'no-such-vm'" in vmr(out, "vmchecker-stderr.vmr")
    job, out = run_job(vmware_host, tmp_path / "b", vmware_host.machine_keys(snapshot="gone"))
    assert job.status == "error" and "VMware VM 'vmck-lab-1' has no snapshot(s) named 'gone'" in \
        vmr(out, "vmchecker-stderr.vmr")
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_revert_removes_what_a_job_wrote_on_the_same_vm(vmware_host, tmp_path):
    machine = vmware_host.machine_keys(vms=["vmck-lab-2"])
    write = "echo dirty > /etc/vmck-mark; echo dirty > /vmchecker/mark; echo wrote\n"
    job, out = run_job(vmware_host, tmp_path / "write", machine, run=write)
    assert vmr(out, "run-stdout.vmr") == "wrote\n" and job.vm == "vmck-lab-2"
    check = "for f in /etc/vmck-mark /vmchecker/mark; do test -e $f && echo found $f; done; echo checked\n"
    job, out = run_job(vmware_host, tmp_path / "check", machine, run=check)
    assert job.status == "done" and job.vm == "vmck-lab-2"
    assert vmr(out, "run-stdout.vmr") == "checked\n"
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_one_job_per_vm_at_a_time(vmware_host, tmp_path, monkeypatch, caplog):
    # Two jobs, one VM: the job that holds it waits, before its run step, until the other
    # says it waits for a free VM; then the second runs only once the first is done.
    caplog.set_level(logging.INFO, logger="vmchecker.executor.vmware_modes")
    order: list[tuple[str, str]] = []

    def before(results: Path) -> None:
        order.append(("run", results.parent.name))
        if len(order) == 1:
            wait_for(lambda: any("is busy" in r.getMessage() for r in caplog.records), "the other job to wait",
                     timeout=BARRIER_WAIT)

    around_run_step(monkeypatch, vmware_host, before=before,
                    after=lambda results: order.append(("ran", results.parent.name)))
    machine = vmware_host.machine_keys(vms=["vmck-lab-1"])
    done = {}
    threads = [threading.Thread(target=lambda n=n: done.update({n: run_job(vmware_host, tmp_path / n, machine,
                                                                           job_id=n)}))
               for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        job, out = done[name]
        assert job.status == "done" and job.vm == "vmck-lab-1", (name, vmr(out, "vmchecker-stderr.vmr"))
    first, second = order[0][1], order[2][1]
    assert order == [("run", first), ("ran", first), ("run", second), ("ran", second)] and first != second
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_linked_clones_run_side_by_side_and_are_destroyed(vmware_host, tmp_path, monkeypatch):
    # Each job waits, before its run step, for the other to reach its own: both clones
    # are up then. A job that fails first breaks the barrier, so its partner fails too.
    seen: list[list[str]] = []
    barrier = threading.Barrier(2, action=lambda: seen.append(running_guests(vmware_host)), timeout=BARRIER_WAIT)
    around_run_step(monkeypatch, vmware_host, before=lambda results: barrier.wait())
    machine = vmware_host.machine_keys(revert="linked-clone")
    done = side_by_side(lambda name: run_job(vmware_host, tmp_path / name, machine, job_id=name), ("a", "b"), barrier)
    names = set()
    for name in ("a", "b"):
        job, out = done[name]
        assert job.status == "done" and vmr(out, "run-stdout.vmr") == "Hello, world!\n", \
            (name, vmr(out, "vmchecker-stderr.vmr"))
        assert job.vm.startswith(f"vmck-{name}-")
        names.add(job.vm)
    assert len(names) == 2 and len(seen) == 1 and len(seen[0]) == 2, seen
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_keep_failed_keeps_the_clone_of_a_failed_job(vmware_host, tmp_path):
    # no time at all to boot: the job fails however fast the guest
    machine = vmware_host.machine_keys(revert="linked-clone", keep_failed=True, boot_timeout=0)
    job, out = run_job(vmware_host, tmp_path / "b", machine)
    assert job.status == "error"
    errors = vmr(out, "vmchecker-stderr.vmr")
    assert "was not ready within 0 s" in errors
    assert f"kept for inspection: VMware VM {job.vm!r}" in errors
    try:
        left = clone_leftovers(vmware_host)
        assert f"VM {job.vm} (not one of the lab's)" in left and all(job.vm in item for item in left), left
        assert vmware_host.cleanup_leftovers() == []   # kept on purpose: no executor's leftover
    finally:
        vmware_host.lab.reset()
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_clone_of_a_dead_executor_is_destroyed(vmware_host, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    machine = parse_machine({"name": "linux", **vmware_host.machine_keys(revert="linked-clone")}, "test")
    session = vmware_host.session(machine.vmware_url, machine.vmware_user, machine.vmware_credentials)
    vm = LinkedCloneVM(machine, "left", session, vmware_host.state)
    vm.name = f"vmck-left-{dead.pid}-abcdef"
    vm.record = vm.record.with_name(f"{vm.name}.json")
    vm.revert()
    vm.start()
    assert f"VM {vm.name} (not one of the lab's)" in clone_leftovers(vmware_host)
    assert vmware_host.cleanup_leftovers() == [vm.name]
    assert clone_leftovers(vmware_host) == []


@pytest.mark.vmware
def test_a_session_the_server_dropped_is_logged_in_again(vmware_host, tmp_path):
    machine = vmware_host.machine_keys()
    job, out = run_job(vmware_host, tmp_path / "a", machine)
    assert job.status == "done"
    session = vmware_host.session(machine["vmware_url"], machine["vmware_user"], machine["vmware_credentials"])
    session.content.sessionManager.Logout()   # behind the session's back, as a server restart would
    job, out = run_job(vmware_host, tmp_path / "b", machine)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert vmr(out, "run-stdout.vmr") == "Hello, world!\n"
