"""SigV4 signatures of chute's S3 requests: botocore's algorithm, without its per-request cost.

botocore's ``S3SigV4Auth.add_auth`` wants an ``AWSRequest`` (headers kept in an
``email.message``), derives the signing key with four HMACs and re-parses the URL several
times for every request: about a fifth of the CPU of a small PutObject on the mount
(measured, see docs/performance.md). :class:`Signer` computes the same signature from the
request's parts and keeps the day's signing key (it changes only with the secret and the
date), so a request costs one SHA-256 and one HMAC.

botocore stays the source of truth, twice over: credentials come from it (credentials.py),
and :meth:`Signer.check` signs a sample of each request shape both ways at first use and
turns the fast path off for good (one log line) if the two ever differ, so a botocore whose
canonical form changed keeps chute's signatures right. Requests the fast path does not model
(a ``Date`` header, two header names that differ only in case) are signed by botocore.
tests/test_s3_signing.py compares the two over every request shape the client sends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.config
from botocore.credentials import ReadOnlyCredentials

log = logging.getLogger(__name__)

UNSIGNED_PAYLOAD = botocore.auth.UNSIGNED_PAYLOAD
_BLACKLIST = frozenset(botocore.auth.SIGNED_HEADERS_BLACKLIST)
_REPLACED = frozenset(("authorization", "x-amz-date", "x-amz-security-token",
                       "x-amz-content-sha256"))
"""Headers botocore removes and sets itself when it signs."""
_UNSIGNED = botocore.config.Config(s3={"payload_signing_enabled": False})
_SIGNED = botocore.config.Config(s3={"payload_signing_enabled": True})


def payload_hash(body: bytes | memoryview, sign_payload: bool) -> str:
    """The x-amz-content-sha256 of a body: its SHA-256, or UNSIGNED-PAYLOAD (s3.py sends
    part and object bodies unsigned; their checksum header protects them)."""
    return hashlib.sha256(body).hexdigest() if sign_payload else UNSIGNED_PAYLOAD


def botocore_headers(credentials: ReadOnlyCredentials, region: str, method: str, url: str,
                     headers: Mapping[str, str], body: bytes | memoryview,
                     sign_payload: bool) -> dict[str, str]:
    """The headers to send, signed by botocore's S3SigV4Auth: the reference."""
    request = botocore.awsrequest.AWSRequest(
        method=method, url=url, headers=dict(headers),
        data=bytes(body) if sign_payload else b"")
    request.context["client_config"] = _SIGNED if sign_payload else _UNSIGNED
    botocore.auth.S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return dict(request.headers.items())


