"""The fault-injecting proxy on its own: boto3 (no retries) -> FaultProxy -> real SeaweedFS.

Each fault kind must be observable from the client side, and everything else must pass
through untouched: SigV4 signatures (the client signs the proxy's host:port, SeaweedFS checks
the Host header it receives), keep-alive connections, multipart uploads.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chute.fs.embedded_store import EmbeddedStore
from tests.support.faultproxy import (
    ExpiredTokenFor,
    FaultProxy,
    Injection,
    Kind,
    Outage,
    ResetAfter,
    ResetBefore,
    Scenario,
    StallRequest,
    StallResponse,
    Status,
    Throttle,
    classify,
    slow_down,
)
from tests.support.store import BUCKET

MiB = 1 << 20
NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}  # max_attempts=1 would retry once


def make_client(url: str, store: EmbeddedStore, **config: Any) -> Any:
    options = {"retries": NO_RETRIES, "connect_timeout": 5, "read_timeout": 20, **config}
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key, region_name=store.region,
        config=Config(s3={"addressing_style": "path"}, **options),
    )


@pytest.fixture
def proxy(store: EmbeddedStore) -> Iterator[FaultProxy]:
    with FaultProxy.for_store(store) as p:
        yield p


@pytest.fixture
def client(proxy: FaultProxy, store: EmbeddedStore) -> Any:
    return make_client(proxy.url, store)


@pytest.fixture
def direct(store: EmbeddedStore) -> Any:
    """A client talking to SeaweedFS itself, to see what really happened there."""
    return make_client(store.endpoint_url, store,
                       retries={"total_max_attempts": 5, "mode": "standard"})


@pytest.fixture
def key() -> str:
    return f"fp-{uuid.uuid4().hex[:10]}/obj"


def exists(s3: Any, key: str) -> bool:
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def error_of(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "target", "headers", "kind"), [
    ("POST", "/b/k?uploads", [], Kind.CREATE_MULTIPART_UPLOAD),
    ("PUT", "/b/k?partNumber=1&uploadId=x", [], Kind.UPLOAD_PART),
    ("PUT", "/b/k?partNumber=1&uploadId=x", [("X-Amz-Copy-Source", "b/s")],
     Kind.UPLOAD_PART_COPY),
    ("POST", "/b/k?uploadId=x", [], Kind.COMPLETE_MULTIPART_UPLOAD),
    ("DELETE", "/b/k?uploadId=x", [], Kind.ABORT_MULTIPART_UPLOAD),
    ("PUT", "/b/dir/k", [], Kind.PUT_OBJECT),
    ("PUT", "/b/k", [("x-amz-copy-source", "/b/s")], Kind.COPY_OBJECT),
    ("HEAD", "/b/k", [], Kind.HEAD_OBJECT),
    ("HEAD", "/b", [], Kind.HEAD_BUCKET),
    ("GET", "/b?list-type=2&prefix=p%2F", [], Kind.LIST_OBJECTS_V2),
    ("GET", "/b/?list-type=2", [], Kind.LIST_OBJECTS_V2),
    ("GET", "/b?uploads&prefix=p", [], Kind.LIST_MULTIPART_UPLOADS),
    ("GET", "/b/k?uploadId=x", [], Kind.LIST_PARTS),
    ("GET", "/b/k", [], Kind.GET_OBJECT),
    ("DELETE", "/b/k", [], Kind.DELETE_OBJECT),
    ("POST", "/b?delete", [], Kind.DELETE_OBJECTS),
    ("PUT", "/b/k?tagging", [], Kind.PUT_OBJECT_TAGGING),
    ("GET", "/b/k?tagging", [], Kind.GET_OBJECT_TAGGING),
    ("DELETE", "/b/k?tagging", [], Kind.DELETE_OBJECT_TAGGING),
    ("PUT", "/b", [], Kind.OTHER),
    ("GET", "/", [], Kind.OTHER),
])
def test_classify(method: str, target: str, headers: list, kind: Kind) -> None:
    assert classify(method, target, headers) == kind


def test_faults_are_bounded_data() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        Status(503, times=None)
    with pytest.raises(ValueError, match="times"):
        ResetAfter(times=0)
    assert Status(503, times=None, duration=1).code == "ServiceUnavailable"
    assert Status(503, "SlowDown").name == "status:503:SlowDown"
    assert Status(404).code == "NoSuchUpload"
    assert slow_down(429).status == 429
    assert Throttle(1000, kind="UploadPart").kind == frozenset({Kind.UPLOAD_PART})
    with pytest.raises(ValueError):
        Throttle(100, kind="Nonsense")
    with pytest.raises(ValueError, match="seconds"):
        StallRequest(float("inf"))
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        FaultProxy("http://example.com:80")
    # Frozen: a declared scenario cannot be changed behind the proxy's back.
    with pytest.raises(AttributeError):
        Status(500).times = 3  # type: ignore[misc]


# -- byte-exact relaying, against a recording upstream ---------------------------------------


class RecordingUpstream:
    """A tiny HTTP server that records raw request bytes and answers with a chunked body."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                buf = b""
                while not buf.endswith(b"0\r\nX-Trailer: t\r\n\r\n"):  # as the test's ends
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                self.received += buf
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                             b"X-Odd-Header:   spaced  \r\n\r\n"
                             b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")
                conn.recv(1)  # until the proxy hangs up

    def close(self) -> None:
        self.sock.close()


