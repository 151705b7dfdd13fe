"""Safe unpacking: good archives unpack with sane modes, hostile ones are refused whole."""

from __future__ import annotations

import bz2
import gzip
import io
import stat
import tarfile
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.util import make_targz, make_zip
from vmchecker.archive import ArchiveLimits, detect_format, safe_extract
from vmchecker.errors import ArchiveError

# --------------------------------------------------------------------------- builders


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return path


def _zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz",
         fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, mode, format=fmt) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info


def _patched_zip(path: Path, placeholder: bytes, real: bytes) -> Path:
    """A zip whose member name is changed after writing (zipfile cannot write NUL)."""
    _zip(path, [(placeholder.decode(), b"data")])
    raw = path.read_bytes()
    assert raw.count(placeholder) == 2  # local header and central directory
    path.write_bytes(raw.replace(placeholder, real))
    return path


# --------------------------------------------------------------------------- good archives


def test_zip_unpacks_files_and_folders(tmp_path: Path) -> None:
    src = make_zip(tmp_path / "a.zip", {"hello.c": "int main;", "sub/dir/data.txt": "x" * 10, "./dot.txt": "d"})
    files = safe_extract(src, tmp_path / "out")
    assert files == ["hello.c", "sub/dir/data.txt", "dot.txt"]
    assert (tmp_path / "out/sub/dir/data.txt").read_text() == "x" * 10
    assert (tmp_path / "out/hello.c").read_text() == "int main;"


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_tar_and_targz_unpack(tmp_path: Path, mode: str) -> None:
    src = _tar(tmp_path / "a.tar", [(_member("./", tarfile.DIRTYPE, mode=0o755), b""),
                                    (_member("./src/", tarfile.DIRTYPE, mode=0o755), b""),
                                    (_member("./src/main.c", mode=0o644), b"int main;")], mode)
    assert detect_format(src) == "tar"
    assert safe_extract(src, tmp_path / "out") == ["src/main.c"]
    assert (tmp_path / "out/src/main.c").read_bytes() == b"int main;"


