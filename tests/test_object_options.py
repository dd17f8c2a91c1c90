"""Upload options (issue 18): the headers every S3 call carries, checked on the wire.

Each test drives chute's own code (MultipartSession, the S3 client's copies, copy_in_parts,
reads) against the in-memory S3 and reads the headers of each request from its log
(``store.requests``), comparing the option headers with exactly what AWS documents for that
call: storage class, SSE and ACL only where an object is made (Put, Create, CopyObject), SSE-C
on every call that touches the data (UploadPart, UploadPartCopy with the copy-source trio,
Complete, Get, Head), object lock with its retain-until date, tags beside the hash tag.
"""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import parse_qsl

import pytest

from chute.uploader.checksums import HASH_TAG
from chute.uploader.copy import copy_in_parts
from chute.uploader.errors import ConfigError
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.multipart import MultipartSession
from chute.uploader.object_options import (
    ObjectOptions,
    check,
    content_type_of,
    parse_duration,
    read_sse_c_key,
)
from chute.uploader.retry import RetryPolicy
from tests.support.memory_s3 import LoggedRequest, MemoryS3, memory_client

MiB = 1 << 20
KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
KEY_MD5 = base64.b64encode(hashlib.md5(KEY).digest()).decode()
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SSE_C = {
    "x-amz-server-side-encryption-customer-algorithm": "AES256",
    "x-amz-server-side-encryption-customer-key": KEY_B64,
    "x-amz-server-side-encryption-customer-key-md5": KEY_MD5,
}
COPY_SOURCE_SSE_C = {
    "x-amz-copy-source-server-side-encryption-customer-algorithm": "AES256",
    "x-amz-copy-source-server-side-encryption-customer-key": KEY_B64,
    "x-amz-copy-source-server-side-encryption-customer-key-md5": KEY_MD5,
}
OPTION_HEADERS = ("x-amz-storage-class", "x-amz-server-side-encryption",
                  "x-amz-copy-source-server-side-encryption", "x-amz-object-lock-",
                  "x-amz-acl", "x-amz-tagging", "content-type")


def option_headers(request: LoggedRequest) -> dict[str, str]:
    """The headers of ``request`` that upload options may set (names lower-cased)."""
    return {k: v for k, v in request.headers.items() if k.startswith(OPTION_HEADERS)}


def sent(store: MemoryS3, operation: str) -> list[dict[str, str]]:
    return [option_headers(r) for r in store.requests if r.operation == operation]


KMS = ObjectOptions(storage_class="STANDARD_IA", sse="aws:kms", sse_kms_key_id="alias/backup",
                    acl="bucket-owner-full-control", tags=(("team", "ops"), ("keep", "90 d")),
                    lock_mode="COMPLIANCE", lock_retain_seconds=30 * 86400,
                    clock=lambda: NOW)
KMS_MADE = {
    "x-amz-storage-class": "STANDARD_IA",
    "x-amz-server-side-encryption": "aws:kms",
    "x-amz-server-side-encryption-aws-kms-key-id": "alias/backup",
    "x-amz-acl": "bucket-owner-full-control",
    "x-amz-object-lock-mode": "COMPLIANCE",
    "x-amz-object-lock-retain-until-date": "2027-02-14T08:00:00.000Z",
}
SSEC = ObjectOptions(storage_class="GLACIER_IR", sse_c_key=KEY, legal_hold=True)
SSEC_MADE = {"x-amz-storage-class": "GLACIER_IR", "x-amz-object-lock-legal-hold": "ON",
             **SSE_C}


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


async def _client(store: MemoryS3, options: ObjectOptions | None):
    client = memory_client(store, policy=RetryPolicy(budget=30))
    client.object_options = options
    return client


async def test_put_object_carries_every_option_and_both_tag_kinds(store) -> None:
    client = await _client(store, KMS)
    session = MultipartSession(client, "backups/db.tar.gz")
    await session.put(b"data", {"chute-mode": "644"}, "00ff")
    assert sent(store, "PutObject") == [{
        **KMS_MADE, "content-type": "application/x-tar",
        "x-amz-tagging": f"{HASH_TAG}=00ff&team=ops&keep=90%20d",
    }]
    assert store.objects["backups/db.tar.gz"].tags == {HASH_TAG: "00ff", "team": "ops",
                                                       "keep": "90 d"}
    await client.aclose()