def test_relays_bytes_exactly_and_chunked_both_ways() -> None:
    upstream = RecordingUpstream()
    try:
        with FaultProxy(upstream.url) as proxy:
            request = (f"PUT /b/k?x=1 HTTP/1.1\r\nHost: {proxy.url[7:]}\r\n"
                       "X-Amz-Date: 20250101T000000Z\r\nauthorization:  AWS4 odd spacing \r\n"
                       "Transfer-Encoding: chunked\r\n\r\n"
                       "4\r\nabcd\r\n3;name=v\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n").encode()
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(request)
                response = b""
                while not response.endswith(b"0\r\nTrailer: x\r\n\r\n"):
                    data = s.recv(65536)
                    assert data, response
                    response += data
            assert bytes(upstream.received) == request
            assert b"X-Odd-Header:   spaced  \r\n" in response
            assert response.endswith(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")
            assert proxy.stats[Kind.PUT_OBJECT].forwarded == 1
    finally:
        upstream.close()


# -- pass-through against SeaweedFS (e2e: the session's store) --------------------------------


@pytest.mark.e2e
def test_pass_through_put_get_multipart(proxy: FaultProxy, client: Any, direct: Any,
                                        key: str) -> None:
    client.head_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=key, Body=b"hello proxy")
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"hello proxy"
    assert client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 11
    client.put_object_tagging(Bucket=BUCKET, Key=key,
                              Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    assert client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"] == [
        {"Key": "a", "Value": "b"}]
    client.copy_object(Bucket=BUCKET, Key=key + ".copy", CopySource={"Bucket": BUCKET, "Key": key})

    big = key + ".big"
    parts = [bytes([i]) * (5 * MiB) for i in (1, 2)] + [b"tail"]
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=big)["UploadId"]
    assert [u["UploadId"] for u in client.list_multipart_uploads(
        Bucket=BUCKET, Prefix=big).get("Uploads", [])] == [upload_id]
    etags = [client.upload_part(Bucket=BUCKET, Key=big, UploadId=upload_id, PartNumber=n,
                                Body=body)["ETag"] for n, body in enumerate(parts, 1)]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=big, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert direct.get_object(Bucket=BUCKET, Key=big)["Body"].read() == b"".join(parts)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=key)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted([key, key + ".copy", big])
    aborted = client.create_multipart_upload(Bucket=BUCKET, Key=key + ".x")["UploadId"]
    client.abort_multipart_upload(Bucket=BUCKET, Key=key + ".x", UploadId=aborted)
    client.delete_object(Bucket=BUCKET, Key=key)
    assert not exists(direct, key)

    stats = proxy.stats
    expected = {
        Kind.HEAD_BUCKET: 1, Kind.PUT_OBJECT: 1, Kind.GET_OBJECT: 1, Kind.HEAD_OBJECT: 1,
        Kind.PUT_OBJECT_TAGGING: 1, Kind.GET_OBJECT_TAGGING: 1, Kind.COPY_OBJECT: 1,
        Kind.CREATE_MULTIPART_UPLOAD: 2, Kind.LIST_MULTIPART_UPLOADS: 1, Kind.UPLOAD_PART: 3,
        Kind.COMPLETE_MULTIPART_UPLOAD: 1, Kind.LIST_OBJECTS_V2: 1,
        Kind.ABORT_MULTIPART_UPLOAD: 1, Kind.DELETE_OBJECT: 1,
    }
    assert {k: c.forwarded for k, c in stats.items() if c.forwarded} == expected
    assert stats["UploadPart"].seen == 3  # Kind is a StrEnum: plain names work as keys
    assert not any(c.injected for c in stats.values()) and proxy.log == []
    assert proxy.connections == 1  # one keep-alive connection served all 17 requests


