"""Unit tests for the S3 client against the in-memory S3 (tests/support/memory_s3.py).

Each call's request shape and result; retries of error answers and of transport failures,
told apart by their RetryReason (was the request sent in full, so its answer may be lost?);
what is left when the budget is spent (chute errors with an errno, never httpx's); credential
reloads; unreadable answers. Backoff sleeps run on trio's MockClock (``autojump_clock``), so
nothing here waits in wall-clock time, needs root, FUSE or SeaweedFS.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import xml.etree.ElementTree as ET

import httpx
import pytest
import trio

from chute.uploader.checksums import body_headers, multipart_etag
from chute.uploader.credentials import StaticCredentials
from chute.uploader.errors import (
    ChuteError,
    MalformedResponse,
    Stalled,
    StoreError,
    StoreUnreachable,
    errno_for,
)
from chute.uploader.retry import RetryPolicy, RetryReason
from chute.uploader.s3 import S3Client
from chute.uploader.s3_http import ConnectionPool
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1024 * 1024


class Retries:
    """Collects the client's ``on_retry(operation, reason, error)`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, RetryReason, Exception]] = []

    def __call__(self, operation: str, reason: RetryReason, error: Exception) -> None:
        self.calls.append((operation, reason, error))

    @property
    def reasons(self) -> list[RetryReason]:
        return [reason for _, reason, _ in self.calls]


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3(bucket="bkt", min_part_size=0)


@pytest.fixture
def retries() -> Retries:
    return Retries()


@pytest.fixture
async def client(store: MemoryS3, retries: Retries):
    client = memory_client(store, prefix="", on_retry=retries)
    yield client
    await client.aclose()


# -- each call: request shape and result ------------------------------------------------------


async def test_transport_is_injected_or_real(store: MemoryS3) -> None:
    injected = memory_client(store)
    assert injected._http is store.transport
    real = S3Client(injected.bucket, StaticCredentials("a", "b"), RetryPolicy())
    assert isinstance(real._http, ConnectionPool)
    await real.aclose()
    await injected.aclose()


async def test_put_object_is_signed_unsigned_payload_and_returns_the_etag(
        client: S3Client, store: MemoryS3) -> None:
    body = b"hello world"
    headers = {**body_headers("crc32c", body), "x-amz-meta-chute-mode": "0644",
               "x-amz-tagging": "chute-xxh3-128=abc"}
    etag = await client.put_object("dir/a b+ü", memoryview(body), headers)
    assert etag == hashlib.md5(body).hexdigest()
    (request,) = store.requests
    assert (request.operation, request.method, request.key) == ("PutObject", "PUT", "dir/a b+ü")
    assert request.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=memory-key/")
    assert request.headers["content-length"] == str(len(body))
    stored = store.objects["dir/a b+ü"]
    assert stored.body == body
    assert stored.metadata == {"chute-mode": "0644"}
    assert stored.tags == {"chute-xxh3-128": "abc"}


async def test_a_large_body_goes_out_in_chunks_with_progress(client: S3Client,
                                                             store: MemoryS3) -> None:
    body = bytes(range(256)) * (4 * 4096 + 3)  # > 4 MiB: several send chunks
    progress: list[int] = []
    uid = await client.create_multipart_upload("big", {})
    etag = await client.upload_part("big", uid, 1, memoryview(body), {}, progress=progress.append)
    assert etag == hashlib.md5(body).hexdigest()
    assert sum(progress) == len(body) and len(progress) > 1
    assert store.uploads[uid].parts[1][0] == body


async def test_a_wrong_checksum_is_refused_not_retried(client: S3Client, store: MemoryS3,
                                                       retries: Retries) -> None:
    headers = body_headers("md5", b"other bytes")
    with pytest.raises(StoreError) as caught:
        await client.put_object("k", b"these bytes", headers)
    assert (caught.value.status, caught.value.code) == (400, "BadDigest")
    assert store.operations() == ["PutObject"]
    assert retries.calls == []
    assert "k" not in store.objects


