"""The VMware lab server through pyvmomi, as the VMware backend uses it: login, power and
guest tools, guest files and programs, a revert that really resets, the VM's memory limit,
linked clones, and the daemon the demo starts. Every test leaves the lab as it found it."""

from __future__ import annotations

import shlex
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.lab import vmware_lab as vmware

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.connect import SmartConnect  # noqa: E402
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

pytestmark = pytest.mark.vmware

WAIT = 120.0  # seconds before a poll gives up (a hung lab, not a slow one)


@pytest.fixture(scope="module")
def si(vmware_lab: vmware.VmwareLab) -> Iterator[object]:
    with vmware_lab.connect() as si:
        yield si


@pytest.fixture(autouse=True)
def leaves_nothing(vmware_lab: vmware.VmwareLab) -> Iterator[None]:
    """Each test reverts and destroys what it made: no container, clone or running VM left.
    The session's lab starts each test as it started (the backend's jobs, earlier in the
    suite, leave their VM off with its container until the next revert, as on a real host)."""
    vmware_lab.reset()
    yield
    left = sorted(set(vmware_lab.leftovers()) | {f"container {c}" for c in vmware_lab.containers()})
    if left:
        vmware_lab.reset()  # so the next test starts clean even when this one failed
    assert not left, f"the test left these behind: {left}"


def vm_named(lab: vmware.VmwareLab, si: object, name: str) -> vim.VirtualMachine:
    return lab.inventory(si)[name]


def poll(what: str, done, wait: float = WAIT):
    """done()'s first true result, polled (a barrier: a hung lab fails, a slow one waits)."""
    deadline = time.monotonic() + wait
    while not (result := done()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)
    return result


class Guest:
    """The guest calls of one VM as one guest user, as the backend makes them."""

    def __init__(self, lab: vmware.VmwareLab, si: object, vm: vim.VirtualMachine, user: str = "root") -> None:
        operations = si.RetrieveContent().guestOperationsManager
        self.lab, self.vm = lab, vm
        self.processes, self.files = operations.processManager, operations.fileManager
        self.auth = vim.vm.guest.NamePasswordAuthentication(username=user, password="anything")

    def start(self, command: str, cwd: str | None = None, env: tuple[str, ...] = ()) -> int:
        spec = vim.vm.guest.ProcessManager.ProgramSpec(
            programPath="/bin/sh", arguments=f"-c {shlex.quote(command)}", workingDirectory=cwd,
            envVariables=list(env))
        return self.processes.StartProgramInGuest(self.vm, self.auth, spec)

    def info(self, pid: int) -> vim.vm.guest.ProcessManager.ProcessInfo:
        [info] = self.processes.ListProcessesInGuest(self.vm, self.auth, [pid])
        return info

    def wait(self, pid: int) -> vim.vm.guest.ProcessManager.ProcessInfo:
        return poll(f"guest process {pid}", lambda: (info := self.info(pid)).endTime and info)

    def run(self, command: str, **kwargs) -> int:
        return self.wait(self.start(command, **kwargs)).exitCode

    def _url(self, url: str) -> str:
        # the host answers "*": the client puts in the server it connected to
        return urllib.parse.urlsplit(url)._replace(netloc=f"{self.lab.host}:{self.lab.port}").geturl()

    def put(self, path: str, data: bytes) -> None:
        url = self.files.InitiateFileTransferToGuest(
            self.vm, self.auth, path, vim.vm.guest.FileManager.FileAttributes(), len(data), True)
        with urllib.request.urlopen(urllib.request.Request(self._url(url), data=data, method="PUT")) as answer:
            assert answer.status == 200

    def get(self, path: str) -> bytes:
        info = self.files.InitiateFileTransferFromGuest(self.vm, self.auth, path)
        with urllib.request.urlopen(self._url(info.url)) as answer:
            data = answer.read()
        assert len(data) == info.size
        return data


def power_on(vm: vim.VirtualMachine) -> None:
    WaitForTask(vm.PowerOnVM_Task())


def revert(vm: vim.VirtualMachine) -> None:
    WaitForTask(vm.RevertToCurrentSnapshot_Task())


def test_a_wrong_password_is_a_login_fault(vmware_lab):
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=vmware_lab.host, port=vmware_lab.port, user=vmware_lab.user, pwd="wrong", protocol="http")