@pytest.mark.e2e
def test_stands_in_for_the_store(proxy: FaultProxy, store: EmbeddedStore) -> None:
    assert proxy.endpoint_url == proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert (proxy.access_key, proxy.secret_key, proxy.region) == (
        store.access_key, store.secret_key, store.region)


@pytest.mark.e2e
def test_concurrent_connections(proxy: FaultProxy, store: EmbeddedStore, key: str) -> None:
    client = make_client(proxy.url, store, max_pool_connections=8)

    def roundtrip(n: int) -> bytes:
        client.put_object(Bucket=BUCKET, Key=f"{key}{n}", Body=bytes([n]) * 300_000)
        return client.get_object(Bucket=BUCKET, Key=f"{key}{n}")["Body"].read()

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(roundtrip, range(16)))
    assert bodies == [bytes([n]) * 300_000 for n in range(16)]
    assert 2 <= proxy.connections <= 8


@pytest.mark.e2e
def test_upstream_down_looks_like_a_reset(store: EmbeddedStore) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        with FaultProxy(f"http://127.0.0.1:{placeholder.getsockname()[1]}") as proxy:
            with pytest.raises(ConnectionClosedError):
                make_client(proxy.url, store).head_bucket(Bucket=BUCKET)
            counts = proxy.stats[Kind.HEAD_BUCKET]
            assert (counts.seen, counts.forwarded) == (1, 0)  # never reached the upstream


@pytest.mark.e2e
def test_seaweedfs_checks_the_host_it_receives(proxy: FaultProxy, store: EmbeddedStore) -> None:
    """Signatures made for the proxy's host:port pass; the Host header really is checked."""
    credentials = Credentials(store.access_key, store.secret_key)

    def get(host: str | None) -> int:
        request = AWSRequest("GET", f"{proxy.url}/{BUCKET}?list-type=2&max-keys=1")
        S3SigV4Auth(credentials, "s3", store.region).add_auth(request)
        headers = dict(request.headers.items())
        headers["Host"] = host or f"127.0.0.1:{proxy.port}"
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("GET", f"/{BUCKET}?list-type=2&max-keys=1", headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    assert get(None) == 200
    assert get(f"127.0.0.1:{store.endpoint_url.rsplit(':', 1)[1]}") == 403


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [
    (500, "InternalError"), (503, "ServiceUnavailable"), (503, "SlowDown"),
    (429, "TooManyRequests"), (429, "SlowDown"), (400, "RequestTimeout"),
    (403, "ExpiredToken"), (403, "AccessDenied"), (404, "NoSuchUpload"),
])
@pytest.mark.e2e
def test_status_once_then_success(proxy: FaultProxy, client: Any, direct: Any, key: str,
                                  status: int, code: str) -> None:
    proxy.set_scenario([Status(status, code, kind=Kind.PUT_OBJECT)])
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 100_000)
    assert error_of(caught.value) == (status, code)
    assert not exists(direct, key)
    client.put_object(Bucket=BUCKET, Key=key, Body=b"y" * 100_000)  # drained: same connection
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"y" * 100_000
    assert proxy.log == [Injection(Kind.PUT_OBJECT, f"status:{status}:{code}", "PUT",
                                   f"/{BUCKET}/{key}")]
    assert proxy.stats[Kind.PUT_OBJECT].injected == 1
    assert proxy.stats[Kind.PUT_OBJECT].forwarded == 1
    assert proxy.connections == 1


