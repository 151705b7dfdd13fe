"""Storing uploads: layout, every refusal leaving nothing behind, concurrency, rechecks."""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import os
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, HELLO_MAKEFILE, make_targz, make_zip, write_course, zip_bytes
from vmchecker import config
from vmchecker.config import CourseConfig
from vmchecker.contract import SubmissionStatus
from vmchecker.errors import ArchiveError, NotFound, SubmissionRefused, VmcheckerError
from vmchecker.repo import Repository, Submission, load_submission
from vmchecker.submit import recheck, submit

T = dt.datetime(2026, 2, 20, 10, 0, 0)
HELLO = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root with its content (files) or link target (links)."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


def special_course(tmp_path: Path, **assignment: object) -> CourseConfig:
    """The test course with extra keys on 1-hello and a hidden 2-secret."""
    extra = {"assignments": {
        "1-hello": {"title": "Hello, world", "deadline": "2026-03-01 23:55:00", "machine": "linux", **assignment},
        "2-secret": {"deadline": "2026-04-01 23:55:00", "machine": "linux", "hidden": True},
    }}
    return config.load_course(write_course(tmp_path / "special", extra=extra))


# --------------------------------------------------------------------------- storing


def test_submit_stores_the_layout(course: CourseConfig) -> None:
    data = zip_bytes(HELLO)
    sub = submit(course, "1-hello", "bob", data, upload_time=T)
    account_dir = course.repository / "1-hello" / "bob"
    assert sub.path == account_dir / "2026.02.20 10.00.00"
    assert sub.archive_path.read_bytes() == data
    assert (sub.files_dir / "hello.c").read_text() == HELLO_C
    assert (sub.results_dir / "grade.vmr").read_text() == "saved\n"
    assert sub.status() is SubmissionStatus.SAVED
    info = yaml.safe_load(sub.config_path.read_text())
    assert info["course"] == "so" and info["account"] == "bob" and info["assignment"] == "1-hello"
    assert info["upload_time"] == "2026-02-20 10:00:00" and info["machine"] == "linux"
    assert info["size"] == len(data)
    link = account_dir / "current"
    assert link.is_symlink() and os.readlink(link) == "2026.02.20 10.00.00"  # relative
    assert Repository(course).current("1-hello", "bob") == sub
    assert not [p for p in course.repository.iterdir() if p.name.startswith(".incoming")]


def test_submit_from_a_targz_file(course: CourseConfig, tmp_path: Path) -> None:
    src = make_targz(tmp_path / "upload.tar.gz", HELLO)
    sub = submit(course, "1-hello", "bob", src, upload_time=T)
    assert sub.archive_path.read_bytes() == src.read_bytes()  # kept as uploaded
    assert (sub.files_dir / "Makefile").read_text() == HELLO_MAKEFILE


def test_same_second_uploads_get_a_suffix(course: CourseConfig) -> None:
    names = [submit(course, "1-hello", "bob", zip_bytes({"n": str(i)}), upload_time=T, skip_time_checks=True).name
             for i in range(3)]
    assert names == ["2026.02.20 10.00.00", "2026.02.20 10.00.00.1", "2026.02.20 10.00.00.2"]
    repo = Repository(course)
    assert [s.name for s in repo.history("1-hello", "bob")] == names
    current = repo.current("1-hello", "bob")
    assert current is not None and current.name == names[-1]
    assert (current.files_dir / "n").read_text() == "2"


def test_later_upload_moves_current_and_keeps_the_earlier(course: CourseConfig) -> None:
    first = submit(course, "1-hello", "bob", zip_bytes({"v": "1"}), upload_time=T)
    second = submit(course, "1-hello", "bob", zip_bytes({"v": "2"}), upload_time=T + dt.timedelta(minutes=5))
    assert Repository(course).current("1-hello", "bob") == second
    assert (first.files_dir / "v").read_text() == "1"


def test_notify_sees_a_durable_current_submission(course: CourseConfig) -> None:
    seen: list[Submission] = []

    def notify(sub: Submission) -> None:
        assert sub.archive_path.is_file()
        assert Repository(course).current(sub.assignment, sub.account) == sub
        seen.append(sub)

    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T, notify=notify)
    assert seen == [sub]


def test_failing_notify_does_not_undo_the_save(course: CourseConfig) -> None:
    def notify(sub: Submission) -> None:
        raise VmcheckerError("daemon unreachable")

    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T, notify=notify)
    assert sub.archive_path.is_file() and sub.status() is SubmissionStatus.SAVED


