"""The QEMU guest agent of one libvirt domain: commands and files, no guest network.

A thin wrapper over ``libvirt_qemu.qemuAgentCommand`` (``guest-exec``,
``guest-exec-status``, ``guest-file-*``) so the KVM backend (:mod:`vmchecker.executor.kvm`)
speaks in Python calls and every agent failure becomes an ExecutorError naming the guest.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import libvirt
import libvirt_qemu

from vmchecker.errors import ExecutorError
from vmchecker.executor import guest

log = logging.getLogger(__name__)

libvirt.registerErrorHandler(lambda *_args: None, None)   # errors arrive as exceptions; polling must not flood stderr

AGENT_TIMEOUT = 10          # seconds for one agent command
FILE_CHUNK = 4 * 1024 * 1024
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.001, 1.5, 0.02   # seconds between guest-exec-status questions


def describe(status: dict) -> str:
    """How a guest-exec process ended, for messages."""
    if status.get("signal") is not None:
        return f"killed by signal {status['signal']}"
    return f"exit {status.get('exitcode')}"


def output(status: dict, stream: str = "out") -> bytes:
    """The captured stdout (``out``) or stderr (``err``) of a guest-exec status."""
    return base64.b64decode(status.get(f"{stream}-data", ""))


class Agent:
    """The QEMU guest agent of one domain, through libvirt-qemu."""

    def __init__(self, dom: libvirt.virDomain, name: str):
        self.dom = dom
        self.name = name

    def call(self, command: str, timeout: int = AGENT_TIMEOUT, **arguments: Any) -> Any:
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(message), timeout, 0)
        except libvirt.libvirtError as exc:
            raise ExecutorError(f"guest agent of {self.name}: {command} failed: {exc.get_error_message()}") from None
        return json.loads(reply).get("return")

    def exec(self, argv: list[str], capture: bool = True, stdin: bytes | None = None) -> int:
        extra = {"input-data": base64.b64encode(stdin).decode()} if stdin is not None else {}
        return self.call("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": capture}, **extra)["pid"]

    def wait(self, pid: int, deadline: float) -> dict | None:
        """guest-exec-status until the process exited (its status) or ``deadline`` (None).

        The agent cannot say when a process ends, so it is asked, first after 1 ms and
        then less often, never more than POLL_MAX apart: a fixed pause wasted up to the
        pause per command (a copy takes 0.1-0.3 s under TCG), while asking without pause
        keeps the agent busy on the guest's one emulated vCPU, which the command needs
        (each question is a round trip of a few ms)."""
        pause = POLL_FIRST
        while True:
            status = self.call("guest-exec-status", pid=pid)
            if status.get("exited"):
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * POLL_GROWTH, POLL_MAX)

    def shell(self, script: str, *args: str, timeout: float = guest.COPY_TIMEOUT, stdin: bytes | None = None) -> bytes:
        """Run ``sh -c script`` as root (``stdin`` its standard input); its stdout;
        ExecutorError on failure."""
        return output(self._shell(script, args, timeout, stdin))

    def shell_whole(self, script: str, *args: str, timeout: float = guest.COPY_TIMEOUT) -> bytes | None:
        """As :meth:`shell`, but None when the stdout was more than the agent brings back
        (it keeps 16 MiB): the caller goes through a file instead."""
        status = self._shell(script, args, timeout, None)
        return None if status.get("out-truncated") else output(status)

    def run(self, argv: list[str], timeout: float = guest.COPY_TIMEOUT, stdin: bytes | None = None) -> bytes:
        """Run ``argv`` as root with no shell in between (one program fewer to start in a
        slow guest); its stdout; ExecutorError on failure."""
        return output(self._finish(self.exec(argv, stdin=stdin), timeout))

    def _shell(self, script: str, args: tuple[str, ...], timeout: float, stdin: bytes | None) -> dict:
        return self._finish(self.exec(["/bin/sh", "-c", script, "sh", *args], stdin=stdin), timeout)

    def _finish(self, pid: int, timeout: float) -> dict:
        status = self.wait(pid, time.monotonic() + timeout)
        if status is None:
            raise ExecutorError(f"a command in {self.name} did not finish within {timeout} s")
        if status.get("exitcode") != 0:
            err = output(status, "err").decode("utf-8", "replace").strip()
            raise ExecutorError(f"a command in {self.name} failed ({describe(status)}): {err or 'no message'}")
        return status

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.call("guest-file-open", path=path, mode="w")
        try:
            for i in range(0, len(data), FILE_CHUNK):
                chunk = base64.b64encode(data[i:i + FILE_CHUNK]).decode()
                self.call("guest-file-write", handle=handle, **{"buf-b64": chunk})
        finally:
            self.call("guest-file-close", handle=handle)

    def read_file(self, path: str, limit: int) -> bytes:
        handle = self.call("guest-file-open", path=path, mode="r")
        data = bytearray()
        try:
            while len(data) < limit:
                got = self.call("guest-file-read", handle=handle, count=min(FILE_CHUNK, limit - len(data)))
                data += base64.b64decode(got.get("buf-b64", ""))
                if got.get("eof") or not got.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=handle)
        return bytes(data)