@pytest.mark.e2e
def test_status_after_and_times_on_upload_part(proxy: FaultProxy, client: Any,
                                               key: str) -> None:
    """Skip the first part, fail the next two (5 MiB bodies sent with Expect: 100-continue)."""
    proxy.set_scenario(Scenario((slow_down(kind=Kind.UPLOAD_PART, after=1, times=2),)))
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    body = b"p" * (5 * MiB)

    def part(n: int) -> dict:
        return client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n,
                                  Body=body)

    etag1 = part(1)["ETag"]
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            part(2)
        assert error_of(caught.value) == (503, "SlowDown")
    etag2 = part(2)["ETag"]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag1},
                                   {"PartNumber": 2, "ETag": etag2}]})
    counts = proxy.stats[Kind.UPLOAD_PART]
    assert (counts.seen, counts.forwarded, counts.injected) == (4, 2, 2)


@pytest.mark.e2e
def test_status_duration_window(proxy: FaultProxy, client: Any, key: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=b"z")
    began = time.monotonic()
    proxy.set_scenario(Status(503, kind=Kind.HEAD_OBJECT, times=None, duration=0.6))
    failures = 0
    while True:
        try:
            client.head_object(Bucket=BUCKET, Key=key)
            break
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            failures += 1
            time.sleep(0.1)
    assert 0.5 < time.monotonic() - began < 3
    assert failures >= 3 and proxy.stats[Kind.HEAD_OBJECT].injected == failures


@pytest.mark.e2e
def test_reset_before_put(proxy: FaultProxy, client: Any, direct: Any, key: str) -> None:
    proxy.set_scenario(ResetBefore(kind=Kind.PUT_OBJECT, after_body_bytes=64 * 1024))
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"r" * MiB)
    assert not exists(direct, key)  # the upstream never saw it
    assert proxy.stats[Kind.PUT_OBJECT].forwarded == 0
    client.put_object(Bucket=BUCKET, Key=key, Body=b"r" * MiB)
    assert exists(direct, key)


@pytest.mark.e2e
def test_reset_after_put_loses_the_response(proxy: FaultProxy, client: Any, direct: Any,
                                            key: str) -> None:
    proxy.set_scenario(ResetAfter(kind=Kind.PUT_OBJECT))
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"acted" * 1000)
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"acted" * 1000
    assert proxy.log[0][:2] == (Kind.PUT_OBJECT, "reset_after")
    assert proxy.stats[Kind.PUT_OBJECT].forwarded == 1


@pytest.mark.e2e
def test_reset_after_complete(proxy: FaultProxy, client: Any, direct: Any, key: str) -> None:
    """The classic lost Complete: the object exists, a retried Complete finds no upload."""
    proxy.set_scenario(ResetAfter(kind=Kind.COMPLETE_MULTIPART_UPLOAD))
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1,
                              Body=b"only part")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    with pytest.raises(ConnectionClosedError):
        client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                         MultipartUpload=parts)
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"only part"
    assert not direct.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")


@pytest.mark.e2e
def test_throttle_request(proxy: FaultProxy, client: Any, direct: Any, key: str) -> None:
    body = b"t" * (2 * MiB)
    proxy.set_scenario(Throttle(MiB, kind=Kind.PUT_OBJECT))
    began = time.monotonic()
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    elapsed = time.monotonic() - began
    assert 1.9 < elapsed < 4, elapsed
    began = time.monotonic()
    client.put_object(Bucket=BUCKET, Key=key, Body=body)  # times=1: the next one is fast
    assert time.monotonic() - began < 1
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


@pytest.mark.e2e
def test_throttle_response(proxy: FaultProxy, client: Any, key: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=b"d" * MiB)
    proxy.set_scenario(Throttle(2 * MiB, kind=Kind.GET_OBJECT, direction="response"))
    began = time.monotonic()
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"d" * MiB
    assert 0.45 < time.monotonic() - began < 2


@pytest.mark.e2e
def test_stall_request_then_continue(proxy: FaultProxy, client: Any, direct: Any,
                                     key: str) -> None:
    proxy.set_scenario(StallRequest(1.2, kind=Kind.PUT_OBJECT))
    began = time.monotonic()
    client.put_object(Bucket=BUCKET, Key=key, Body=b"s" * MiB)
    assert 1.2 <= time.monotonic() - began < 3
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"s" * MiB


