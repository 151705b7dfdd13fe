"""What enters the guest: course files always win over student files of the same name."""

from __future__ import annotations

import io
import tarfile

from tests.executor.helpers import make_bundle
from vmchecker.executor import payload


def test_course_files_win_over_student_files(tmp_path):
    files = {"build.sh/x": "a folder named like the build script", "expected.txt": "forged", "a/b.c": "kept"}
    bundle_dir, _ = make_bundle(tmp_path / "bundle", files=files, tests={"expected.txt": "real", "a/t.txt": "t"})
    folder = payload.prepare_payload(bundle_dir, tmp_path / "work")
    assert (folder / "build.sh").read_text() == (bundle_dir / "build.sh").read_text()
    assert (folder / "expected.txt").read_text() == "real"
    assert (folder / "a" / "b.c").read_text() == "kept" and (folder / "a" / "t.txt").read_text() == "t"


def test_the_payload_travels_owned_by_the_guest_user(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "a.c").write_text("int x;")
    buf = io.BytesIO()
    payload.write_payload(tmp_path / "src", buf, 1500, 1501)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        members = {m.name: (m.uid, m.gid, m.uname, m.gname) for m in tf}
    assert set(members) == {".", "./sub", "./sub/a.c"}
    assert set(members.values()) == {(1500, 1501, "", "")}