async def test_head_object_reads_size_etag_and_metadata(client: S3Client,
                                                        store: MemoryS3) -> None:
    store.put("k", b"12345", metadata={"chute-mtime-ns": "7"})
    info = await client.head_object("k")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("k", 5, hashlib.md5(b"12345").hexdigest())
    assert info.metadata == {"chute-mtime-ns": "7"}
    assert info.last_modified.endswith("GMT")
    assert await client.head_object("missing") is None
    assert store.operations() == ["HeadObject", "HeadObject"]  # a 404 is an answer: no retry


async def test_get_range_and_a_short_answer(client: S3Client, store: MemoryS3) -> None:
    store.put("k", b"0123456789")
    assert await client.get_range("k", 2, 5) == b"2345"
    assert store.requests[-1].headers["range"] == "bytes=2-5"
    obj = store.objects["k"]
    assert await client.get_range("k", 0, 9, if_match=obj.etag) == b"0123456789"
    with pytest.raises(StoreError) as caught:
        await client.get_range("k", 0, 1, if_match="0" * 32)
    assert caught.value.code == "PreconditionFailed"
    store.fail_next("GetObject", status=206, body=b"2")
    with pytest.raises(StoreError) as caught:
        await client.get_range("k", 2, 5)
    assert caught.value.code == "ShortRead"


async def test_delete_and_head_bucket(client: S3Client, store: MemoryS3) -> None:
    store.put("k")
    await client.head_bucket()
    await client.delete_object("k")
    await client.delete_object("k")  # S3 deletes are idempotent
    assert store.keys() == []
    assert store.operations() == ["HeadBucket", "DeleteObject", "DeleteObject"]


async def test_list_pages_prefixes_and_start_after(client: S3Client, store: MemoryS3) -> None:
    for key in ["p/a", "p/b", "p/c/1", "p/c/2", "p/d", "q/x"]:
        store.put(key, b"x")
    pages = [page async for page in client.list("p/", max_keys=2)]
    assert [[o.key for o in p.objects] for p in pages] == [["p/a", "p/b"], ["p/d"]]
    assert [p.prefixes for p in pages] == [[], ["p/c/"]]
    assert all(o.size == 1 for p in pages for o in p.objects)
    lists = [r for r in store.requests if r.operation == "ListObjectsV2"]
    assert len(lists) == 2
    assert lists[0].query["encoding-type"] == "url" and lists[0].query["delimiter"] == "/"
    assert "continuation-token" not in lists[0].query
    assert lists[1].query["continuation-token"]
    flat = [o.key async for p in client.list("p/", delimiter=None, start_after="p/b")
            for o in p.objects]
    assert flat == ["p/c/1", "p/c/2", "p/d"]


async def test_listing_with_encoding_type_url_decodes_keys(client: S3Client,
                                                           store: MemoryS3) -> None:
    odd = ["p/a b", "p/x+y", "p/ü%z", "p/q&r<s>", "p/ctrl\x01char"]
    for key in odd:
        store.put(key)
    store.put("p/d d/inner")
    (page,) = [page async for page in client.list("p/")]
    assert sorted(o.key for o in page.objects) == sorted(odd)
    assert page.prefixes == ["p/d d/"]
    raw = store.requests[-1]
    assert raw.query["encoding-type"] == "url"


async def test_tags_round_trip(client: S3Client, store: MemoryS3) -> None:
    store.put("k")
    await client.put_tags("k", {"chute-xxh3-128": "ab&<>", "other": "v"})
    assert store.objects["k"].tags == {"chute-xxh3-128": "ab&<>", "other": "v"}
    assert await client.get_tags("k") == {"chute-xxh3-128": "ab&<>", "other": "v"}
    with pytest.raises(StoreError) as caught:
        await client.get_tags("missing")
    assert (caught.value.status, caught.value.code) == (404, "NoSuchKey")