@pytest.mark.e2e
def test_stall_request_then_reset(proxy: FaultProxy, client: Any, direct: Any,
                                  key: str) -> None:
    proxy.set_scenario(StallRequest(0.5, kind=Kind.PUT_OBJECT, then="reset"))
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"s" * MiB)
    assert not exists(direct, key)  # half a body is not an object


@pytest.mark.e2e
def test_stall_response_trips_a_read_timeout(proxy: FaultProxy, store: EmbeddedStore,
                                             client: Any, key: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=b"g" * 100_000)
    proxy.set_scenario(StallResponse(1.2, kind=Kind.GET_OBJECT, times=2))
    began = time.monotonic()
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"g" * 100_000
    assert 1.2 <= time.monotonic() - began < 3
    impatient = make_client(proxy.url, store, read_timeout=0.4)
    with pytest.raises(ReadTimeoutError):
        impatient.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.e2e
def test_stall_response_in_head_then_reset(proxy: FaultProxy, client: Any, direct: Any,
                                          key: str) -> None:
    proxy.set_scenario(StallResponse(0.3, kind=Kind.PUT_OBJECT, at_bytes=10, then="reset"))
    with pytest.raises(BotoCoreError):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"h")
    assert exists(direct, key)  # the upstream acted; its answer was cut short


@pytest.mark.e2e
def test_expired_token_window(proxy: FaultProxy, client: Any, key: str) -> None:
    proxy.set_scenario(ExpiredTokenFor(0.8, kind=(Kind.PUT_OBJECT, Kind.HEAD_OBJECT)))
    began = time.monotonic()
    rejected = 0
    while True:
        try:
            client.put_object(Bucket=BUCKET, Key=key, Body=b"e")
            break
        except ClientError as exc:
            assert error_of(exc) == (403, "ExpiredToken")
            rejected += 1
            with pytest.raises(ClientError):  # every matching kind, within the window
                client.head_object(Bucket=BUCKET, Key=key)
            time.sleep(0.15)
    assert 0.7 < time.monotonic() - began < 3
    assert rejected >= 3
    client.head_object(Bucket=BUCKET, Key=key)
    assert {entry.fault for entry in proxy.log} == {"expired_token"}


@pytest.mark.e2e
def test_outage_refuses_then_serves_again(proxy: FaultProxy, client: Any, key: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=b"before")  # a pooled keep-alive connection
    proxy.set_scenario(Outage(1.0))
    time.sleep(0.1)
    assert proxy.outage_active()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"during")  # pooled one was reset
    with pytest.raises(EndpointConnectionError):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"during")
    time.sleep(1.0)
    assert not proxy.outage_active()
    client.put_object(Bucket=BUCKET, Key=key, Body=b"after")
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"after"


@pytest.mark.e2e
def test_outage_triggered_by_a_request_in_reset_mode(proxy: FaultProxy, client: Any,
                                                     direct: Any, key: str) -> None:
    proxy.set_scenario(Outage(0.8, kind=Kind.UPLOAD_PART, after=1, mode="reset"))
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    def part(n: int) -> dict:
        return client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n,
                                  Body=b"o" * 1000)

    part(1)
    assert not proxy.outage_active()
    with pytest.raises(ConnectionClosedError):
        part(2)  # this request starts the outage and is reset
    assert proxy.outage_active()
    # Accepted and reset at once: the RST may even beat connect()'s return.
    with pytest.raises((ConnectionResetError, BrokenPipeError)), \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1024)
    time.sleep(0.9)
    part(2)
    assert proxy.log == [Injection(Kind.UPLOAD_PART, "outage", "PUT",
                                   f"/{BUCKET}/{key}?uploadId={upload_id}&partNumber=2")]


@pytest.mark.e2e
def test_clearing_the_scenario_ends_faults(proxy: FaultProxy, client: Any, key: str) -> None:
    proxy.set_scenario(Outage(30))
    time.sleep(0.05)
    assert proxy.outage_active()
    proxy.set_scenario(None)
    time.sleep(0.05)
    client.put_object(Bucket=BUCKET, Key=key, Body=b"c")
    proxy.set_scenario(Status(500, kind=None, times=None, duration=30))
    with pytest.raises(ClientError):
        client.head_bucket(Bucket=BUCKET)
    proxy.set_scenario([])
    client.head_bucket(Bucket=BUCKET)
