"""FileUpload through the Uploader on the in-memory S3: part rules and the state machine.

(Once run against SeaweedFS; what it proves does not depend on the store, and the e2e tests
prove real uploads land. See also test_file_upload.py and test_multipart.py.)
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import pytest

from chute.uploader import slices as slices_module
from chute.uploader.config import UploaderConfig
from chute.uploader.errors import FileTooLarge, UploadFailed, errno_for
from chute.uploader.file_upload import UploadState
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import MemoryS3
from tests.support.memory_uploader import run_uploader

MiB = 1 << 20


async def _with_uploader(store: MemoryS3, body: Callable[[Uploader], Awaitable[None]],
                         **config: object) -> None:
    await run_uploader(store, body, UploaderConfig(**config),  # type: ignore[arg-type]
                       retry_budget=10)


async def test_more_than_max_parts_is_efbig(autojump_clock, monkeypatch, caplog) -> None:
    """10,000 parts of 5 MiB is 48.8 GiB; the rule is the same with a limit of 3 parts."""
    monkeypatch.setattr(slices_module, "MAX_PARTS", 3)
    store = MemoryS3()

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("efbig/big", "big")
        block = bytes(MiB)
        with pytest.raises(FileTooLarge) as excinfo:
            for i in range(16):
                await upload.write(i * MiB, block)
        assert errno_for(excinfo.value) == errno.EFBIG
        assert upload.size == 15 * MiB
        with pytest.raises(UploadFailed):
            await upload.finalize()
        assert upload.state is UploadState.FAILED

    with caplog.at_level(logging.ERROR):
        await _with_uploader(store, body, slice_size=5 * MiB, ring_size=20 * MiB)
    assert "--slice-size" in caplog.text
    assert store.keys() == []
    assert store.uploads == {}


async def test_parts_complete_in_order_with_concurrency_one(autojump_clock) -> None:
    store = MemoryS3()
    data = bytes(range(256)) * (4 * 23 * MiB // 256)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("inorder/f", "f")
        for offset in range(0, len(data), 3 * MiB):
            await upload.write(offset, data[offset : offset + 3 * MiB])
        await upload.finalize()
        assert upload.state is UploadState.DONE
        assert upload.etag.endswith(f"-{-(-len(data) // (5 * MiB))}")

    await _with_uploader(store, body, slice_size=5 * MiB, ring_size=10 * MiB,
                         upload_concurrency=1)
    assert store.body("inorder/f") == data
    parts = [int(r.query["partNumber"]) for r in store.requests if r.operation == "UploadPart"]
    # one at a time, in the order sealed; under pressure the retained first slice goes first
    assert sorted(parts) == list(range(1, len(parts) + 1))
    assert len(parts) == len(set(parts))


async def test_write_after_finalize_is_refused(autojump_clock) -> None:
    store = MemoryS3()

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("late/f", "f")
        await upload.write(0, b"abc")
        await upload.finalize()
        await upload.finalize()  # idempotent
        with pytest.raises(UploadFailed):
            await upload.write(3, b"more")

    await _with_uploader(store, body, slice_size=5 * MiB, ring_size=10 * MiB)
    assert store.body("late/f") == b"abc"