async def test_multipart_create_part_complete_and_the_hash_tag_keep_extra_tags(store) -> None:
    client = await _client(store, KMS)
    session = MultipartSession(client, "a/photo.JPG")
    await session.create({})
    await session.upload_part(1, b"x" * 5 * MiB)
    await session.upload_part(2, b"y")
    await session.complete(5 * MiB + 1)
    await session.tag("abcd")
    assert sent(store, "CreateMultipartUpload") == [{
        **KMS_MADE, "content-type": "image/jpeg", "x-amz-tagging": "team=ops&keep=90%20d"}]
    # SSE-KMS and storage class belong to Create only: AWS refuses them on parts
    assert sent(store, "UploadPart") == [{}, {}]
    assert sent(store, "CompleteMultipartUpload") == [{}]
    # PutObjectTagging replaces the whole set: the extra tags are written again
    assert store.objects["a/photo.JPG"].tags == {"team": "ops", "keep": "90 d", HASH_TAG: "abcd"}
    await client.aclose()


async def test_sse_c_on_every_call_that_touches_the_data(store) -> None:
    client = await _client(store, SSEC)
    session = MultipartSession(client, "f.bin")
    await session.create({})
    await session.upload_part(1, b"x" * 5 * MiB)
    await session.complete(5 * MiB)
    assert sent(store, "CreateMultipartUpload") == [
        {**SSEC_MADE, "content-type": "application/octet-stream"}]
    assert sent(store, "UploadPart") == [SSE_C]
    assert sent(store, "CompleteMultipartUpload") == [SSE_C]
    await client.head_object("f.bin")
    await client.get_range("f.bin", 0, 9)
    assert sent(store, "HeadObject") == [SSE_C]
    assert sent(store, "GetObject") == [SSE_C]
    await client.aclose()


async def test_copies_for_rename_and_chmod_keep_class_encryption_and_acl(store) -> None:
    client = await _client(store, KMS)
    await MultipartSession(client, "old.txt").put(b"hello", {}, "01")
    store.requests.clear()
    await client.copy_object("old.txt", "new.txt", None)  # rename: metadata kept (COPY)
    await client.copy_object("new.txt", "new.txt", {"x-amz-meta-chute-mode": "600"})  # chmod
    rename, chmod = sent(store, "CopyObject")
    assert rename == KMS_MADE  # no Content-Type: S3 keeps the source's with COPY
    assert chmod == {**KMS_MADE, "content-type": "text/plain"}  # REPLACE resets it
    await client.aclose()


async def test_sse_c_copies_send_the_copy_source_key(store) -> None:
    client = await _client(store, SSEC)
    await MultipartSession(client, "src.dat").put(b"z" * (3 * MiB), {}, "02")
    await client.copy_object("src.dat", "dst.dat", {"x-amz-meta-chute-mode": "600"})
    assert sent(store, "CopyObject") == [
        {**SSEC_MADE, "content-type": "application/octet-stream", **COPY_SOURCE_SSE_C}]
    store.min_part_size = 1
    await copy_in_parts(client, "src.dat", "big.dat", 3 * MiB, {}, part_size=2 * MiB)
    assert sent(store, "UploadPartCopy") == [{**SSE_C, **COPY_SOURCE_SSE_C}] * 2
    assert sent(store, "CompleteMultipartUpload") == [SSE_C]
    await client.aclose()


async def test_own_bookkeeping_objects_get_only_sse_and_acl(store) -> None:
    client = await _client(store, KMS)
    session = MultipartSession(client, "k.bin")
    await session.create({})
    await session.upload_part(1, b"x")  # the marker goes beside the first part
    markers = [r for r in store.requests
               if r.operation == "PutObject" and r.key.startswith(MARKER_DIR)]
    assert [option_headers(r) for r in markers] == [{
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "alias/backup",
        "x-amz-acl": "bucket-owner-full-control"}]
    await session.abort()
    await client.aclose()


async def test_no_content_type_and_no_options_send_nothing(store) -> None:
    client = await _client(store, ObjectOptions(content_type=False))
    await MultipartSession(client, "a.txt").put(b"x", {}, "03")
    client.object_options = None
    await MultipartSession(client, "b.txt").put(b"x", {}, "04")
    assert sent(store, "PutObject") == [{"x-amz-tagging": f"{HASH_TAG}=03"},
                                        {"x-amz-tagging": f"{HASH_TAG}=04"}]
    await client.aclose()


