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
