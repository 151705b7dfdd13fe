"""The guest operations of one VMware VM (VMware Tools in the guest), as the machine's
guest user: start a shell command, learn whether it ended and how, end it, make a
folder, and move whole files in and out (capped on the way out).

Every call goes through :class:`~vmchecker.executor.vmware_api.Session`, so a fault is an
ExecutorError naming the VM and the call. On Linux, VMware Tools runs the program through
a shell; a command here is ``/bin/sh -c SCRIPT``, so both real guests and the test lab
run the same text.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

from pyVmomi import vim

from vmchecker.errors import ExecutorError
from vmchecker.executor.vmware_api import Session

log = logging.getLogger(__name__)

POLL_FIRST, POLL_MAX = 0.02, 0.25   # seconds between two looks at a running process


class GuestOps:
    """VM ``vm`` (named ``name`` in messages) reached through its guest operations."""

    def __init__(self, session: Session, vm: Any, name: str, user: str):
        self.session, self.vm, self.name = session, vm, name
        self.auth = vim.vm.guest.NamePasswordAuthentication(username=user or "root",
                                                            password=session.guest_password)
        manager = session.content.guestOperationsManager
        self._processes, self._files = manager.processManager, manager.fileManager

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        return self.session.call(what, self.name, fn, self.vm, self.auth, *args)

    # -- processes

    def start(self, script: str, args: list[str], cwd: str = "/") -> int:
        """Start ``/bin/sh -c script sh args...`` in ``cwd``; its pid."""
        arguments = " ".join(shlex.quote(a) for a in ("-c", script, "sh", *args))
        spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments=arguments,
                                                       workingDirectory=cwd)
        return self._call("StartProgramInGuest", self._processes.StartProgramInGuest, spec)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of process ``pid`` (started here), or None while it runs."""
        found = self._call("ListProcessesInGuest", self._processes.ListProcessesInGuest, [pid])
        if not found:
            raise ExecutorError(f"ListProcessesInGuest on VMware VM {self.name!r}: process {pid} is not known"
                                " (did the guest restart?)")
        info = found[0]
        return None if info.endTime is None else int(info.exitCode or 0)

    def wait(self, pid: int, deadline: float) -> int | None:
        """Poll process ``pid`` until it ends (its exit code) or ``deadline`` passes
        (None), looking more often at first: most commands are short."""
        pause = POLL_FIRST
        while True:
            code = self.exit_code(pid)
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)

    def terminate(self, pid: int) -> None:
        """End process ``pid``; one that already ended is fine."""
        def terminate() -> None:
            try:
                self._processes.TerminateProcessInGuest(self.vm, self.auth, pid)
            except vim.fault.GuestProcessNotFound:
                pass
        self.session.call("TerminateProcessInGuest", self.name, terminate)

    # -- files

    def mkdir(self, path: str) -> bool:
        """Make folder ``path`` and its parents (one already there is fine); False
        while the guest's tools cannot run guest operations yet."""
        def mkdir() -> bool:
            try:
                self._files.MakeDirectoryInGuest(self.vm, self.auth, path, True)
            except vim.fault.FileAlreadyExists:
                pass
            except vim.fault.GuestOperationsUnavailable:
                return False
            return True
        return self.session.call("MakeDirectoryInGuest", self.name, mkdir)

    def upload(self, path: str, data: bytes, timeout: float) -> None:
        """Write ``data`` to the guest file ``path`` (its folder exists)."""
        url = self._call("InitiateFileTransferToGuest", self._files.InitiateFileTransferToGuest, path,
                         vim.vm.guest.FileManager.PosixFileAttributes(), len(data), True)
        self.session.put(url, data, f"copying {path}", self.name, timeout)

    def download(self, path: str, limit: int, timeout: float) -> tuple[bytes, int]:
        """The first ``limit`` bytes of the guest file ``path`` and its whole size."""
        info = self._call("InitiateFileTransferFromGuest", self._files.InitiateFileTransferFromGuest, path)
        size = int(info.size or 0)
        if size == 0 or limit <= 0:
            return b"", size
        return self.session.get(info.url, limit, f"copying {path}", self.name, timeout), size