async def test_copy_object_replaces_or_keeps_metadata(client: S3Client, store: MemoryS3) -> None:
    source = store.put("src", b"data", metadata={"m": "1"}, tags={"t": "v"})
    etag = await client.copy_object("src", "dst", None, if_match_etag=source.etag)
    assert etag == source.etag
    assert store.objects["dst"].metadata == {"m": "1"}
    assert store.objects["dst"].tags == {"t": "v"}
    copy = store.requests[-1]
    assert copy.headers["x-amz-copy-source"] == "/bkt/src"
    assert copy.headers["x-amz-copy-source-if-match"] == f'"{source.etag}"'
    await client.copy_object("src", "src", {"x-amz-meta-m": "2"})  # in place: REPLACE
    assert store.requests[-1].headers["x-amz-metadata-directive"] == "REPLACE"
    assert store.objects["src"].metadata == {"m": "2"}
    with pytest.raises(StoreError) as caught:
        await client.copy_object("src", "dst2", None, if_match_etag="0" * 32)
    assert (caught.value.status, caught.value.code) == (412, "PreconditionFailed")
    assert "dst2" not in store.objects


async def test_multipart_upload_from_create_to_complete(client: S3Client,
                                                        store: MemoryS3) -> None:
    parts = [b"a" * 100, b"b" * 50]
    uid = await client.create_multipart_upload("f", {"x-amz-meta-chute-mode": "0600",
                                                     "x-amz-checksum-algorithm": "CRC32C"})
    etags = []
    for number, body in enumerate(parts, start=1):
        headers = body_headers("crc32c", body)
        etag = await client.upload_part("f", uid, number, memoryview(body), headers)
        etags.append((number, etag, {"ChecksumCRC32C": headers["x-amz-checksum-crc32c"]}))
    assert [p.upload_id for p in await client.list_multipart_uploads("")] == [uid]
    final = await client.complete_multipart_upload("f", uid, etags, if_none_match=True)
    assert final == multipart_etag([e for _, e, _ in etags])
    assert store.objects["f"].body == b"".join(parts)
    assert store.objects["f"].metadata == {"chute-mode": "0600"}
    complete = store.requests[-1]
    assert complete.headers["if-none-match"] == "*"
    root = ET.fromstring(complete.body)
    assert [p.findtext("PartNumber") for p in root.iter("Part")] == ["1", "2"]
    assert await client.list_multipart_uploads("") == []
    assert [r.query["partNumber"] for r in store.requests if r.operation == "UploadPart"] == \
        ["1", "2"]


async def test_complete_refusals_are_final(client: S3Client, store: MemoryS3,
                                           retries: Retries) -> None:
    uid = await client.create_multipart_upload("f", {})
    etag = await client.upload_part("f", uid, 1, memoryview(b"x"), {})
    with pytest.raises(StoreError) as caught:
        await client.complete_multipart_upload("f", uid, [(1, "0" * 32, {})])
    assert caught.value.code == "InvalidPart"
    store.put("f", b"someone else's")
    with pytest.raises(StoreError) as caught:
        await client.complete_multipart_upload("f", uid, [(1, etag, {})], if_none_match=True)
    assert (caught.value.status, caught.value.code) == (412, "PreconditionFailed")
    assert store.body("f") == b"someone else's"
    await client.abort_multipart_upload("f", uid)
    await client.abort_multipart_upload("f", uid)  # already gone counts as aborted
    with pytest.raises(StoreError) as caught:
        await client.upload_part("f", uid, 2, memoryview(b"y"), {})
    assert caught.value.code == "NoSuchUpload"
    assert retries.calls == []


async def test_upload_part_copy_copies_a_range(client: S3Client, store: MemoryS3) -> None:
    source = store.put("src", b"0123456789")
    uid = await client.create_multipart_upload("dst", {})
    first = await client.upload_part_copy("src", "dst", uid, 1, 0, 4, if_match_etag=source.etag)
    second = await client.upload_part_copy("src", "dst", uid, 2, 5, 9)
    assert store.requests[-1].headers["x-amz-copy-source-range"] == "bytes=5-9"
    await client.complete_multipart_upload("dst", uid, [(1, first, {}), (2, second, {})])
    assert store.body("dst") == b"0123456789"


