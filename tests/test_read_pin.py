"""read_pin.pinned_error: a key or ETag from the store reaches the log and the error quoted."""

from __future__ import annotations

import logging

from chute.uploader.errors import ObjectChanged, StoreError
from chute.uploader.read_pin import pinned_error


def test_a_hostile_key_is_quoted_in_the_log_and_the_error(caplog) -> None:
    key, etag = "dir/evil\nFAKE LOG LINE\x1b[31m", '"e\r\n"'
    with caplog.at_level(logging.WARNING, logger="chute.uploader.read_pin"):
        error = pinned_error(StoreError("GetObject", 412, "PreconditionFailed"), key, etag)
    assert isinstance(error, ObjectChanged)
    for text in (caplog.text.rstrip("\n"), str(error)):
        assert "\n" not in text and "\r" not in text and "\x1b" not in text, text
        assert "FAKE LOG LINE" in text


def test_other_failures_pass_through() -> None:
    failure = StoreError("GetObject", 500, "InternalError")
    assert pinned_error(failure, "k", "e") is failure