class Signer:
    """Signs requests for one region as botocore's S3SigV4Auth does, byte for byte."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._scope_tail = f"/{region}/s3/aws4_request"
        self._key: tuple[str, str, bytes] = ("", "", b"")
        """(secret, date, signing key): the key of the last day and secret signed with."""
        self._hosts: dict[str, str] = {}
        """``scheme://netloc`` -> the host botocore signs for it (_split)."""
        self.fast = True
        """False once :meth:`check` found botocore disagreeing: botocore signs everything."""
        self._checked: set[tuple[bool, bool, bool]] = set()

    def headers(self, credentials: ReadOnlyCredentials, method: str, url: str,
                headers: Mapping[str, str], body: bytes | memoryview,
                sign_payload: bool) -> dict[str, str]:
        """``headers`` plus X-Amz-Date, X-Amz-Security-Token (temporary credentials),
        X-Amz-Content-SHA256 and Authorization, and Host as it was signed: what to send."""
        signed = self._headers(credentials, method, url, headers, body, sign_payload)
        if "host" not in signed and "Host" not in signed:
            signed["Host"] = self.host(url)
        return signed

    def host(self, url: str) -> str:
        """The Host header botocore signs for ``url``: lower-cased, without a default port."""
        return self._split(url)[0]

    def _headers(self, credentials: ReadOnlyCredentials, method: str, url: str,
                 headers: Mapping[str, str], body: bytes | memoryview,
                 sign_payload: bool) -> dict[str, str]:
        if self.fast:
            shape = (sign_payload, credentials.token is not None, "?" in url)
            if shape not in self._checked:
                self.check(credentials, method, url, headers, body, sign_payload)
                self._checked.add(shape)
            if self.fast:
                signed = self.sign(credentials, method, url, headers,
                                   payload_hash(body, sign_payload))
                if signed is not None:
                    return signed
        return botocore_headers(credentials, self.region, method, url, headers, body,
                                sign_payload)

    def check(self, credentials: ReadOnlyCredentials, method: str, url: str,
              headers: Mapping[str, str], body: bytes | memoryview,
              sign_payload: bool) -> None:
        """Sign this request both ways at botocore's timestamp; if the two differ, botocore
        signs from now on (logged once)."""
        reference = botocore_headers(credentials, self.region, method, url, headers, body,
                                     sign_payload)
        ours = self.sign(credentials, method, url, headers, payload_hash(body, sign_payload),
                         timestamp=reference.get("X-Amz-Date"))
        if ours is not None and ours != reference:
            self.fast = False
            log.warning("SigV4: chute's signer and botocore's differ for a %s request; "
                        "botocore signs every request from now on (slower)", method)

    def sign(self, credentials: ReadOnlyCredentials, method: str, url: str,
             headers: Mapping[str, str], content_sha256: str,
             timestamp: str | None = None) -> dict[str, str] | None:
        """The headers to send, signed at ``timestamp`` (``20261130T204500Z``; default now);
        None for a request this path does not model (botocore then signs it)."""
        names: dict[str, str] = {}
        send: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower in names or lower == "date":
                return None  # botocore's email.message headers: duplicates, Date-based signing
            names[lower] = value
            if lower not in _REPLACED:
                send[name] = value
        timestamp = timestamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        send["X-Amz-Date"] = timestamp
        if credentials.token:
            send["X-Amz-Security-Token"] = credentials.token
        send["X-Amz-Content-SHA256"] = content_sha256
        host, path, query = self._split(url)
        signed = {"x-amz-date": timestamp, "x-amz-content-sha256": content_sha256}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        for lower, value in names.items():
            if lower not in _BLACKLIST and lower not in _REPLACED:
                signed[lower] = value
        signed.setdefault("host", host)
        order = sorted(signed)
        signed_headers = ";".join(order)
        canonical = "\n".join((
            method.upper(), path, _canonical_query(query),
            "".join(f"{k}:{' '.join(signed[k].split())}\n" for k in order),
            signed_headers, content_sha256,
        ))
        date = timestamp[:8]
        scope = date + self._scope_tail
        string_to_sign = (f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n"
                          + hashlib.sha256(canonical.encode()).hexdigest())
        signature = hmac.digest(self._signing_key(credentials.secret_key, date),
                                string_to_sign.encode(), "sha256").hex()
        send["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/"
                                 f"{scope}, SignedHeaders={signed_headers}, "
                                 f"Signature={signature}")
        return send

    def _signing_key(self, secret: str, date: str) -> bytes:
        cached_secret, cached_date, key = self._key
        if cached_secret != secret or cached_date != date:
            key = _hmac(f"AWS4{secret}".encode(), date)
            for part in (self.region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._key = (secret, date, key)
        return key

    def _split(self, url: str) -> tuple[str, str, str]:
        """(host as botocore signs it, path, query) of ``url``; each endpoint's host is
        worked out once."""
        parts = urlsplit(url)
        endpoint = parts.scheme + "://" + parts.netloc
        host = self._hosts.get(endpoint)
        if host is None:
            host = self._hosts[endpoint] = botocore.auth._host_from_url(url)
        return host, parts.path, parts.query


def _canonical_query(query: str) -> str:
    """botocore's canonical form of a URL's query: ``k=v`` pairs sorted (chute's query
    strings are already encoded, s3_wire.canonical_query)."""
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        pairs.append((key, value))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")