async def test_a_200_carrying_an_error_document_is_an_error(client: S3Client,
                                                            store: MemoryS3) -> None:
    uid = await client.create_multipart_upload("f", {})
    etag = await client.upload_part("f", uid, 1, memoryview(b"x"), {})
    store.fail_next("CompleteMultipartUpload", status=200, body=(
        b"<?xml version='1.0'?>\n\n<Error><Code>InternalErrorLate</Code>"
        b"<Message>after keep-alive whitespace</Message></Error>"))
    with pytest.raises(StoreError) as caught:
        await client.complete_multipart_upload("f", uid, [(1, etag, {})])
    assert (caught.value.status, caught.value.code) == (200, "InternalErrorLate")


# -- retries: error answers, transport failures, lost answers --------------------------------


async def test_a_503_is_retried_then_succeeds(autojump_clock, client: S3Client,
                                              store: MemoryS3, retries: Retries) -> None:
    store.fail_next("PutObject", status=503, code="SlowDown")
    per_request: list[RetryReason] = []
    assert await client.put_object("k", b"x", {}, on_retry=per_request.append)
    assert store.operations() == ["PutObject", "PutObject"]
    assert per_request == [RetryReason.THROTTLED]
    ((operation, reason, error),) = retries.calls
    assert (operation, reason) == ("PutObject", RetryReason.THROTTLED)
    assert isinstance(error, StoreError) and (error.status, error.code) == (503, "SlowDown")
    assert store.body("k") == b"x"


async def test_on_request_sees_every_attempt(autojump_clock, client: S3Client,
                                             store: MemoryS3) -> None:
    seen: list[tuple[str, int | None]] = []
    client.on_request = lambda operation, seconds, status: seen.append((operation, status))
    store.fail_next("HeadObject", status=500)
    store.fail_next("HeadObject", error=httpx.ConnectError)
    assert await client.head_object("k") is None
    assert seen == [("HeadObject", 500), ("HeadObject", None), ("HeadObject", 404)]


async def test_a_failure_before_sending_is_not_a_lost_answer(
        autojump_clock, client: S3Client, store: MemoryS3, retries: Retries) -> None:
    store.fail_next("CreateMultipartUpload", error=httpx.ConnectError("refused"))
    store.fail_next("CreateMultipartUpload", error=httpx.WriteTimeout("stuck"))
    per_request: list[RetryReason] = []
    uid = await client.create_multipart_upload("f", {}, on_retry=per_request.append)
    assert per_request == [RetryReason.CONNECTION_FAILED, RetryReason.SEND_STALLED]
    assert not any(reason.answer_may_be_lost for reason in per_request)
    assert list(store.uploads) == [uid]  # the store never saw the failed attempts
    errors = [error for _, _, error in retries.calls]
    assert type(errors[0]) is StoreUnreachable and not errors[0].request_sent
    assert "ConnectError" in errors[0].description
    assert isinstance(errors[1], Stalled) and not errors[1].request_sent


async def test_a_lost_answer_is_told_apart(autojump_clock, client: S3Client,
                                           store: MemoryS3) -> None:
    """The Create reached the store, its answer did not reach us: the retry makes a second
    upload, which is why a caller told ``answer_may_be_lost`` must look for the first."""
    store.fail_next("CreateMultipartUpload", after_apply=True)
    per_request: list[RetryReason] = []
    uid = await client.create_multipart_upload("f", {}, on_retry=per_request.append)
    assert per_request == [RetryReason.CONNECTION_LOST]
    assert per_request[0].answer_may_be_lost
    assert len(store.uploads) == 2 and uid in store.uploads


async def test_a_stall_waiting_for_the_answer_may_have_lost_it(
        autojump_clock, client: S3Client, store: MemoryS3, retries: Retries) -> None:
    store.fail_next("PutObject", error=httpx.ReadTimeout("no answer"), after_apply=True)
    await client.put_object("k", b"x", {})
    ((_, reason, error),) = retries.calls
    assert reason is RetryReason.STALLED and reason.answer_may_be_lost
    assert isinstance(error, Stalled) and error.request_sent
    assert error.description.startswith("timeout (ReadTimeout)")


