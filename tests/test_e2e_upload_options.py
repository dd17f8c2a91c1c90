"""Upload options (issue 18) end to end: real mounts on SeaweedFS, through the fault proxy,
which records every request's headers (``FaultProxy.requests``).

What SeaweedFS 4.48 takes (measured, /work/shared/reference/measured.md): storage classes,
AES256 and SSE-C, ACLs and Content-Type are kept; object lock works on a bucket created with
it and is refused (InvalidRequest) on one without; aws:kms fails (no KMS), so SSE-KMS is
checked on the wire only. Measured here too: SeaweedFS 4.48 answers InternalError to any
ranged GET of an SSE-C object and to every GET of an SSE-C multipart object (a whole GET of a
single-PUT SSE-C object works, HEAD works): SSE-C objects cannot be read back through a
mount on it, so reads with SSE-C are checked on the wire in the unit tests
(tests/test_object_options.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chute.uploader.checksums import HASH_TAG
from tests.support.faultproxy import FaultProxy, Kind
from tests.support.mounts import Mount, is_mounted, requires_fuse, wait_until_mounted
from tests.support.store import BUCKET, store_env

MiB = 1 << 20
KEY = os.urandom(32)
SSE_C_NAMES = {"x-amz-server-side-encryption-customer-algorithm",
               "x-amz-server-side-encryption-customer-key",
               "x-amz-server-side-encryption-customer-key-md5"}
COPY_SOURCE_NAMES = {n.replace("x-amz-", "x-amz-copy-source-") for n in SSE_C_NAMES}
MADE = {"x-amz-storage-class", "x-amz-acl", "content-type", "x-amz-tagging"}
OPTION_PREFIXES = ("x-amz-storage-class", "x-amz-server-side-encryption",
                   "x-amz-copy-source-server-side-encryption", "x-amz-object-lock-",
                   "x-amz-acl", "x-amz-tagging", "content-type")


def options_sent(headers: dict[str, str]) -> set[str]:
    return {k for k in headers if k.startswith(OPTION_PREFIXES)}


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "sse-c.key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


@pytest.mark.e2e
@requires_fuse
def test_several_options_on_every_call_and_in_the_store(store, s3, mount_factory,
                                                         tmp_path) -> None:
    """Storage class, SSE-C, ACL, a tag, Content-Type and --bwlimit at once: each call
    carries exactly its headers; SeaweedFS keeps them; chmod and rename keep them too."""
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(
            "--slice-size", "5MiB", "--ring-size", "20MiB",
            "--storage-class", "STANDARD_IA", "--sse-c-key-file", str(key_file(tmp_path)),
            "--acl", "bucket-owner-full-control", "--tag", "team=ops",
            "--bwlimit", "200MiB/s", server=proxy)
        small, big = os.urandom(1000), os.urandom(11 * MiB)
        (mount.path / "notes.json").write_bytes(small)
        (mount.path / "big.tar").write_bytes(big)
        os.chmod(mount.path / "notes.json", 0o600)  # a self-copy
        os.rename(mount.path / "big.tar", mount.path / "moved.tar")  # a copy
        assert (mount.path / "moved.tar").stat().st_size == len(big)
        seen = proxy.requests
        assert mount.unmount() == 0

    def of(kind: Kind) -> list[dict[str, str]]:
        return [r.headers for r in seen if r.kind == kind and ".chute-" not in r.target]

    puts = of(Kind.PUT_OBJECT)
    assert puts and all(options_sent(h) == MADE | SSE_C_NAMES for h in puts)
    note = next(h for h in puts if h["content-type"] == "application/json")
    assert note["x-amz-storage-class"] == "STANDARD_IA"
    assert note["x-amz-acl"] == "bucket-owner-full-control"
    assert note["x-amz-tagging"].startswith(f"{HASH_TAG}=") and \
        note["x-amz-tagging"].endswith("&team=ops")
    (create,) = of(Kind.CREATE_MULTIPART_UPLOAD)
    assert options_sent(create) == MADE | SSE_C_NAMES
    assert (create["content-type"], create["x-amz-tagging"]) == ("application/x-tar",
                                                                 "team=ops")
    assert [options_sent(h) for h in of(Kind.UPLOAD_PART)] == [SSE_C_NAMES] * 3
    assert [options_sent(h) for h in of(Kind.COMPLETE_MULTIPART_UPLOAD)] == [SSE_C_NAMES]
    copies = of(Kind.COPY_OBJECT)
    assert len(copies) == 2
    for headers in copies:
        assert options_sent(headers) - {"content-type", "x-amz-tagging"} == (
            {"x-amz-storage-class", "x-amz-acl"} | SSE_C_NAMES | COPY_SOURCE_NAMES)
    heads = of(Kind.HEAD_OBJECT)  # lookups (a GET is refused by SeaweedFS, see above)
    assert all(options_sent(h) == SSE_C_NAMES for h in heads)

    sse_c = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY}
    for name, content_type in (("notes.json", "application/json"),
                               ("moved.tar", "application/x-tar")):
        head = s3.head_object(Bucket=BUCKET, Key=mount.key(name), **sse_c)
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["SSECustomerAlgorithm"] == "AES256"
        assert head["ContentType"] == content_type
        tags = {t["Key"]: t["Value"] for t in
                s3.get_object_tagging(Bucket=BUCKET, Key=mount.key(name))["TagSet"]}
        assert tags["team"] == "ops" and HASH_TAG in tags
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("notes.json"),
                          **sse_c)["Metadata"]["chute-mode"] == "0600"
    got = s3.get_object(Bucket=BUCKET, Key=mount.key("notes.json"), **sse_c)["Body"].read()
    assert got == small
    with pytest.raises(Exception, match=r"InvalidArgument|400|BadRequest"):
        s3.get_object(Bucket=BUCKET, Key=mount.key("notes.json"))  # no key: refused


@pytest.mark.e2e
@requires_fuse
def test_sse_kms_headers_on_the_wire(store, mount_factory) -> None:
    """SeaweedFS has no KMS (InternalError), so only what chute sends is checked."""
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory("--sse", "aws:kms", "--sse-kms-key-id", "alias/backups",
                              "--retry-budget", "2", server=proxy)
        with pytest.raises(OSError) as failed:
            (mount.path / "f.txt").write_bytes(b"x")
        assert failed.value.errno == errno.EIO
        put = next(r.headers for r in proxy.requests
                   if r.kind == Kind.PUT_OBJECT and r.target.endswith("/f.txt"))
        assert mount.unmount() == 0
    assert put["x-amz-server-side-encryption"] == "aws:kms"
    assert put["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/backups"
    assert put["content-type"] == "text/plain"


@pytest.mark.e2e
@requires_fuse
def test_sse_s3_and_no_content_type(store, s3, mount_factory) -> None:
    """--sse AES256 on Put, Create and the rename's copy, nothing on parts; with
    --no-content-type no Content-Type is sent; SeaweedFS keeps the encryption."""
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB", "--sse",
                              "AES256", "--no-content-type", server=proxy)
        (mount.path / "a.json").write_bytes(b"{}")
        (mount.path / "b.tar").write_bytes(os.urandom(6 * MiB))
        os.rename(mount.path / "b.tar", mount.path / "c.tar")
        seen = [r for r in proxy.requests if ".chute-" not in r.target]
        assert mount.unmount() == 0
    sse = {"x-amz-server-side-encryption"}
    for kind in (Kind.PUT_OBJECT, Kind.CREATE_MULTIPART_UPLOAD, Kind.COPY_OBJECT):
        sent = [r.headers for r in seen if r.kind == kind]
        assert sent, kind
        assert all(options_sent(h) - {"x-amz-tagging"} == sse for h in sent), (kind, sent)
        assert all(h["x-amz-server-side-encryption"] == "AES256" for h in sent)
    assert all(options_sent(r.headers) == set() for r in seen if r.kind == Kind.UPLOAD_PART)
    for name in ("a.json", "c.tar"):
        assert s3.head_object(Bucket=BUCKET, Key=mount.key(name))["ServerSideEncryption"] \
            == "AES256"


def _mount_bucket(store, bucket: str, where: Path, *options: str) -> Mount:
    path = where / "mnt"
    path.mkdir()
    prefix = f"t-{uuid.uuid4().hex[:10]}/"
    args = [sys.executable, "-m", "chute.fs.cli", "mount", str(path),
            f"s3://{bucket}/{prefix.rstrip('/')}", "--endpoint-url", store.endpoint_url, "-v",
            *options]
    with open(where / "mount.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env=store_env(store))
    return Mount(path, prefix, proc, where / "mount.log", args)


@pytest.mark.e2e
@requires_fuse
def test_object_lock_on_a_lock_bucket_and_refused_without(store, s3, tmp_path) -> None:
    bucket = f"chute-lock-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    lock = ("--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "1d", "--legal-hold")
    (tmp_path / "a").mkdir()
    mount = _mount_bucket(store, bucket, tmp_path / "a", *lock, "--slice-size", "5MiB",
                          "--ring-size", "20MiB")
    try:
        wait_until_mounted(mount)
        (mount.path / "kept.bin").write_bytes(b"ransomware-proof")
        big = os.urandom(11 * MiB)
        (mount.path / "big.bin").write_bytes(big)  # multipart: the lock headers on Create
        for name in ("kept.bin", "big.bin"):
            retention = s3.get_object_retention(Bucket=bucket, Key=mount.key(name))
            assert retention["Retention"]["Mode"] == "GOVERNANCE"
            hold = s3.get_object_legal_hold(Bucket=bucket, Key=mount.key(name))
            assert hold["LegalHold"]["Status"] == "ON"
        assert s3.get_object(Bucket=bucket, Key=mount.key("big.bin"))["Body"].read() == big
        # object lock implies --no-delete and --no-overwrite: the mount never tries
        with pytest.raises(PermissionError):
            os.unlink(mount.path / "kept.bin")
        with pytest.raises(FileExistsError):
            (mount.path / "kept.bin").write_bytes(b"encrypted by a ransomware")
        assert s3.get_object(Bucket=bucket, Key=mount.key("kept.bin"))["Body"].read() == \
            b"ransomware-proof"
    finally:
        assert mount.unmount() == 0
    # the chute-test bucket has no object lock: one sentence at mount, nothing mounted
    (tmp_path / "b").mkdir()
    refused = _mount_bucket(store, BUCKET, tmp_path / "b", *lock)
    assert refused.proc.wait(60) == 1
    assert not is_mounted(refused.path)
    assert f"bucket '{BUCKET}' does not have object lock enabled" in refused.log()
