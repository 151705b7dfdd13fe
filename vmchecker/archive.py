"""Safe unpacking of untrusted zip and tar(.gz) archives.

Student uploads (and, on a tester, bundles) are hostile until proven otherwise, so
nothing here uses ``extractall``. Each member is checked and written by hand:

* names: no absolute paths, no ``..`` component, no NUL, backslash or control
  character, valid UTF-8, bounded length; ``./`` and ``//`` are tolerated and
  normalised; the same normalised name twice, or a name that is both a file and a
  folder, is refused;
* types: only regular files and folders. **Every link is refused**, symbolic or hard,
  even one that points inside the tree: a build does not need them and accepting
  "in-tree" links opens write-through-a-link tricks. Devices, fifos, sockets and
  sparse files are refused too;
* sizes: the member count, the total unpacked size and the compression ratio are
  checked on the declared sizes first and again on the bytes really written (headers
  are never trusted); a tar stream is also capped as a whole, so header bombs stop;
* tar extension headers (pax, GNU long names and links) are read whole by ``tarfile``,
  so their declared size is checked in the header block first: one larger than
  :data:`MAX_TAR_EXTENSION` or a chain of more than :data:`MAX_TAR_EXTENSION_CHAIN`
  of them is refused before a byte of it is read (memory stays bounded whatever the
  archive declares);
* files are created with ``O_EXCL | O_NOFOLLOW`` and get mode 0644, or 0755 when the
  archive gave them an exec bit; folders 0755. No setuid, setgid or sticky bit survives.

On any refusal the destination folder is removed entirely and :class:`ArchiveError`
names the member and what was wrong with it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmchecker.errors import ArchiveError

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import IO

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_CHUNK = 64 * 1024
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_BLOCK = 512
# Bytes a tar stream may hold beyond its file data: headers, padding, long names.
_TAR_OVERHEAD_PER_MEMBER = 8 * 1024
_TAR_OVERHEAD = 1 * MiB
# A pax header or a GNU long name/link larger than this is refused unread: real ones
# hold a name, a link target and a few times, far below it.
MAX_TAR_EXTENSION = 64 * 1024
MAX_TAR_EXTENSION_CHAIN = 8    # extension headers in a row before one member
_TAR_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                   tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# Errors of the archive libraries that mean "this archive is broken".
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
            EOFError, gzip.BadGzipFile, NotImplementedError, UnicodeDecodeError, ValueError)


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied while unpacking one archive."""

    max_members: int = 2000
    max_total_size: int = 256 * MiB
    max_ratio: float = 200
    # The ratio is only enforced once this many bytes are unpacked: a small file of
    # zeros is no bomb, and refusing it would only puzzle a student.
    ratio_floor: int = 1 * MiB
    max_name_length: int = 1024