async def test_a_complete_whose_answer_was_lost_answers_no_such_upload(
        autojump_clock, client: S3Client, store: MemoryS3) -> None:
    uid = await client.create_multipart_upload("f", {})
    etag = await client.upload_part("f", uid, 1, memoryview(b"x"), {})
    store.fail_next("CompleteMultipartUpload", after_apply=True)
    per_request: list[RetryReason] = []
    with pytest.raises(StoreError) as caught:
        await client.complete_multipart_upload("f", uid, [(1, etag, {})],
                                               on_retry=per_request.append)
    assert caught.value.code == "NoSuchUpload"
    assert per_request == [RetryReason.CONNECTION_LOST]
    assert store.body("f") == b"x"  # it landed: the caller must check, not fail


@pytest.mark.parametrize(
    ("error", "expected"),
    [(httpx.ConnectError, StoreUnreachable), (httpx.RemoteProtocolError, StoreUnreachable),
     (httpx.ConnectTimeout, Stalled), (httpx.ReadTimeout, Stalled)],
)
async def test_a_spent_budget_leaves_a_chute_error(autojump_clock, store: MemoryS3,
                                                   error: type[Exception],
                                                   expected: type[ChuteError]) -> None:
    client = memory_client(store, policy=RetryPolicy(budget=30.0), stall_timeout=7)
    store.fail_next("HeadObject", error=error, times=10_000)
    start = trio.current_time()
    with pytest.raises(ChuteError) as caught:
        await client.head_object("k")
    assert type(caught.value) is expected
    assert not isinstance(caught.value, httpx.HTTPError)
    assert errno_for(caught.value) == errno.EIO
    assert str(caught.value).startswith("HeadObject: ")
    assert error.__name__ in str(caught.value)
    if expected is Stalled:
        assert "no progress for 7 s" in str(caught.value)
    assert trio.current_time() - start == pytest.approx(30.0)
    assert len(store.requests) > 3


async def test_a_spent_budget_of_error_answers_leaves_the_last_answer(
        autojump_clock, store: MemoryS3) -> None:
    client = memory_client(store, policy=RetryPolicy(max_attempts=3))
    store.fail_next("PutObject", status=500, code="InternalError", times=3)
    with pytest.raises(StoreError) as caught:
        await client.put_object("k", b"x", {})
    assert (caught.value.status, caught.value.code) == (500, "InternalError")
    assert errno_for(caught.value) == errno.EIO
    assert store.operations() == ["PutObject"] * 3


async def test_refused_credentials_are_reloaded_then_succeed(autojump_clock) -> None:
    store = MemoryS3(bucket="bkt", access_key="new-key")
    credentials = StaticCredentials("old-key", "old-secret")
    credentials.rotate("new-key", "new-secret")  # on disk, not yet read
    retries = Retries()
    client = memory_client(store, credentials=credentials, on_retry=retries)
    await client.put_object("k", b"x", {})
    assert credentials.reloads == 1
    assert retries.reasons == [RetryReason.CREDENTIALS]
    assert "Credential=old-key/" in store.requests[0].headers["authorization"]
    assert "Credential=new-key/" in store.requests[1].headers["authorization"]


async def test_credentials_that_stay_refused_fail_after_a_few_reloads(autojump_clock) -> None:
    store = MemoryS3(bucket="bkt", access_key="other")
    credentials = StaticCredentials("revoked", "secret")
    client = memory_client(store, credentials=credentials)
    with pytest.raises(StoreError) as caught:
        await client.put_object("k", b"x", {})
    assert caught.value.code == "InvalidAccessKeyId"
    policy = RetryPolicy()
    assert len(store.requests) == policy.max_credential_attempts
    assert credentials.reloads == policy.max_credential_attempts - 1


# -- answers that cannot be read --------------------------------------------------------------