def test_a_submit_only_upload_is_stored_and_never_handed_on(tmp_path: Path) -> None:
    course = config.load_course(write_course(tmp_path, extra={"assignments": {"1-hello": {"submit_only": True}}}))
    called: list[Submission] = []
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T, notify=called.append)
    assert called == [] and sub.archive_path.is_file() and sub.status() is SubmissionStatus.SAVED


def test_admin_may_submit_a_hidden_assignment(tmp_path: Path) -> None:
    course = special_course(tmp_path)
    sub = submit(course, "2-secret", "alice", zip_bytes(HELLO), upload_time=T)
    assert sub.assignment == "2-secret"


def test_skip_time_checks_accepts_outside_the_window(course: CourseConfig) -> None:
    late = dt.datetime(2026, 9, 1, 12, 0, 0)
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=late, skip_time_checks=True)
    assert sub.upload_time == late


def test_hard_deadline_has_a_60_second_grace(tmp_path: Path) -> None:
    course = special_course(tmp_path, hard_deadline=True, min_interval=0)
    deadline = course.assignments["1-hello"].deadline
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=deadline + dt.timedelta(seconds=60))
    assert sub.upload_time == deadline + dt.timedelta(seconds=60)


def test_soft_deadline_accepts_late_uploads(course: CourseConfig) -> None:
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=dt.datetime(2026, 3, 20, 8, 0, 0))
    assert sub.status() is SubmissionStatus.SAVED


def test_unknown_account_name_is_refused(course: CourseConfig) -> None:
    with pytest.raises(VmcheckerError, match="bad account name"):
        submit(course, "1-hello", "../root", zip_bytes(HELLO), upload_time=T)
    assert not (course.repository / "root").exists()