def test_lab_vms_start_off_with_snapshot_clean_and_the_tools_run_once_powered_on(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-1")
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["clean"]
    assert vm.snapshot.currentSnapshot == vm.snapshot.rootSnapshotList[0].snapshot
    assert (vm.runtime.powerState, vm.guest.toolsRunningStatus) == ("poweredOff", "guestToolsNotRunning")
    guest = Guest(vmware_lab, si, vm)
    with pytest.raises(vim.fault.GuestOperationsUnavailable):
        guest.start("true")
    power_on(vm)
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    assert guest.run("true") == 0
    with pytest.raises(vim.fault.InvalidGuestLogin):
        Guest(vmware_lab, si, vm, user="nobody-here").start("true")
    WaitForTask(vm.PowerOffVM_Task())
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    revert(vm)


def test_make_directory_upload_and_download_round_trip(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-1")
    power_on(vm)
    guest = Guest(vmware_lab, si, vm)
    with pytest.raises(vim.fault.FileNotFound):
        guest.files.MakeDirectoryInGuest(vm, guest.auth, "/job/in/deep", False)
    guest.files.MakeDirectoryInGuest(vm, guest.auth, "/job/in/deep", True)
    with pytest.raises(vim.fault.FileAlreadyExists):
        guest.files.MakeDirectoryInGuest(vm, guest.auth, "/job/in/deep", True)
    payload = bytes(range(256)) * 1000 + b"\n"
    guest.put("/job/in/deep/payload.bin", payload)
    assert guest.get("/job/in/deep/payload.bin") == payload
    with pytest.raises(vim.fault.FileNotFound):  # the upload does not make the parent folder
        guest.put("/job/missing/payload.bin", payload)
    with pytest.raises(vim.fault.FileNotFound):
        guest.get("/job/in/nothing-here")
    with pytest.raises(vim.fault.NotAFile):
        guest.get("/job/in")
    guest.files.DeleteDirectoryInGuest(vm, guest.auth, "/job", True)
    with pytest.raises(vim.fault.FileNotFound):
        guest.get("/job/in/deep/payload.bin")
    revert(vm)


def test_a_program_runs_as_the_guest_user_and_its_exit_code_stays_listed(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-1")
    power_on(vm)
    student = Guest(vmware_lab, si, vm, user="student")
    pid = student.start('id -un > out; pwd >> out; echo "$GREETING" >> out; exit 3',
                        cwd="/tmp", env=("GREETING=hello",))
    info = student.wait(pid)
    assert (info.pid, info.exitCode, info.owner) == (pid, 3, "student")
    assert student.info(pid).exitCode == 3  # still listed after it was seen finished
    assert student.get("/tmp/out") == b"student\n/tmp\nhello\n"
    with pytest.raises(vim.fault.FileNotFound):
        student.start("true", cwd="/no/such/folder")
    revert(vm)


def test_terminate_kills_the_program_and_its_children_in_the_guest(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-1")
    power_on(vm)
    guest = Guest(vmware_lab, si, vm)
    pid = guest.start("sleep 1000 & echo started > /tmp/started; sleep 1000")
    poll("the child to start", lambda: guest.run("test -e /tmp/started") == 0)
    assert (guest.info(pid).endTime, guest.info(pid).exitCode) == (None, None)
    guest.processes.TerminateProcessInGuest(vm, guest.auth, pid)
    assert guest.wait(pid).exitCode == 137  # SIGKILL
    assert guest.run("ps -eo stat=,comm= | grep -v '^Z' | grep -q sleep") == 1, "a sleep survived"
    with pytest.raises(vim.fault.GuestProcessNotFound):
        guest.processes.TerminateProcessInGuest(vm, guest.auth, pid)
    revert(vm)


def test_terminate_works_in_a_guest_whose_pids_limit_is_exhausted(vmware_lab, tmp_path):
    # A lab of its own with a small pids limit: the bomb fills it at once even on a busy host.
    with vmware.VmwareLab(["vmck-pids"], tmp_path, pids=64) as lab, lab.connect() as si:
        vm = vm_named(lab, si, "vmck-pids")
        power_on(vm)
        guest = Guest(lab, si, vm)
        pid = guest.start("exec perl -e 'while (defined(my $p = fork)) { if (!$p) { sleep 1000; exit } } sleep 1000'")

        def cannot_start() -> bool:
            try:
                guest.run("true")
            except vmodl.fault.SystemError:  # docker exec cannot make its process
                return True
            return False

        # Each try is a docker exec into a guest near its limit: on a busy host filling
        # even 64 pids has taken 100 s, so the guard against a hang is long.
        poll("the guest to run out of pids", cannot_start, wait=10 * WAIT)
        guest.processes.TerminateProcessInGuest(vm, guest.auth, pid)
        assert guest.wait(pid).exitCode == 137
        assert guest.run("ps -eo stat=,comm= | grep -v '^Z' | grep -q -e perl -e sleep") == 1
        revert(vm)
        assert lab.containers() == []


@pytest.mark.parametrize("how", ["current", "snapshot"])
def test_revert_really_resets_the_guest_and_leaves_the_vm_off(vmware_lab, si, how):
    vm = vm_named(vmware_lab, si, "vmck-lab-1")
    power_on(vm)
    guest = Guest(vmware_lab, si, vm)
    assert guest.run("echo dirty > /root/mark && echo dirty > /etc/mark") == 0
    if how == "current":
        task = vm.RevertToCurrentSnapshot_Task()
    else:
        task = vm.snapshot.currentSnapshot.RevertToSnapshot_Task()
    WaitForTask(task)
    assert (task.info.state, task.info.entity) == ("success", vm)
    assert (vm.runtime.powerState, vm.guest.toolsRunningStatus) == ("poweredOff", "guestToolsNotRunning")
    assert vmware_lab.containers() == []
    power_on(vm)
    assert guest.run("test ! -e /root/mark && test ! -e /etc/mark") == 0
    revert(vm)


def test_a_snapshot_of_a_running_vm_keeps_its_files(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-2")
    clean = vm.snapshot.currentSnapshot
    power_on(vm)
    guest = Guest(vmware_lab, si, vm)
    assert guest.run("echo kept > /root/kept") == 0
    task = vm.CreateSnapshot_Task(name="kept", description="", memory=False, quiesce=False)
    WaitForTask(task)
    kept = task.info.result
    try:
        assert guest.run("rm /root/kept") == 0
        WaitForTask(kept.RevertToSnapshot_Task())
        power_on(vm)
        assert guest.get("/root/kept") == b"kept\n"
        WaitForTask(clean.RevertToSnapshot_Task())
        power_on(vm)
        assert guest.run("test ! -e /root/kept") == 0
    finally:
        WaitForTask(kept.RemoveSnapshot_Task(removeChildren=False))
        WaitForTask(clean.RevertToSnapshot_Task())
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["clean"]


def test_the_vm_memory_set_by_reconfigure_limits_the_guest(vmware_lab, si):
    vm = vm_named(vmware_lab, si, "vmck-lab-2")
    memory = vm.config.hardware.memoryMB
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=64)))
    try:
        power_on(vm)
        guest = Guest(vmware_lab, si, vm)
        assert guest.run("perl -e '$x = \"x\" x (256 * 1024 * 1024)'") == 137  # OOM-killed
        assert guest.run("perl -e '$x = \"x\" x (8 * 1024 * 1024)'") == 0
    finally:
        revert(vm)
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=memory)))