def test_modes_keep_exec_bit_and_drop_setuid(tmp_path: Path) -> None:
    src = _tar(tmp_path / "m.tgz", [(_member("run.sh", mode=0o4777), b"#!/bin/sh\n"),
                                    (_member("notes.txt", mode=0o666), b"n"),
                                    (_member("bin", tarfile.DIRTYPE, mode=0o1777), b"")])
    out = tmp_path / "out"
    safe_extract(src, out)
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "notes.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "bin").stat().st_mode) == 0o755
    zsrc = _zip(tmp_path / "m.zip", [(_zip_info("tool", 0o100755 | stat.S_ISUID), b"x"),
                                     (_zip_info("plain", 0o100600), b"y")])
    safe_extract(zsrc, tmp_path / "zout")
    assert stat.S_IMODE((tmp_path / "zout/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "zout/plain").stat().st_mode) == 0o644


def test_small_file_of_zeros_is_no_bomb(tmp_path: Path) -> None:
    """Below the ratio floor a very compressible file is accepted."""
    src = make_zip(tmp_path / "z.zip", {"zeros.bin": bytes(512 * 1024)})
    assert safe_extract(src, tmp_path / "out") == ["zeros.bin"]


def test_empty_destination_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    safe_extract(make_zip(tmp_path / "a.zip", {"a": "1"}), tmp_path / "out")
    assert (tmp_path / "out/a").read_text() == "1"


def test_non_empty_destination_is_a_caller_bug(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(make_zip(tmp_path / "a.zip", {"a": "1"}), tmp_path / "out")
    assert (tmp_path / "out/keep").read_text() == "mine"


# --------------------------------------------------------------------------- format


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(make_zip(tmp_path / "a.bin", {"a": "1"})) == "zip"
    assert detect_format(make_targz(tmp_path / "b.bin", {"a": "1"})) == "tar"
    assert detect_format(_zip(tmp_path / "empty.zip", [])) == "zip"


@pytest.mark.parametrize("content", [
    b"just some text, not an archive\n",
    b"",
    gzip.compress(b"a gzip file that holds no tar" * 40),
    bz2.compress(b"x" * 1000),
    b"PK\x01\x02 not a real zip",
])
def test_not_an_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match="not a zip or tar.gz archive"):
        detect_format(path)
    with pytest.raises(ArchiveError, match="not a zip or tar.gz archive"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bz2_tar_is_refused(tmp_path: Path) -> None:
    src = _tar(tmp_path / "a.tar.bz2", [(_member("a"), b"1")], mode="w:bz2")
    with pytest.raises(ArchiveError, match="not a zip or tar.gz"):
        safe_extract(src, tmp_path / "out")


def test_truncated_targz_is_refused_as_corrupt(tmp_path: Path) -> None:
    src = make_targz(tmp_path / "a.tgz", {"a.bin": bytes(range(256)) * 400})
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- hostile

Builder = Callable[[Path], Path]
ZIP_SYMLINK = stat.S_IFLNK | 0o777
ZIP_FIFO = stat.S_IFIFO | 0o644
MB5_ZEROS = bytes(5 * 1024 * 1024)

HOSTILE: dict[str, tuple[Builder, str]] = {
    "zip absolute path": (lambda d: make_zip(d / "h.zip", {"/etc/cron.d/evil": "x"}), "is an absolute path"),
    "zip dot-dot": (lambda d: make_zip(d / "h.zip", {"ok.c": "1", "../../evil": "x"}), "'..' component"),
    "zip dot-dot inside": (lambda d: make_zip(d / "h.zip", {"a/../../evil": "x"}), "'..' component"),
    "zip symlink out": (lambda d: _zip(d / "h.zip", [(_zip_info("passwd", ZIP_SYMLINK), b"/etc/passwd")]),
                        "symbolic link"),
    "zip symlink in tree": (lambda d: _zip(d / "h.zip", [("a.c", b"1"), (_zip_info("b.c", ZIP_SYMLINK), b"a.c")]),
                            "symbolic link"),
    "zip fifo": (lambda d: _zip(d / "h.zip", [(_zip_info("pipe", ZIP_FIFO), b"")]), "device, fifo or socket"),
    "zip char device": (lambda d: _zip(d / "h.zip", [(_zip_info("null", stat.S_IFCHR | 0o666), b"")]),
                        "device, fifo or socket"),
    "zip backslash": (lambda d: make_zip(d / "h.zip", {"..\\..\\evil": "x"}), "backslash"),
    "zip NUL in name": (lambda d: _patched_zip(d / "h.zip", b"goodXname.c", b"good\x00name.c"), "NUL"),
    "zip control char": (lambda d: make_zip(d / "h.zip", {"new\nline": "x"}), "control character"),
    "zip duplicate": (lambda d: _zip(d / "h.zip", [("a.c", b"1"), ("./a.c", b"2")]), "duplicate"),
    "zip file and folder": (lambda d: make_zip(d / "h.zip", {"a": "1", "a/b": "2"}), "which is a file"),
    "zip folder then file": (lambda d: _zip(d / "h.zip", [("a/", b""), ("a", b"2")]), "both a file and a folder"),
    "zip too many members": (lambda d: make_zip(d / "h.zip", {f"f{i}": "" for i in range(2001)}),
                             "at most 2000"),
    "zip bomb by ratio": (lambda d: make_zip(d / "h.zip", {"zeros": MB5_ZEROS}), "compression ratio"),
    "zip overlong name": (lambda d: make_zip(d / "h.zip", {"d/" * 600 + "f": "x"}), "longer than"),
    "tar absolute path": (lambda d: _tar(d / "h.tgz", [(_member("/etc/evil"), b"x")]), "is an absolute path"),
    "tar dot-dot": (lambda d: _tar(d / "h.tgz", [(_member("ok"), b"1"), (_member("x/../../evil"), b"x")]),
                    "'..' component"),
    "tar symlink out": (lambda d: _tar(d / "h.tgz", [(_member("ok"), b"1"),
                                                     (_member("etc", tarfile.SYMTYPE, "/etc"), b"")]),
                        "symbolic link to '/etc'"),
    "tar symlink in tree": (lambda d: _tar(d / "h.tgz", [(_member("a"), b"1"),
                                                         (_member("b", tarfile.SYMTYPE, "a"), b"")]),
                            "symbolic link"),
    "tar hardlink out": (lambda d: _tar(d / "h.tgz", [(_member("shadow", tarfile.LNKTYPE, "../../etc/shadow"), b"")]),
                         "hard link"),
    "tar hardlink absolute": (lambda d: _tar(d / "h.tgz", [(_member("pw", tarfile.LNKTYPE, "/etc/passwd"), b"")]),
                              "hard link"),
    "tar char device": (lambda d: _tar(d / "h.tgz", [(_member("null", tarfile.CHRTYPE), b"")]), "device file"),
    "tar block device": (lambda d: _tar(d / "h.tgz", [(_member("sda", tarfile.BLKTYPE), b"")]), "device file"),
    "tar fifo": (lambda d: _tar(d / "h.tgz", [(_member("pipe", tarfile.FIFOTYPE), b"")]), "fifo"),
    "tar duplicate": (lambda d: _tar(d / "h.tgz", [(_member("a"), b"1"), (_member("./a"), b"2")]), "duplicate"),
    "tar too many members": (lambda d: _tar(d / "h.tgz", [(_member(f"f{i}"), b"") for i in range(2001)]),
                             "more than 2000 members"),
    "tar bomb by ratio": (lambda d: _tar(d / "h.tgz", [(_member("zeros"), MB5_ZEROS)]), "compression ratio"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    build, message = HOSTILE[case]
    src = build(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(src, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_refusal_names_the_member(tmp_path: Path) -> None:
    src = _tar(tmp_path / "h.tgz", [(_member("fine.c"), b"1"), (_member("evil", tarfile.SYMTYPE, "/root"), b"")])
    with pytest.raises(ArchiveError) as err:
        safe_extract(src, tmp_path / "out")
    assert "'evil'" in err.value.message


def test_refusal_after_files_were_written_removes_them(tmp_path: Path) -> None:
    """The bad member comes last: what was already written goes too."""
    good = [(_member(f"dir/f{i}.c"), b"int x;\n" * 100) for i in range(20)]
    src = _tar(tmp_path / "h.tgz", [*good, (_member("dir/null", tarfile.CHRTYPE), b"")])
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="device"):
        safe_extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_total_size_cap(tmp_path: Path, kind: str) -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes that do not compress much
    members = {"a.bin": payload, "b.bin": payload}
    src = make_zip(tmp_path / "t.zip", members) if kind == "zip" else make_targz(tmp_path / "t.tgz", members)
    with pytest.raises(ArchiveError, match="more than 15000 bytes"):
        safe_extract(src, tmp_path / "out", ArchiveLimits(max_total_size=15000))
    assert not (tmp_path / "out").exists()
    assert safe_extract(src, tmp_path / "ok", ArchiveLimits(max_total_size=30000)) == ["a.bin", "b.bin"]


def test_limits_are_configurable(tmp_path: Path) -> None:
    src = make_zip(tmp_path / "m.zip", {f"f{i}": "x" for i in range(5)})
    with pytest.raises(ArchiveError, match="at most 4"):
        safe_extract(src, tmp_path / "out", ArchiveLimits(max_members=4))
    ratio = make_zip(tmp_path / "r.zip", {"zeros": bytes(200 * 1024)})
    with pytest.raises(ArchiveError, match="ratio above 10"):
        safe_extract(ratio, tmp_path / "out", ArchiveLimits(max_ratio=10, ratio_floor=1024))


def test_zip_header_understating_size_is_not_trusted(tmp_path: Path) -> None:
    """A member declaring 10 bytes but holding 100 000 never yields more than declared."""
    src = make_zip(tmp_path / "lie.zip", {"big.bin": b"A" * 100_000})
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("big.bin")
    real = info.file_size.to_bytes(4, "little")
    fake = (10).to_bytes(4, "little")
    # uncompressed size: local header offset 22, central directory entry offset 24
    assert raw[22:26] == real
    raw[22:26] = fake
    cd = raw.rindex(b"PK\x01\x02")
    assert raw[cd + 24:cd + 28] == real
    raw[cd + 24:cd + 28] = fake
    src.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_header_bomb_is_stopped_by_the_stream_cap(tmp_path: Path) -> None:
    """A 2 MiB long-name header is read through the capped stream, not trusted."""
    src = _tar(tmp_path / "h.tgz", [(_member("n" * (2 * 1024 * 1024)), b"x")], fmt=tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError, match="extension header .* of 2097153 bytes; at most 65536"):
        safe_extract(src, tmp_path / "out", ArchiveLimits(max_total_size=1000, max_members=1))
    assert not (tmp_path / "out").exists()


def _extension_bomb(path: Path, kind: bytes, size: int) -> Path:
    """A tar.gz whose first header declares a ``kind`` extension header (pax, GNU long
    name) of ``size`` bytes, followed by that many bytes: a few KB on disk."""
    head = tarfile.TarInfo("././@PaxHeader" if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE) else "././@LongLink")
    head.type, head.size = kind, size
    with gzip.GzipFile(path, "wb", compresslevel=9) as gz:
        gz.write(head.tobuf(tarfile.USTAR_FORMAT))
        chunk = b"%d path=" % size + b"a" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            gz.write(chunk)
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_LONGLINK])
def test_huge_extension_header_is_refused_unread(tmp_path: Path, kind: bytes) -> None:
    """A 64 KB upload whose pax (or GNU long name) header declares 64 MiB: tarfile would
    read it whole; the size field is checked first, so memory and time stay small."""
    src = _extension_bomb(tmp_path / "bomb.tgz", kind, 64 * 1024 * 1024)
    assert src.stat().st_size < 128 * 1024
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ArchiveError, match="extension header"):
            safe_extract(src, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    assert time.monotonic() - started < 5
    assert not (tmp_path / "out").exists()


def test_chain_of_extension_headers_is_refused(tmp_path: Path) -> None:
    """Many small pax headers in a row: tarfile holds each while it recurses."""
    with gzip.GzipFile(tmp_path / "chain.tgz", "wb") as gz:
        for _ in range(50):
            record = b"30 comment=" + b"c" * 18 + b"\n"
            head = tarfile.TarInfo("././@PaxHeader")
            head.type, head.size = tarfile.XHDTYPE, len(record)
            gz.write(head.tobuf(tarfile.USTAR_FORMAT) + record.ljust(512, b"\0"))
    with pytest.raises(ArchiveError, match="extension headers .* in a row"):
        safe_extract(tmp_path / "chain.tgz", tmp_path / "out")


def test_ordinary_pax_and_gnu_long_names_still_unpack(tmp_path: Path) -> None:
    deep = "d" * 120 + "/" + "f" * 150 + ".c"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        src = _tar(tmp_path / f"ok{fmt}.tgz", [(_member(deep), b"int x;\n")], fmt=fmt)
        assert safe_extract(src, tmp_path / f"out{fmt}") == [deep]
