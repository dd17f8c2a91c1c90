"""Everything the store says is untrusted input (issue 13, items 1, 6, 8 and 11).

Over the in-memory S3 (tests/support/memory_s3.py), without FUSE, root or SeaweedFS:

- hostile metadata and dates (thirty 9s as mtime, negative sizes, dates past 2262) show as
  clamped or default attributes, each logged once per object, and never raise;
- no FUSE handler lets an unexpected exception out (pyfuse3 would end its request loop,
  and the mount with it): EIO, traceback logged once per kind;
- a commit whose answer is not S3's (200 + HTML, no ETag, a wrong checksum) is a failure;
- bodies read into memory are capped (listings, error documents, GET ranges);
- a listing with a key XML 1.0 cannot carry skips that key, not the directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator

import pyfuse3
import pytest

from chute.fs import errnos
from chute.fs.metadata import MODE_META, MTIME_META
from chute.fs.namespace import ROOT_INODE
from chute.fs.operations import ChuteOperations
from chute.uploader import untrusted
from chute.uploader.errors import MalformedResponse, StoreError
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import S3Client
from tests.support.memory_mount import CTX, WRITE, Mounted, errno_of
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20



@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    untrusted._warned.clear()


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3(min_part_size=0)


@pytest.fixture
async def client(store: MemoryS3) -> AsyncIterator[S3Client]:
    client = memory_client(store, policy=RetryPolicy(max_attempts=1))
    yield client
    await client.aclose()


async def listed(ops: ChuteOperations, inode: int, monkeypatch
                 ) -> dict[str, pyfuse3.EntryAttributes]:
    """readdir of a directory: what the kernel would get (name -> attributes)."""
    got: dict[str, pyfuse3.EntryAttributes] = {}

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        got[name.decode()] = attrs
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(inode, CTX)
    await ops.readdir(fh, 0, None)  # type: ignore[arg-type]
    await ops.releasedir(fh)
    return got


# -- no handler lets an exception end the request loop ------------------------------------------


async def test_an_unexpected_exception_is_eio_with_one_traceback(caplog) -> None:
    async def fail() -> None:
        async with errnos.errors_as_errno("getattr x"):
            raise OverflowError("boom")

    with caplog.at_level(logging.ERROR, "chute.fs.operations"):
        for _ in range(3):
            assert await errno_of(fail()) == errno.EIO
    records = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(records) == 3
    assert records[0].exc_info is not None
    assert [r.exc_info for r in records[1:]] == [None, None]
    assert "seen 3 times" in records[2].getMessage()


async def test_a_name_that_cannot_be_made_does_not_hide_the_error(caplog) -> None:
    def name() -> str:
        raise KeyError("inode gone")

    async def fail() -> None:
        async with errnos.errors_as_errno(name):
            raise ValueError("bad")

    assert await errno_of(fail()) == errno.EIO


@pytest.mark.parametrize("handler", ["forget", "statfs", "releasedir", "release"])
async def test_handlers_without_an_errno_path_are_wrapped(m: Mounted, monkeypatch,
                                                          handler: str) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(m.ops.ns, "forget", broken)
    monkeypatch.setattr(m.ops.handles, "release_dir", broken)
    monkeypatch.setattr(m.ops.handles, "release", broken)
    monkeypatch.setattr("chute.fs.attributes.statfs", broken)
    calls = {
        "forget": lambda: m.ops.forget([(5, 1)]),
        "statfs": lambda: m.ops.statfs(CTX),
        "releasedir": lambda: m.ops.releasedir(1),
        "release": lambda: m.ops.release(1),
    }
    if handler == "forget":
        await calls[handler]()  # no reply to carry an errno: logged and swallowed
    else:
        assert await errno_of(calls[handler]()) == errno.EIO


# -- item 1: hostile values in what the store says ------------------------------------------

THIRTY_NINES = "9" * 30


@pytest.mark.parametrize(("mode", "mtime"), [
    ("0640", THIRTY_NINES), ("0640", "-" + THIRTY_NINES), ("0640", "1e9"), ("0640", "x" * 5000),
    ("-1", "1000"), ("7" * 30, "1000"), ("rwx", "1000"), ("1777777", "1000"),
])
async def test_hostile_metadata_shows_defaults_and_is_logged_once(
        m: Mounted, monkeypatch, caplog, mode: str, mtime: str) -> None:
    stored = m.store.put("d/f", b"abc", {MODE_META: mode, MTIME_META: mtime})
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    entries = await listed(m.ops, d.st_ino, monkeypatch)  # readdirplus: `ls -l`
    assert entries["f"].st_size == 3
    for _ in range(3):
        attrs = await m.ops.getattr(entries["f"].st_ino, CTX)
    good_mode, good_mtime = mode == "0640", mtime == "1000"
    assert attrs.st_mode & 0o7777 == (0o640 if good_mode else 0o644)
    if good_mtime:
        assert attrs.st_mtime_ns == 1000
    else:  # its Last-Modified (to the second)
        assert abs(attrs.st_mtime_ns - stored.modified * 1e9) < 2e9
    bad = MTIME_META if good_mode else MODE_META
    warnings = [r for r in caplog.records if f"x-amz-meta-{bad}" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "'d/f'" in warnings[0].getMessage()


async def test_hostile_head_headers_are_clamped(m: Mounted, caplog) -> None:
    m.store.put("f", b"abc")
    m.store.fail_next("HeadObject", status=200, body=b"", times=2, headers={
        "content-length": THIRTY_NINES, "etag": '"bad etag\u0001"',
        "last-modified": "Fri, 31 Dec 9999 23:59:59 GMT",
        f"x-amz-meta-{MTIME_META}": THIRTY_NINES})
    attrs = await m.ops.lookup(ROOT_INODE, b"f", CTX)
    assert attrs.st_size == untrusted.INT64_MAX
    assert attrs.st_mtime_ns == untrusted.INT64_MAX  # year 9999: clamped to 2262
    assert "Content-Length" in caplog.text


async def test_hostile_listing_values_are_clamped(m: Mounted, monkeypatch) -> None:
    m.store.honour_encoding_type = False
    m.store.fail_next("ListObjectsV2", status=200, body=(
        b"<ListBucketResult><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>big</Key><Size>" + THIRTY_NINES.encode() + b"</Size>"
        b"<LastModified>99999-01-01T00:00:00Z</LastModified></Contents>"
        b"<Contents><Key>neg</Key><Size>-7</Size>"
        b"<LastModified>0001-01-01T00:00:00Z</LastModified></Contents>"
        b"<Contents><Key>late</Key><Size>1</Size>"
        b"<LastModified>9999-12-31T23:59:59Z</LastModified></Contents>"
        b"</ListBucketResult>"))
    entries = await listed(m.ops, ROOT_INODE, monkeypatch)
    assert entries["big"].st_size == untrusted.INT64_MAX
    assert entries["neg"].st_size == 0
    assert entries["neg"].st_mtime_ns == untrusted.INT64_MIN
    assert entries["late"].st_mtime_ns == untrusted.INT64_MAX


# -- item 6: a commit without S3's answer is a failure --------------------------------------------

HTML = b"<html><body><h1>It works!</h1></body></html>"


async def test_a_store_answering_200_html_to_everything_gets_no_file(m: Mounted,
                                                                   caplog) -> None:
    m.store.fail_next(None, status=200, body=HTML, times=1000,
                      headers={"content-type": "text/html", "etag": '"5f3c-1a2b"'})
    info, _ = await m.ops.create(ROOT_INODE, b"small.txt", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"hello\n")
    assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
    await m.ops.release(info.fh)
    assert "uploaded" not in caplog.text
    assert "S3 answers this with no body" in caplog.text


@pytest.mark.parametrize("operation", ["UploadPart", "CompleteMultipartUpload"])
async def test_a_multipart_file_whose_commit_answer_is_html_fails_and_leaves_nothing(
        m: Mounted, operation: str) -> None:
    m.store.fail_next(operation, status=200, body=HTML, headers={"etag": '"5f3c-1a2b"'},
                      times=100)
    info, _ = await m.ops.create(ROOT_INODE, b"big", 0o644, WRITE | os.O_CREAT, CTX)
    with contextlib.suppress(pyfuse3.FUSEError):  # a part's failure may already show here
        await m.ops.write(info.fh, 0, b"x" * (12 * MiB))
    assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
    await m.ops.release(info.fh)
    assert "big" not in m.store.objects
    assert m.store.uploads == {}  # aborted


@pytest.mark.parametrize(("operation", "headers", "body"), [
    ("PutObject", {}, HTML),
    ("PutObject", {"etag": '"abc"'}, HTML),
    ("PutObject", {"etag": "abc"}, b""),
    ("PutObject", {"etag": '""'}, b""),
    ("PutObject", {"etag": '"abc"', "x-amz-checksum-crc32c": "AAAAAA=="}, b""),
    ("UploadPart", {}, HTML),
    ("UploadPart", {"etag": '"abc"', "x-amz-checksum-crc32c": "AAAAAA=="}, b""),
    ("CreateMultipartUpload", {}, HTML),
    ("CreateMultipartUpload", {}, b"<InitiateMultipartUploadResult><UploadId>a b"
                                  b"</UploadId></InitiateMultipartUploadResult>"),
    ("CompleteMultipartUpload", {}, HTML),
    ("CompleteMultipartUpload", {}, b"<CompleteMultipartUploadResult><ETag>\"a\nb\"</ETag>"
                                    b"</CompleteMultipartUploadResult>"),
    ("CopyObject", {}, HTML),
    ("CopyObject", {}, b"<CompleteMultipartUploadResult><ETag>\"ab\"</ETag>"
                       b"</CompleteMultipartUploadResult>"),
    ("UploadPartCopy", {}, HTML),
])
async def test_each_commit_needs_s3s_answer(client: S3Client, store: MemoryS3, operation: str,
                                            headers: dict[str, str], body: bytes) -> None:
    from chute.uploader.checksums import body_headers

    store.put("src", b"0123456789")
    upload_id = await client.create_multipart_upload("mp", {})
    store.fail_next(operation, status=200, body=body, headers=headers)
    part_headers = body_headers("crc32c", b"part")
    calls = {
        "PutObject": lambda: client.put_object("k", b"data", body_headers("crc32c", b"data")),
        "UploadPart": lambda: client.upload_part("mp", upload_id, 1, memoryview(b"part"),
                                                 part_headers),
        "CreateMultipartUpload": lambda: client.create_multipart_upload("k", {}),
        "CompleteMultipartUpload": lambda: client.complete_multipart_upload(
            "mp", upload_id, [(1, "x", {})]),
        "CopyObject": lambda: client.copy_object("src", "dst", None),
        "UploadPartCopy": lambda: client.upload_part_copy("src", "mp", upload_id, 1, 0, 3),
    }
    with pytest.raises(MalformedResponse):
        await calls[operation]()


async def test_the_echoed_checksum_must_match_and_a_good_answer_passes(
        client: S3Client, store: MemoryS3) -> None:
    from chute.uploader.checksums import body_headers

    etag = await client.put_object("k", b"data", body_headers("crc32c", b"data"))
    assert etag == store.objects["k"].etag  # the memory S3 echoes the CRC32C, and it matches


async def test_an_error_document_inside_a_200_is_that_error(client: S3Client,
                                                           store: MemoryS3) -> None:
    store.fail_next("CreateMultipartUpload", status=200,
                    body=b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with pytest.raises(StoreError) as caught:
        await client.create_multipart_upload("k", {})
    assert caught.value.code == "AccessDenied"


# -- item 11: memory does not follow the store's answers -----------------------------------------


class Endless:
    """A body of ``chunks`` chunks of 1 MiB, counting how many were pulled."""

    def __init__(self, chunks: int, head: bytes = b"<ListBucketResult>") -> None:
        self.chunks, self.head, self.pulled = chunks, head, 0

    async def __call__(self) -> AsyncIterator[bytes]:
        self.pulled += 1
        yield self.head
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * MiB


async def test_an_oversized_listing_is_refused_before_it_is_read(client: S3Client,
                                                                 store: MemoryS3) -> None:
    body = Endless(400)
    store.fail_next("ListObjectsV2", status=200, body=body,
                    headers={"content-length": str(400 * MiB)})
    with pytest.raises(MalformedResponse, match="more than the"):
        async for _ in client.list(""):
            pass
    assert body.pulled == 0


async def test_an_oversized_listing_is_read_only_up_to_the_cap(client: S3Client,
                                                               store: MemoryS3) -> None:
    body = Endless(400)  # streamed, no Content-Length: 400 MiB if read
    store.fail_next("ListObjectsV2", status=200, body=body)
    with pytest.raises(MalformedResponse, match="not read further"):
        async for _ in client.list(""):
            pass
    assert body.pulled <= 10  # the 8 MiB cap and one chunk


async def test_an_error_body_is_cut_not_refused(store: MemoryS3) -> None:
    client = memory_client(store, policy=RetryPolicy(max_attempts=1))
    body = Endless(100, head=b"<Error><Code>InternalError</Code>")
    store.fail_next("DeleteObject", status=500, body=body)
    with pytest.raises(StoreError) as caught:
        await client.delete_object("k")
    assert caught.value.status == 500 and caught.value.code == "HTTP500"
    assert body.pulled <= 2  # 64 KiB read, then the connection is dropped


async def test_a_get_answering_more_than_the_range_is_refused(client: S3Client,
                                                              store: MemoryS3) -> None:
    store.put("k", b"0123456789" * 100)
    store.fail_next("GetObject", status=206, body=b"x" * 100)
    with pytest.raises(MalformedResponse):
        await client.get_range("k", 0, 9)
    assert await client.get_range("k", 0, 9) == b"0123456789"


async def test_a_page_with_more_keys_than_asked_is_refused(client: S3Client,
                                                           store: MemoryS3) -> None:
    for name in "abc":
        store.put(name)
    store.fail_next("ListObjectsV2", status=200, body=(
        b"<ListBucketResult>" + b"".join(b"<Contents><Key>%s</Key></Contents>" % n
                                         for n in (b"a", b"b", b"c")) + b"</ListBucketResult>"))
    with pytest.raises(MalformedResponse, match="more than the 2 asked for"):
        async for _ in client.list("", max_keys=2):
            pass
    async for _ in client.list("", max_keys=5000):
        pass
    assert store.requests[-1].query["max-keys"] == "1000"


async def test_a_listing_that_repeats_its_token_ends(client: S3Client, store: MemoryS3) -> None:
    page = (b"<ListBucketResult><IsTruncated>true</IsTruncated>"
            b"<NextContinuationToken>same</NextContinuationToken></ListBucketResult>")
    store.fail_next("ListObjectsV2", status=200, body=page, times=5)
    with pytest.raises(MalformedResponse, match="same continuation token"):
        async for _ in client.list(""):
            pass
    assert store.operations() == ["ListObjectsV2", "ListObjectsV2"]


# -- item 8: a key XML 1.0 cannot carry costs that key, not the directory ---------------------


async def test_a_raw_control_character_key_skips_that_key_only(m: Mounted, monkeypatch,
                                                               caplog) -> None:
    m.store.honour_encoding_type = False  # keys come raw, as AWS sends them without it
    for key in ("d/a\x01b", "d/good", "d/cr\rlf", "d/ok\u00e9"):
        m.store.put(key, b"1")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    with caplog.at_level(logging.WARNING):
        entries = await listed(m.ops, d.st_ino, monkeypatch)
    assert sorted(entries) == ["good", "ok\u00e9"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 2 name(s)" in lines[0], lines
    assert "\\x01" not in lines[0] and "\x01" not in lines[0]


@pytest.mark.parametrize("raw", [b"a&#1;b", b"a&#x0;b", b"a\xef\xbf\xbeb", b"a\xffb"])
async def test_keys_that_do_not_parse_exactly_are_skipped(client: S3Client, store: MemoryS3,
                                                          raw: bytes) -> None:
    store.fail_next("ListObjectsV2", status=200, body=(
        b"<ListBucketResult><Contents><Key>" + raw + b"</Key></Contents>"
        b"<Contents><Key>fine&#9;tab</Key></Contents></ListBucketResult>"))
    pages = [page async for page in client.list("")]
    assert [o.key for o in pages[0].objects] == ["fine\ttab"]


async def test_a_broken_url_encoding_is_skipped_not_replaced(client: S3Client,
                                                             store: MemoryS3) -> None:
    store.fail_next("ListObjectsV2", status=200, body=(
        b"<ListBucketResult><EncodingType>url</EncodingType>"
        b"<Contents><Key>a%FFb</Key></Contents><Contents><Key>a%01b</Key></Contents>"
        b"<CommonPrefixes><Prefix>p%C3%A9/</Prefix></CommonPrefixes></ListBucketResult>"))
    pages = [page async for page in client.list("")]
    assert [o.key for o in pages[0].objects] == ["a\x01b"]
    assert pages[0].prefixes == ["p\u00e9/"]