def test_missing_archive_file(course: CourseConfig, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        submit(course, "1-hello", "bob", tmp_path / "nope.zip", upload_time=T)


# --------------------------------------------------------------------------- refusals


def _hostile_zip_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (0o120777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _hostile_tar(kind: bytes, name: str, linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tf.addfile(info)
    return buf.getvalue()


REFUSALS = {
    "before the window": (dict(upload_time=dt.datetime(2026, 2, 15, 23, 59, 59)), "open at 2026-02-16 00:00:00"),
    "after the window": (dict(upload_time=dt.datetime(2026, 7, 1, 0, 0, 0)), "closed at 2026-06-30 23:59:00"),
    "past the hard deadline": (dict(upload_time=dt.datetime(2026, 3, 1, 23, 56, 1)), "hard deadline"),
    "unknown assignment": (dict(assignment="9-nope"), "has no assignment '9-nope'"),
    "hidden assignment": (dict(assignment="2-secret"), "has no assignment '2-secret'"),
    "too big": (dict(data=os.urandom(3000)), "accepts at most 2048 bytes"),
    "not an archive": (dict(data=b"print('hello')\n"), "not a zip or tar.gz archive"),
    "absolute path": (dict(data=zip_bytes({"/tmp/evil": "x"})), "absolute path"),
    "dot-dot": (dict(data=zip_bytes({"../evil": "x"})), "'..'"),
    "symlink": (dict(data=_hostile_zip_symlink()), "symbolic link"),
    "hardlink out": (dict(data=_hostile_tar(tarfile.LNKTYPE, "x", "/etc/shadow")), "hard link"),
    "device file": (dict(data=_hostile_tar(tarfile.CHRTYPE, "null")), "device file"),
    "too many members": (dict(data=zip_bytes({f"f{i}": "" for i in range(2001)}), size="1M"), "at most 2000"),
    "zip bomb": (dict(data=zip_bytes({"zeros": bytes(5 * 1024 * 1024)}), size="1M"), "compression ratio"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_upload_leaves_nothing_and_keeps_earlier(tmp_path: Path, case: str) -> None:
    args, message = REFUSALS[case]
    course = special_course(tmp_path, hard_deadline=True, min_interval=0,
                            max_submission_size=args.get("size", "2K"))
    earlier = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T)
    before = snapshot(course.repository)
    with pytest.raises(SubmissionRefused, match=message):
        submit(course, args.get("assignment", "1-hello"), "bob", args.get("data", zip_bytes(HELLO)),
               upload_time=args.get("upload_time", T + dt.timedelta(minutes=10)))
    assert snapshot(course.repository) == before
    assert Repository(course).current("1-hello", "bob") == earlier
    # and for an account with no upload yet, not even a folder appears
    with pytest.raises(SubmissionRefused, match=message):
        submit(course, args.get("assignment", "1-hello"), "carol", args.get("data", zip_bytes(HELLO)),
               upload_time=args.get("upload_time", T + dt.timedelta(minutes=10)))
    assert snapshot(course.repository) == before


def test_hostile_archive_error_is_an_archive_error(course: CourseConfig) -> None:
    with pytest.raises(ArchiveError, match="archive refused: archive member '../x'"):
        submit(course, "1-hello", "bob", zip_bytes({"../x": "1"}), upload_time=T)


def test_minimum_interval_says_how_long_to_wait(course: CourseConfig) -> None:
    first = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T)
    before = snapshot(course.repository)
    with pytest.raises(SubmissionRefused, match="wait 90 more seconds"):
        submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T + dt.timedelta(seconds=30))
    assert snapshot(course.repository) == before
    # another account is not held back, and after the interval bob may upload again
    submit(course, "1-hello", "carol", zip_bytes(HELLO), upload_time=T + dt.timedelta(seconds=30))
    second = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T + dt.timedelta(seconds=120))
    assert Repository(course).history("1-hello", "bob") == [first, second]


def _spy_unpacking(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every archive submit unpacks (and unpack it as usual)."""
    import vmchecker.submit as submit_module
    seen: list[Path] = []
    real = submit_module.safe_extract

    def spy(path: Path, dest: Path, *args: object) -> list[str]:
        seen.append(path)
        return real(path, dest, *args)
    monkeypatch.setattr(submit_module, "safe_extract", spy)
    return seen


def test_interval_is_checked_before_unpacking(course: CourseConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb within the interval is refused for the interval, never unpacked."""
    unpacked = _spy_unpacking(monkeypatch)
    submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T)
    assert len(unpacked) == 1
    bomb = zip_bytes({"zeros": bytes(5 * 1024 * 1024)})
    with pytest.raises(SubmissionRefused, match="120 s apart: wait 110 more seconds"):
        submit(course, "1-hello", "bob", bomb, upload_time=T + dt.timedelta(seconds=10))
    assert len(unpacked) == 1


def test_refused_uploads_are_throttled_too(course: CourseConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive refused while unpacking counts toward the interval: a stream of bombs
    costs the storer one unpack per min_interval, not one per request."""
    unpacked = _spy_unpacking(monkeypatch)
    bomb = zip_bytes({"zeros": bytes(5 * 1024 * 1024)})
    with pytest.raises(ArchiveError, match="compression ratio"):
        submit(course, "1-hello", "bob", bomb, upload_time=T)
    for seconds in (1, 60, 119):
        with pytest.raises(SubmissionRefused, match="1-hello at 2026-02-20 10:00:00 was refused; uploads, refused ones too, must be 120 s apart"):
            submit(course, "1-hello", "bob", bomb, upload_time=T + dt.timedelta(seconds=seconds))
    assert len(unpacked) == 1
    assert Repository(course).accounts("1-hello") == []                      # no account folder appeared
    submit(course, "1-hello", "carol", zip_bytes(HELLO), upload_time=T + dt.timedelta(seconds=1))  # others go on
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T + dt.timedelta(seconds=120))
    assert Repository(course).history("1-hello", "bob") == [sub]


def test_account_storage_quota(tmp_path: Path) -> None:
    """course.max_account_storage sums the account's submissions over every assignment;
    the refusal names the limit and the use."""
    extra = {"course": {"max_account_storage": "40K"},
             "assignments": {"defaults": {"min_interval": 0},
                             "2-more": {"deadline": "2026-04-01 23:55:00", "machine": "linux"}}}
    course = config.load_course(write_course(tmp_path, extra=extra))
    assert course.course.max_account_storage == 40 * 1024
    payload = {"data.bin": os.urandom(12 * 1024)}      # archive + unpacked: about 24 KiB per upload
    submit(course, "1-hello", "bob", zip_bytes(payload), upload_time=T)
    before = snapshot(course.repository)
    with pytest.raises(SubmissionRefused) as err:
        submit(course, "2-more", "bob", zip_bytes(payload), upload_time=T + dt.timedelta(minutes=1))
    message = err.value.message
    assert "max_account_storage" in message and str(40 * 1024) in message and "already take" in message
    used = int(message.split("already take ")[1].split()[0])
    assert 24 * 1024 <= used < 40 * 1024
    assert snapshot(course.repository) == before
    submit(course, "1-hello", "carol", zip_bytes(payload), upload_time=T)     # per account
    # the archive alone fits but its unpacked files do not: refused after unpacking, nothing kept
    small = zip_bytes({"zeros": bytes(30 * 1024)})
    with pytest.raises(SubmissionRefused, match="max_account_storage"):
        submit(course, "2-more", "bob", small, upload_time=T + dt.timedelta(minutes=2))
    assert snapshot(course.repository)["1-hello/bob/current"] == before["1-hello/bob/current"]
    assert not (course.repository / "2-more" / "bob").exists()


def test_hidden_and_unknown_assignments_read_the_same(tmp_path: Path) -> None:
    course = special_course(tmp_path)
    messages = []
    for name in ("2-secret", "3-missing"):
        with pytest.raises(SubmissionRefused) as err:
            submit(course, name, "bob", zip_bytes(HELLO), upload_time=T)
        messages.append(err.value.message.replace(name, "X"))
    assert messages[0] == messages[1]


# --------------------------------------------------------------------------- recheck


def test_recheck_moves_results_aside(course: CourseConfig) -> None:
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T)
    (sub.results_dir / "grade.vmr").write_text("-1: leak\n")
    (sub.results_dir / "run-stdout.vmr").write_text("Hello, world!\n")
    sub = sub.update_info(job_id="job-1", tester="t1")

    again = recheck(sub)
    assert again.status() is SubmissionStatus.SAVED
    assert (again.path / "results.1/grade.vmr").read_text() == "-1: leak\n"
    assert (again.path / "results.1/run-stdout.vmr").read_text() == "Hello, world!\n"
    assert sorted(p.name for p in again.results_dir.iterdir()) == ["grade.vmr"]
    assert again.info.job_id == "" and load_submission(again.path).info.job_id == ""

    (again.results_dir / "grade.vmr").write_text("done\n")
    third = recheck(again)
    assert [p.name for p in third.earlier_results()] == ["results.1", "results.2"]
    assert (third.path / "results.2/grade.vmr").read_text() == "done\n"
    assert (third.path / "results.1/grade.vmr").read_text() == "-1: leak\n"
    assert third.archive_path.read_bytes() == sub.archive_path.read_bytes()


def test_recheck_takes_the_next_free_number_and_calls_notify(course: CourseConfig) -> None:
    sub = submit(course, "1-hello", "bob", zip_bytes(HELLO), upload_time=T)
    (sub.path / "results.4").mkdir()
    seen = []
    again = recheck(sub, notify=seen.append)
    assert (again.path / "results.5/grade.vmr").read_text() == "saved\n"
    assert seen == [again]


# --------------------------------------------------------------------------- concurrency


def test_concurrent_threads_lose_nothing(course: CourseConfig) -> None:
    jobs = [("bob", i) for i in range(8)] + [(f"acct{i}", i) for i in range(8)]

    def one(job: tuple[str, int]) -> Submission:
        account, i = job
        return submit(course, "1-hello", account, zip_bytes({"who": f"{account}-{i}"}),
                      upload_time=T, skip_time_checks=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        subs = list(pool.map(one, jobs))
    assert len({s.path for s in subs}) == len(jobs)
    repo = Repository(course)
    bob = repo.history("1-hello", "bob")
    assert sorted(s.name for s in bob) == ["2026.02.20 10.00.00"] + [f"2026.02.20 10.00.00.{n}" for n in range(1, 8)]
    assert sorted((s.files_dir / "who").read_text() for s in bob) == [f"bob-{i}" for i in range(8)]
    assert repo.current("1-hello", "bob") == bob[-1]
    for i in range(8):
        current = repo.current("1-hello", f"acct{i}")
        assert current is not None and (current.files_dir / "who").read_text() == f"acct{i}-{i}"
    assert not [p for p in course.repository.iterdir() if p.name.startswith(".incoming")]


def _submit_in_process(config_path: str, i: int) -> str:
    course = config.load_course(config_path)
    sub = submit(course, "1-hello", "bob", zip_bytes({"who": str(i)}), upload_time=T, skip_time_checks=True)
    return sub.name


def test_concurrent_processes_lose_nothing(course: CourseConfig) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        names = pool.starmap(_submit_in_process, [(str(course.path), i) for i in range(8)])
    assert sorted(names) == ["2026.02.20 10.00.00"] + [f"2026.02.20 10.00.00.{n}" for n in range(1, 8)]
    repo = Repository(course)
    history = repo.history("1-hello", "bob")
    assert sorted((s.files_dir / "who").read_text() for s in history) == [str(i) for i in range(8)]
    for s in history:
        with zipfile.ZipFile(s.archive_path) as zf:
            assert zf.read("who").decode() == (s.files_dir / "who").read_text()
    assert repo.current("1-hello", "bob") == history[-1]


def test_upload_time_defaults_to_now_in_stored_order(tmp_path: Path) -> None:
    course = special_course(tmp_path, min_interval=0)
    subs = [submit(course, "1-hello", "bob", make_zip(tmp_path / f"{i}.zip", {"i": str(i)}), skip_time_checks=True)
            for i in range(2)]
    assert subs[0].upload_time <= subs[1].upload_time
    assert Repository(course).current("1-hello", "bob") == subs[1]
