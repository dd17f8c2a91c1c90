"""The one mountinfo reader (fs/mountinfo.py) and what is built on it (fs/readahead.py)."""

from __future__ import annotations

from chute.fs import mountinfo, readahead

LINE = (rb"412 27 0:39 / /mnt/a\040dir-\303\251 rw,nosuid,nodev,relatime shared:1 - fuse.chute"
        rb" chute:bucket/pre\134fix rw,user_id=0,group_id=0")


def test_fields_are_unescaped_octal_only_and_decoded_as_file_names() -> None:
    (entry,) = mountinfo.parse(LINE + b"\n")
    assert entry == mountinfo.MountEntry(412, "/mnt/a dir-é", "fuse.chute",
                                         "chute:bucket/pre\\fix", "0:39")


def test_lines_without_mountinfo_shape_are_skipped() -> None:
    assert [e.mount_id for e in mountinfo.parse(b"\n garbage\nx y z - a b\n" + LINE)] == [412]


def test_readahead_is_left_alone_where_the_mount_is_unknown(caplog) -> None:
    caplog.set_level("INFO")
    assert readahead.widen("/no/such/mount") is False
    assert "readahead left at the kernel's default" in caplog.text