async def test_a_malformed_listing_is_a_malformed_response(client: S3Client,
                                                          store: MemoryS3) -> None:
    store.fail_next("ListObjectsV2", status=200, body=b"<ListBucketResult><Contents>")
    with pytest.raises(MalformedResponse) as caught:
        async for _ in client.list("p/"):
            pass
    assert isinstance(caught.value, StoreError)
    assert not isinstance(caught.value, ET.ParseError)
    assert (caught.value.code, caught.value.status) == ("MalformedResponse", 200)
    assert errno_for(caught.value) == errno.EIO
    assert store.operations() == ["ListObjectsV2"]  # not retried: it would answer so again


@pytest.mark.parametrize(
    ("operation", "body"),
    [("CreateMultipartUpload", b"<InitiateMultipartUploadResult/>"),
     ("ListObjectsV2", b"<html><body>It works!</body></html>"),
     ("CreateMultipartUpload", b"<html><body>It works!</body></html>"),
     ("GetObjectTagging", b"not xml at all"),
     ("CopyObject", b"<CopyObjectResult></CopyObjectResult>")],
)
async def test_missing_fields_are_malformed_responses(client: S3Client, store: MemoryS3,
                                                      operation: str, body: bytes) -> None:
    store.put("src")
    store.fail_next(operation, status=200, body=body)
    calls = {
        "CreateMultipartUpload": lambda: client.create_multipart_upload("f", {}),
        "ListObjectsV2": lambda: _drain(client.list("")),
        "GetObjectTagging": lambda: client.get_tags("src"),
        "CopyObject": lambda: client.copy_object("src", "dst", None),
    }
    with pytest.raises(MalformedResponse):
        await calls[operation]()


async def test_a_listing_entry_without_key_or_size_is_skipped_or_zero(
        client: S3Client, store: MemoryS3, caplog) -> None:
    """Entries are read one by one (issue 13 item 1): a field that cannot be used costs that
    entry or that value, never the whole directory."""
    store.fail_next("ListObjectsV2", status=200, body=(
        b"<ListBucketResult><Contents><Size>1</Size></Contents>"
        b"<Contents><Key>k</Key><Size>one</Size></Contents>"
        b"<Contents><Key>n</Key><Size>-5</Size><ETag>\"a b\"</ETag></Contents>"
        b"</ListBucketResult>"))
    pages = [page async for page in client.list("")]
    assert [(o.key, o.size, o.etag) for o in pages[0].objects] == [("k", 0, ""), ("n", 0, "")]
    assert "'k': the store says Size = 'one'" in caplog.text
    assert "skipped 1 name(s)" in caplog.text


async def test_an_error_answer_that_is_not_xml_keeps_its_status(
        autojump_clock, store: MemoryS3) -> None:
    client = memory_client(store, policy=RetryPolicy(max_attempts=2))
    store.fail_next("HeadBucket", status=502, body=b"<html>Bad Gateway</html>", times=2)
    with pytest.raises(StoreError) as caught:
        await client.head_bucket()
    assert (caught.value.status, caught.value.code) == (502, "HTTP502")


async def test_a_garbled_answer_body_is_malformed_not_an_httpx_error(
        client: S3Client, store: MemoryS3) -> None:
    store.fail_next("GetObjectTagging", error=httpx.DecodingError("bad gzip"))
    store.put("k")
    with pytest.raises(MalformedResponse):
        await client.get_tags("k")


async def _drain(pages) -> None:
    async for _ in pages:
        pass


def test_memory_s3_refuses_small_parts_like_s3() -> None:
    """The memory store keeps S3's 5 MiB minimum for all but the last part unless told."""
    store = MemoryS3(bucket="bkt")

    async def run() -> None:
        client = memory_client(store)
        uid = await client.create_multipart_upload("f", {})
        e1 = await client.upload_part("f", uid, 1, memoryview(b"small"), {})
        e2 = await client.upload_part("f", uid, 2, memoryview(b"last"), {})
        with pytest.raises(StoreError) as caught:
            await client.complete_multipart_upload("f", uid, [(1, e1, {}), (2, e2, {})])
        assert caught.value.code == "EntityTooSmall"
        md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
        await client.put_object("g", b"x", {"Content-MD5": md5})

    trio.run(run)