def linked_clone(vm: vim.VirtualMachine, name: str) -> vim.VirtualMachine:
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking"),
        snapshot=vm.snapshot.currentSnapshot, powerOn=False)
    task = vm.CloneVM_Task(folder=vm.parent, name=name, spec=spec)
    WaitForTask(task)
    return task.info.result


def test_linked_clones_run_independently_and_destroy_removes_their_containers(vmware_lab, si):
    source = vm_named(vmware_lab, si, "vmck-lab-1")
    power_on(source)
    assert Guest(vmware_lab, si, source).run("echo source > /root/who") == 0
    clones = [linked_clone(source, f"vmck-lab-1-clone-{n}") for n in (1, 2)]
    for n, clone in enumerate(clones, 1):
        power_on(clone)
        guest = Guest(vmware_lab, si, clone)
        assert guest.run("test ! -e /root/who") == 0, "the clone has the source's files, not the snapshot's"
        assert guest.run(f"echo clone-{n} > /root/who") == 0
    assert len(vmware_lab.containers()) == 3
    assert [Guest(vmware_lab, si, vm).get("/root/who") for vm in [source, *clones]] == [
        b"source\n", b"clone-1\n", b"clone-2\n"]
    for clone in clones:
        WaitForTask(clone.PowerOffVM_Task())
        WaitForTask(clone.Destroy_Task())
    assert set(vmware_lab.inventory(si)) == {"vmck-lab-1", "vmck-lab-2"}
    assert len(vmware_lab.containers()) == 1
    revert(source)


def test_leftovers_names_a_clone_left_behind_and_reset_removes_it(vmware_lab, si):
    source = vm_named(vmware_lab, si, "vmck-lab-2")
    clone = linked_clone(source, "vmck-lab-2-forgotten")
    power_on(clone)
    vm_left, container_left = vmware_lab.leftovers()
    assert vm_left == "VM vmck-lab-2-forgotten (not one of the lab's)"
    assert container_left.startswith("container ") and "-vmck-lab-2-forgotten-" in container_left
    vmware_lab.reset()
    assert vmware_lab.leftovers() == []


def test_the_demo_daemon_starts_and_stops_twice(vmware_lab, tmp_path):
    state = tmp_path / "lab"
    assert vmware.main(["start", "--dir", str(state), "--vms", "demo-1"]) == 0
    url = (state / "url").read_text().strip()
    label = (state / "label").read_text().strip()
    assert stat.S_IMODE((state / "credentials").stat().st_mode) == 0o600
    parts = urllib.parse.urlsplit(url)
    si = SmartConnect(host=parts.hostname, port=parts.port, user=(state / "user").read_text().strip(),
                      pwd=(state / "credentials").read_text().strip(), protocol="http")
    [vm] = si.RetrieveContent().viewManager.CreateContainerView(
        si.RetrieveContent().rootFolder, [vim.VirtualMachine], True).view
    power_on(vm)
    pid = int((state / "pid").read_text())
    assert vmware.main(["stop", "--dir", str(state)]) == 0
    assert vmware.main(["stop", "--dir", str(state)]) == 0
    assert not vmware._alive(pid)
    assert vmware._docker("ps", "-a", "-q", "--filter", f"label={label}") == ""

