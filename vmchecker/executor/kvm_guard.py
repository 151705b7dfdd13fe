"""A KVM job's watch over the two files its guest can grow on the host: the serial
console log and the disk.

Neither has a size limit of its own: QEMU (or virtlogd, which rotates at its own
max_size only when libvirt uses it) appends the console to a file, and a qcow2 file
grows as the guest writes. One thread per job looks at both every ``POLL`` s from boot
to cleanup:

- The console log is emptied whenever it holds more than the job's output cap
  (``limits.output_kb``), so on the host it never holds more than the cap plus what the
  guest sends to its serial port in one ``POLL`` (about 40 KiB: the emulated 16550 moved
  0.8 MB/s here). The file is opened for appending, so writes go on at its new end; a
  kernel_messages command following it (``tail -F``) goes on from there and run-km.vmr
  keeps its own cap.
- The disk: once the disk file's allocated size grew by more than ``limits.disk_mb``
  over its size when the guest started (an overlay's few KiB; the snapshot domain's disk
  as ``loadvm`` left it, which frees what the previous job wrote), the guest is paused
  so it writes no more, and the job fails with a line that names the quota. The file
  grows by at most ``disk_mb`` plus what the guest writes before the watch sees it (one
  ``POLL`` at the 125 MB/s a guest wrote here is 5 MiB; 16 MiB was seen on a loaded
  host). The guest sees no ENOSPC: it is stopped instead.
"""

from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from vmchecker.errors import ExecutorError

log = logging.getLogger(__name__)

POLL = 0.02   # seconds between two looks
TAIL_BYTES = 4096


def allocated(path: Path | None) -> int:
    """Bytes of the host's disk a file takes (0 when missing or unknown)."""
    try:
        return os.stat(path).st_blocks * 512 if path is not None else 0
    except OSError:
        return 0


def tail(path: Path | None) -> str:
    """The last lines of a serial console log (for error messages)."""
    if path is None:
        return "(no serial console log)"
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read the serial console log {path}: {exc.strerror})"
    return text.strip() or "(the serial console log is empty)"


def serial_path(domain_xml: ET.Element) -> Path | None:
    """The file a domain's serial console is logged to, if any."""
    source = domain_xml.find("devices/serial[@type='file']/source")
    return Path(source.get("path")) if source is not None else None


def disk_path(domain_xml: ET.Element) -> Path | None:
    """The file of a domain's first disk, if it is a file."""
    disk = next((d for d in domain_xml.findall("devices/disk") if d.get("device", "disk") == "disk"), None)
    source = disk.find("source") if disk is not None else None
    return Path(source.get("file")) if source is not None and source.get("file") else None


class GuestWatch:
    """Started once the guest runs, stopped before its files are released."""

    def __init__(self, name: str, console: Path | None, console_cap: int, disk: Path | None, disk_mb: int,
                 stop_guest: Callable[[], None]):
        self.name = name
        self.console, self.console_cap = console, console_cap
        self.disk, self.disk_mb = disk, disk_mb
        self.stop_guest = stop_guest
        self.over_quota = False
        self.console_emptied = 0
        self._base = allocated(disk)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.look()   # what the guest wrote since the last look

    def check(self) -> None:
        """Raise the quota's error once the guest was stopped for it."""
        if self.over_quota:
            raise ExecutorError(f"the job wrote more than its disk quota of {self.disk_mb} MiB"
                                f" (limits.disk_mb) in guest {self.name}, which was stopped")

    def look(self) -> None:
        if self.console is not None:
            try:
                if os.stat(self.console).st_size > self.console_cap:
                    os.truncate(self.console, 0)
                    self.console_emptied += 1
            except OSError as exc:
                log.debug("%s: serial log %s: %s", self.name, self.console, exc.strerror)
        if not self.over_quota and allocated(self.disk) - self._base > self.disk_mb << 20:
            self.over_quota = True
            log.warning("%s: the guest's disk %s grew past its quota of %d MiB; stopping the guest",
                        self.name, self.disk, self.disk_mb)
            self.stop_guest()

    def _watch(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.look()
            except Exception:  # a watch that dies would let both files grow: log, go on
                log.exception("%s: watching the guest's files failed", self.name)
