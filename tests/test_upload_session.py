"""FileUpload against a real SeaweedFS, without FUSE: part rules and the state machine."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from chute.uploader import slices as slices_module
from chute.uploader.config import UploaderConfig
from chute.uploader.credentials import CredentialSource
from chute.uploader.errors import FileTooLarge, UploadFailed, errno_for
from chute.uploader.file_upload import UploadState
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import Bucket, S3Client
from chute.uploader.uploader import Uploader
from tests.support.store import BUCKET, object_keys, pending_uploads

MiB = 1 << 20


@pytest.fixture
def store_env(store, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return store


async def _with_uploader(store, prefix: str, body, **config):
    client = S3Client(Bucket(BUCKET, prefix, endpoint_url=store.endpoint_url),
                      CredentialSource(), RetryPolicy(budget=10))
    uploader = Uploader(UploaderConfig(**config), client)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(uploader.run)
            await body(uploader)
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()


async def test_more_than_max_parts_is_efbig(store_env, s3, monkeypatch, caplog) -> None:
    """10,000 parts of 5 MiB is 48.8 GiB; the rule is the same with a limit of 3 parts."""
    monkeypatch.setattr(slices_module, "MAX_PARTS", 3)
    prefix = "efbig/"

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file(f"{prefix}big", "big")
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
        await _with_uploader(store_env, prefix, body, slice_size=5 * MiB, ring_size=20 * MiB)
    assert "--slice-size" in caplog.text
    assert object_keys(s3, prefix) == []
    assert pending_uploads(s3, prefix) == []


async def test_parts_complete_in_order_with_concurrency_one(store_env, s3) -> None:
    prefix = "inorder/"
    data = bytes(range(256)) * (4 * 23 * MiB // 256)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file(f"{prefix}f", "f")
        for offset in range(0, len(data), 3 * MiB):
            await upload.write(offset, data[offset : offset + 3 * MiB])
        await upload.finalize()
        assert upload.state is UploadState.DONE
        assert upload.etag.endswith(f"-{-(-len(data) // (5 * MiB))}")

    await _with_uploader(store_env, prefix, body, slice_size=5 * MiB, ring_size=10 * MiB,
                         upload_concurrency=1)
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}f")["Body"].read() == data


async def test_write_after_finalize_is_refused(store_env) -> None:
    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("late/f", "f")
        await upload.write(0, b"abc")
        await upload.finalize()
        await upload.finalize()  # idempotent
        with pytest.raises(UploadFailed):
            await upload.write(3, b"more")

    await _with_uploader(store_env, "late/", body, slice_size=5 * MiB, ring_size=10 * MiB)