def detect_format(path: Path) -> str:
    """``"zip"`` or ``"tar"`` (plain or gzip-compressed), judged by content, not name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head in _ZIP_MAGIC:
                return "zip"
            f.seek(0)
            if head[:2] == _GZIP_MAGIC:
                block = _gunzip_head(f)
            else:
                block = f.read(_TAR_BLOCK)
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive: {exc.strerror}") from None
    if _is_tar_block(block):
        return "tar"
    raise ArchiveError("not a zip or tar.gz archive")


def _gunzip_head(f: IO[bytes]) -> bytes:
    try:
        with gzip.GzipFile(fileobj=f) as gz:
            return gz.read(_TAR_BLOCK)
    except (OSError, EOFError, zlib.error):
        return b""


def _is_tar_block(block: bytes) -> bool:
    if len(block) != _TAR_BLOCK:
        return False
    if block == bytes(_TAR_BLOCK):  # an empty tar
        return True
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def safe_extract(path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[str]:  # noqa: B008
    """Unpack ``path`` into ``dest`` (created; it must be absent or empty).

    Returns the relative paths of the regular files written, in archive order.
    Raises ArchiveError, leaving no ``dest`` behind, if the archive is refused."""
    path, dest = Path(path), Path(dest)
    fmt = detect_format(path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: the destination exists and is not an empty folder")
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        tree = _Tree(dest, limits, max(path.stat().st_size, 1))
        try:
            if fmt == "zip":
                _extract_zip(path, tree)
            else:
                _extract_tar(path, tree)
        except _CORRUPT as exc:
            raise ArchiveError(f"corrupt or unsupported archive: {exc}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    log.debug("unpacked %s into %s: %d files, %d bytes", path, dest, len(tree.files), tree.written)
    return tree.files


def _refuse(raw: str, reason: str) -> ArchiveError:
    shown = repr(raw) if len(raw) <= 200 else repr(raw[:200]) + "..."
    return ArchiveError(f"archive member {shown} {reason}")


def clean_name(raw: str, limits: ArchiveLimits) -> tuple[str, ...]:
    """The components of a member name, or ArchiveError if the name is unsafe or odd."""
    if "\x00" in raw:
        raise _refuse(raw, "contains a NUL byte")
    if "\\" in raw:
        raise _refuse(raw, "contains a backslash")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise _refuse(raw, "contains a control character")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(raw, "is not valid UTF-8") from None
    if len(encoded) > limits.max_name_length:
        raise _refuse(raw, f"has a name longer than {limits.max_name_length} bytes")
    if raw.startswith("/"):
        raise _refuse(raw, "is an absolute path")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(raw, "has a '..' component (it would land outside the folder)")
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        raise _refuse(raw, "has a path component longer than 255 bytes")
    return parts


class _Tree:
    """The destination folder being filled: what exists, how much was written."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive_size: int):
        self.dest = dest
        self.limits = limits
        self.archive_size = archive_size
        self.kinds: dict[tuple[str, ...], str] = {(): "dir"}
        self.files: list[str] = []
        self.members = 0
        self.declared = 0
        self.written = 0

    def count(self, raw: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveError(f"the archive has more than {self.limits.max_members} members"
                               f" (refused at {raw[:200]!r})")

    def _check_size(self, raw: str, total: int, what: str) -> None:
        lim = self.limits
        if total > lim.max_total_size:
            raise ArchiveError(f"the archive {what} more than {lim.max_total_size} bytes"
                               f" (limit reached at member {raw[:200]!r})")
        if total > lim.ratio_floor and total / self.archive_size > lim.max_ratio:
            raise ArchiveError(f"the archive {what} {total} bytes from {self.archive_size} compressed:"
                               f" a compression ratio above {lim.max_ratio:g}"
                               f" (refused at member {raw[:200]!r})")

    def declare(self, raw: str, size: int) -> None:
        """Account for a member's declared size before writing it."""
        if size < 0:
            raise _refuse(raw, "declares a negative size")
        self.declared += size
        self._check_size(raw, self.declared, "declares")

    def _claim(self, raw: str, parts: tuple[str, ...], kind: str) -> None:
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if self.kinds.get(prefix) == "file":
                raise _refuse(raw, f"is inside {'/'.join(prefix)!r}, which is a file")
            self.kinds[prefix] = "dir"
        seen = self.kinds.get(parts)
        if seen == "file" or (seen == "dir" and kind == "file"):
            raise _refuse(raw, "is a duplicate of an earlier member" if seen == kind
                          else "is both a file and a folder")
        self.kinds[parts] = kind

    def _mkdirs(self, parts: tuple[str, ...]) -> None:
        folder = self.dest
        for p in parts:
            folder = folder / p
            if not folder.is_dir():
                os.mkdir(folder, 0o755)
                os.chmod(folder, 0o755)

    def add_dir(self, raw: str, parts: tuple[str, ...]) -> None:
        if not parts:
            return  # "./": the destination itself
        self._claim(raw, parts, "dir")
        self._mkdirs(parts)

    def add_file(self, raw: str, parts: tuple[str, ...], size: int, executable: bool,
                 chunks: Iterable[bytes]) -> None:
        if not parts:
            raise _refuse(raw, "has an empty name")
        self._claim(raw, parts, "file")
        self._mkdirs(parts[:-1])
        target = self.dest.joinpath(*parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            got = 0
            for chunk in chunks:
                got += len(chunk)
                if got > size:
                    raise _refuse(raw, f"holds more data than the {size} bytes its header declares")
                self.written += len(chunk)
                self._check_size(raw, self.written, "unpacks to")
                out.write(chunk)
            os.fchmod(out.fileno(), 0o755 if executable else 0o644)
        self.files.append("/".join(parts))


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(_CHUNK):
        yield chunk


# --------------------------------------------------------------------------- zip


def _zip_type(info: zipfile.ZipInfo) -> tuple[int, int]:
    """(file type bits, permission bits) from a unix-made member; (0, 0) otherwise."""
    if info.create_system != 3:
        return 0, 0
    mode = info.external_attr >> 16
    return stat.S_IFMT(mode), stat.S_IMODE(mode)


def _extract_zip(path: Path, tree: _Tree) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > tree.limits.max_members:
            raise ArchiveError(f"the archive has {len(infos)} members;"
                               f" at most {tree.limits.max_members} are accepted")
        planned = []
        for info in infos:  # every check that needs no data, before writing anything
            raw = info.orig_filename
            parts = clean_name(raw, tree.limits)
            ftype, perms = _zip_type(info)
            if ftype == stat.S_IFLNK:
                raise _refuse(raw, "is a symbolic link (links are not accepted)")
            if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(raw, "is a device, fifo or socket (only files and folders are accepted)")
            if info.flag_bits & 0x1:
                raise _refuse(raw, "is encrypted")
            is_dir = info.is_dir() or ftype == stat.S_IFDIR
            if not is_dir:
                tree.declare(raw, info.file_size)
            planned.append((info, raw, parts, is_dir, bool(perms & 0o111)))
        for info, raw, parts, is_dir, executable in planned:
            tree.count(raw)
            if is_dir:
                tree.add_dir(raw, parts)
                continue
            with zf.open(info) as src:
                tree.add_file(raw, parts, info.file_size, executable, _read_chunks(src))


# --------------------------------------------------------------------------- tar


class _CappedReader:
    """A read-only stream that refuses to deliver more than ``cap`` bytes in total."""

    def __init__(self, src: IO[bytes], cap: int):
        self.src = src
        self.cap = cap
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        want = self.cap + 1 - self.count
        data = self.src.read(want if size is None or size < 0 else min(size, want))
        self.count += len(data)
        if self.count > self.cap:
            raise ArchiveError(f"the archive unpacks to more than {self.cap} bytes of tar data")
        return data

    def close(self) -> None:
        self.src.close()


class _CappedTarInfo(tarfile.TarInfo):
    """A tar header whose extension headers are size-checked before ``tarfile`` reads them.

    ``tarfile`` reads a pax header or a GNU long name whole into memory (and a chain of
    them recursively, holding each), trusting the size field of its header block. Here
    that field and the length of the chain are checked first; a sparse member is refused
    before its extension blocks are read."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _refuse(self.name, "is a sparse file (not accepted)")
        if self.type not in _TAR_EXTENSIONS:
            tf._vmchecker_chain = 0  # type: ignore[attr-defined]
            return super()._proc_member(tf)  # type: ignore[misc]
        chain = getattr(tf, "_vmchecker_chain", 0) + 1
        tf._vmchecker_chain = chain  # type: ignore[attr-defined]
        if self.size > MAX_TAR_EXTENSION:
            raise ArchiveError(f"the archive has a tar extension header (pax or long name) of {self.size}"
                               f" bytes; at most {MAX_TAR_EXTENSION} are accepted")
        if chain > MAX_TAR_EXTENSION_CHAIN:
            raise ArchiveError(f"the archive has more than {MAX_TAR_EXTENSION_CHAIN} tar extension headers"
                               " (pax or long name) in a row")
        return super()._proc_member(tf)  # type: ignore[misc]


def _extract_tar(path: Path, tree: _Tree) -> None:
    lim = tree.limits
    cap = lim.max_total_size + lim.max_members * _TAR_OVERHEAD_PER_MEMBER + _TAR_OVERHEAD
    with open(path, "rb") as raw_file:
        gz = raw_file.read(2) == _GZIP_MAGIC
        raw_file.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw_file) if gz else raw_file
        reader = _CappedReader(stream, cap)
        with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape",
                          tarinfo=_CappedTarInfo) as tf:
            for member in tf:
                _extract_tar_member(tf, member, tree)


def _extract_tar_member(tf: tarfile.TarFile, m: tarfile.TarInfo, tree: _Tree) -> None:
    raw = m.name
    tree.count(raw)
    parts = clean_name(raw, tree.limits)
    if m.issym():
        raise _refuse(raw, f"is a symbolic link to {m.linkname!r} (links are not accepted)")
    if m.islnk():
        raise _refuse(raw, f"is a hard link to {m.linkname!r} (links are not accepted)")
    if m.ischr() or m.isblk():
        raise _refuse(raw, "is a device file (only files and folders are accepted)")
    if m.isfifo():
        raise _refuse(raw, "is a fifo (only files and folders are accepted)")
    if m.issparse():
        raise _refuse(raw, "is a sparse file (not accepted)")
    if m.isdir():
        tree.add_dir(raw, parts)
        return
    if not m.isreg():
        raise _refuse(raw, f"has an unsupported type {m.type!r} (only files and folders are accepted)")
    tree.declare(raw, m.size)
    src = tf.extractfile(m)
    if src is None:  # not reachable for a regular member; kept for the type checker
        raise _refuse(raw, "cannot be read")
    tree.add_file(raw, parts, m.size, bool(m.mode & 0o111), _read_chunks(src))
