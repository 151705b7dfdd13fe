"""What enters the guest, in which order, owned by whom.

The payload is one folder: the student's files, the assignment's tests unpacked over
them, then the course's ``build.sh`` and ``run.sh``, so course files always win over
student files of the same name. It travels to the guest as one tar stream whose files
all belong to the guest user, whatever owns them on the host.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import IO

from vmchecker import archive
from vmchecker.contract import ARCHIVE, BUILD_SCRIPT, RUN_SCRIPT, TESTS
from vmchecker.errors import ArchiveError, BundleError


def prepare_payload(bundle_dir: Path, work: Path) -> Path:
    """The folder copied to the guest, built in ``work`` from the unpacked bundle in
    ``bundle_dir``: student files, then tests over them, then the course's scripts."""
    files, tests = work / "files", work / "tests"
    for name, dest in ((ARCHIVE, files), (TESTS, tests)):
        try:
            archive.safe_extract(bundle_dir / name, dest)
        except ArchiveError as exc:
            raise BundleError(f"cannot unpack {name}: {exc.message}") from None
    _overlay(tests, files)
    for name in (BUILD_SCRIPT, RUN_SCRIPT):
        _remove(files / name)
        shutil.copyfile(bundle_dir / name, files / name)
    return files


def write_payload(src: Path, stream: IO[bytes], uid: int, gid: int) -> None:
    """Write the folder ``src`` to ``stream`` as a tar stream whose files all belong to
    ``uid:gid`` (the guest user), whatever owns them on the host."""
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        tf.add(src, arcname=".", filter=owned)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _overlay(src: Path, dst: Path) -> None:
    """Move the tree ``src`` onto ``dst``; where both have an entry, ``src`` wins."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            if not target.is_dir() or target.is_symlink():
                _remove(target)
            _overlay(entry, target)
        else:
            _remove(target)
            os.replace(entry, target)
