"""chute's SigV4 signer (uploader/s3_signing.py) against botocore's S3SigV4Auth, the
reference: the same headers, byte for byte, for every request shape the client sends."""

from __future__ import annotations

import logging

import pytest
from botocore.credentials import ReadOnlyCredentials

from chute.uploader import s3_signing
from chute.uploader.s3_signing import Signer, botocore_headers, payload_hash
from chute.uploader.s3_wire import Bucket, canonical_query

KEYS = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
TEMPORARY = ReadOnlyCredentials("ASIAEXAMPLE", "secret/with+chars", "FwoGZXIvYXdzE//token==")
PATH_STYLE = Bucket("bench", "pre/", endpoint_url="http://127.0.0.1:8333", region="eu-west-3")
VIRTUAL = Bucket("my-bucket", region="us-east-1")
DEFAULT_PORT = Bucket("b", endpoint_url="HTTPS://Store.Example:443/", region="auto")

SHAPES = [  # (method, key, query, headers, body, sign_payload): what s3.py sends
    ("PUT", "pre/dir/a b+ü~(1).txt", "", {
        "x-amz-meta-chute-mode": "0644", "x-amz-meta-chute-mtime": "1732999999.1",
        "x-amz-checksum-crc32c": "yZRlqg==", "x-amz-tagging": "chute-xxh3-128=abc&team=o%20ps",
        "Content-Type": "text/plain; charset=utf-8", "If-None-Match": "*"}, b"x" * 4096, False),
    ("PUT", "pre/k", {"partNumber": 3, "uploadId": "2~a/b=="}, {
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}, b"part", False),
    ("POST", "pre/k", {"uploadId": "u p"}, {}, b"<CompleteMultipartUpload/>", True),
    ("POST", "pre/k", "uploads=", {"x-amz-checksum-algorithm": "CRC32C",
                                   "x-amz-storage-class": "STANDARD_IA"}, b"", True),
    ("GET", "", {"list-type": 2, "prefix": "pre/a b/", "delimiter": "/", "max-keys": 1000,
                 "encoding-type": "url", "continuation-token": "tok+/="}, {}, b"", True),
    ("GET", "pre/k", "", {"Range": "bytes=0-99", "If-Match": '"etag"'}, b"", True),
    ("HEAD", "pre/k", "", {"x-amz-server-side-encryption-customer-key": "a  b\tc "}, b"",
     True),
    ("HEAD", "", "", {}, b"", True),
    ("DELETE", "pre/k", "", {}, b"", True),
    ("PUT", "pre/k", "tagging=", {}, b"<Tagging/>", True),
    ("PUT", "pre/k2", "", {"x-amz-copy-source": "/bench/pre/a%20b",
                           "x-amz-metadata-directive": "REPLACE", "User-Agent": "not signed",
                           "X-Amz-Date": "replaced", "x-amz-content-sha256": "replaced"},
     b"", True),
]


def request_of(bucket: Bucket, shape: tuple) -> tuple[str, str, dict, bytes, bool]:
    method, key, query, headers, body, sign_payload = shape
    query_string = query if isinstance(query, str) else canonical_query(query)
    return method, bucket.url(key, query_string), headers, body, sign_payload


@pytest.mark.parametrize("bucket", [PATH_STYLE, VIRTUAL, DEFAULT_PORT],
                         ids=["path-style", "virtual-hosted", "default-port"])
@pytest.mark.parametrize("credentials", [KEYS, TEMPORARY], ids=["keys", "token"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SHAPES)])
def test_every_request_shape_is_signed_as_botocore_signs_it(bucket, credentials, shape) -> None:
    method, url, headers, body, sign_payload = request_of(bucket, shape)
    reference = botocore_headers(credentials, bucket.region, method, url, headers, body,
                                 sign_payload)
    ours = Signer(bucket.region).sign(credentials, method, url, headers,
                                      payload_hash(body, sign_payload),
                                      timestamp=reference["X-Amz-Date"])
    assert ours == reference


def test_the_signing_key_follows_the_date_and_the_secret() -> None:
    signer = Signer("us-east-1")
    method, url, headers, body, _ = request_of(PATH_STYLE, SHAPES[0])
    for credentials, timestamp in [(KEYS, "20261130T235959Z"), (KEYS, "20261201T000001Z"),
                                   (TEMPORARY, "20261201T000002Z")]:
        ours = signer.sign(credentials, method, url, headers, payload_hash(body, False),
                           timestamp=timestamp)
        theirs = Signer("us-east-1").sign(credentials, method, url, headers,
                                          payload_hash(body, False), timestamp=timestamp)
        assert ours == theirs


def test_what_is_sent_carries_the_host_that_was_signed() -> None:
    signer = Signer("auto")
    headers = signer.headers(KEYS, "GET", DEFAULT_PORT.url("k"), {}, b"", True)
    assert headers["Host"] == "store.example"
    assert "host;" in headers["Authorization"]


@pytest.mark.parametrize("headers", [{"Date": "Mon, 30 Nov 2026 20:00:00 GMT"},
                                     {"x-amz-meta-a": "1", "X-Amz-Meta-A": "2"}])
def test_shapes_the_signer_does_not_model_are_signed_by_botocore(headers) -> None:
    url = PATH_STYLE.url("pre/k")
    assert Signer("eu-west-3").sign(KEYS, "PUT", url, headers, "UNSIGNED-PAYLOAD") is None
    sent = Signer("eu-west-3").headers(KEYS, "PUT", url, headers, b"", False)
    assert sent["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")


def test_a_signer_that_disagrees_with_botocore_hands_every_request_to_it(
        monkeypatch, caplog) -> None:
    signer = Signer("eu-west-3")
    method, url, headers, body, sign_payload = request_of(PATH_STYLE, SHAPES[0])
    monkeypatch.setattr(s3_signing, "_canonical_query", lambda query: "drifted")
    with caplog.at_level(logging.WARNING):
        sent = signer.headers(KEYS, method, url.replace("?", "") + "?a=1", headers, body,
                              sign_payload)
    assert not signer.fast
    assert "botocore signs every request" in caplog.text
    monkeypatch.undo()
    reference = botocore_headers(KEYS, "eu-west-3", method, url.replace("?", "") + "?a=1",
                                 headers, body, sign_payload)
    assert sent["Authorization"].split("Signature=")[0] == \
        reference["Authorization"].split("Signature=")[0]
