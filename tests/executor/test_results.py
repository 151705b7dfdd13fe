"""Capped .vmr writers: the head is kept, the rest counted, the cut made visible."""

from __future__ import annotations

from vmchecker.executor import results


def test_capped_writer_keeps_the_head_and_says_how_much_was_cut(tmp_path):
    w = results.CappedWriter(tmp_path / "x.vmr", 10)
    w.write(b"0123456")
    w.write(b"789abcdef")
    w.close()
    assert (tmp_path / "x.vmr").read_bytes() == b"0123456789" + results.truncation_line(10, 6)


def test_capped_writer_under_the_cap_has_no_marker(tmp_path):
    w = results.CappedWriter(tmp_path / "x.vmr", 10)
    w.write(b"short")
    w.close()
    assert (tmp_path / "x.vmr").read_bytes() == b"short"


def test_result_names_that_are_not_printable_utf8_never_leave_the_tester(tmp_path):
    """A name with a newline would forge log lines; one that is not UTF-8 would break the
    storer's XML-RPC parser and get the job resent and the tester penalised."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = results.ResultFiles(bundle, 1024)
    guest = tmp_path / "from-guest"
    guest.mkdir()
    bad = ["evil\nline.vmr", "bell\x07.vmr", "tab\t.vmr", "latin1-\udce9.vmr"]
    for name in [*bad, "ok-é.vmr", "grade.vmr"]:
        (guest / name).write_bytes(b"x")
    out.take_guest_files(guest)
    job = results.JobResult(job_id="j", backend="test")
    out.finish(job)
    kept = {p.name for p in out.dir.iterdir()}
    assert {"ok-é.vmr", "grade.vmr"} <= kept
    assert not kept & set(bad)
    errors = (out.dir / "vmchecker-stderr.vmr").read_text(errors="replace")
    assert errors.count("not printable UTF-8") == len(bad) and "\nline.vmr" not in errors
    assert job.grade_file


def test_no_grade_file_from_the_guest_is_said_in_result_json(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = results.ResultFiles(bundle, 1024)
    job = results.JobResult(job_id="j", backend="test")
    out.finish(job)
    assert not (out.dir / "grade.vmr").exists() and job.grade_file is False