def test_content_type_from_the_name() -> None:
    assert content_type_of("dir/x.json") == "application/json"
    assert content_type_of("dir.d/noext") == "application/octet-stream"
    assert content_type_of("dir/") == "application/octet-stream"


def test_tag_header_is_url_encoded() -> None:
    options = ObjectOptions(tags=(("a b", "c&d=e"), ("k", "")))
    assert dict(parse_qsl(options.tagging(), keep_blank_values=True)) == {"a b": "c&d=e",
                                                                          "k": ""}


# -- checks at mount: one sentence each -----------------------------------------------------


@pytest.mark.parametrize(("kwargs", "sentence"), [
    ({"storage_class": "cold storage"}, "is not a storage class"),
    ({"sse": "aes256"}, "--sse must be one of"),
    ({"sse_kms_key_id": "k"}, "--sse-kms-key-id needs --sse aws:kms"),
    ({"sse": "AES256", "sse_kms_key_id": "k"}, "--sse-kms-key-id needs --sse aws:kms"),
    ({"lock_mode": "STRICT", "lock_retain": "1d"}, "GOVERNANCE or COMPLIANCE"),
    ({"lock_mode": "GOVERNANCE"}, "go together"),
    ({"lock_mode": "GOVERNANCE", "lock_retain": "0d"}, "must be positive"),
    ({"lock_mode": "GOVERNANCE", "lock_retain": "soon"}, "not a duration"),
    ({"acl": "everyone"}, "canned ACLs"),
    ({"tags": ["novalue"]}, "is not KEY=VALUE"),
    ({"tags": ["k" * 129 + "=v"]}, "1 to 128 characters"),
    ({"tags": ["k=" + "v" * 257]}, "at most 256 characters"),
    ({"tags": ["aws:x=1"]}, "AWS's"),
    ({"tags": [f"{HASH_TAG}=1"]}, "chute's own hash tag"),
    ({"tags": ["k=a;b"]}, "S3 tags allow only"),
    ({"tags": ["k=1", "k=2"]}, "given once"),
    ({"tags": [f"k{i}=v" for i in range(10)]}, "at most 9 tags"),
])
def test_each_bad_option_is_one_sentence(kwargs, sentence) -> None:
    with pytest.raises(ConfigError, match=sentence):
        check(**kwargs)


def test_good_options_and_durations() -> None:
    options = check(storage_class="DEEP_ARCHIVE", sse="aws:kms", sse_kms_key_id="k",
                    lock_mode="GOVERNANCE", lock_retain="12h", acl="private",
                    tags=["a=1", "b=x y"])
    assert (options.lock_retain_seconds, options.tags, options.object_lock) == (
        12 * 3600, (("a", "1"), ("b", "x y")), True)
    assert check(storage_class="MY_STORE_CLASS_1").storage_class == "MY_STORE_CLASS_1"
    assert [parse_duration(t) for t in ("30d", "2w", "1y", "90m", "7")] == [
        30 * 86400, 14 * 86400, 365 * 86400, 5400, 7 * 86400]


def test_sse_c_key_file_rules(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(KEY)
    raw.chmod(0o600)
    assert read_sse_c_key(str(raw)) == KEY
    b64 = tmp_path / "b64"
    b64.write_text(KEY_B64 + "\n")
    b64.chmod(0o400)
    assert check(sse_c_key_file=str(b64)).sse_c_key == KEY
    raw.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640: other users may read it; chmod 600"):
        read_sse_c_key(str(raw))
    short = tmp_path / "short"
    short.write_bytes(b"0123456789")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="must hold a 256-bit key"):
        read_sse_c_key(str(short))
    with pytest.raises(ConfigError, match="does not exist"):
        read_sse_c_key(str(tmp_path / "missing"))
    link = tmp_path / "link"
    link.symlink_to(raw)
    with pytest.raises(ConfigError, match="cannot read"):
        read_sse_c_key(str(link))
    with pytest.raises(ConfigError, match="exclude each other"):
        check(sse="AES256", sse_c_key_file=str(b64))
    if os.getuid() == 0:
        os.chown(b64, 12345, -1)
        with pytest.raises(ConfigError, match="must be owned by you"):
            read_sse_c_key(str(b64))
