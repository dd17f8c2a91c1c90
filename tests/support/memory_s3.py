"""An in-memory S3 on ``httpx.MockTransport``: the subset chute uses, with S3's semantics.

Unit tests hand ``store.transport`` to :class:`S3Client` (or call :func:`memory_client`) and
drive chute's client, uploads and namespace without SeaweedFS, FUSE or root, on trio's
``MockClock``. What it implements, as S3 does it (errors are S3 XML with S3's status and code):

- PutObject: ``x-amz-meta-*``, ``x-amz-tagging``, ``If-None-Match: *`` (412
  PreconditionFailed), ``Content-MD5`` / ``x-amz-checksum-crc32c`` verified (400 BadDigest);
- GetObject with ``Range`` (206, 416 InvalidRange) and ``If-Match`` (412), HeadObject (404
  without a body), DeleteObject (204 whether or not the key exists);
- ListObjectsV2: prefix, delimiter, max-keys, continuation-token, start-after,
  ``encoding-type=url``;
- CopyObject: ``x-amz-copy-source``, ``x-amz-metadata-directive`` COPY/REPLACE,
  ``x-amz-copy-source-if-match`` (412), a copy onto itself must REPLACE (400 InvalidRequest);
- multipart: Create, UploadPart, UploadPartCopy (``x-amz-copy-source-range``), Complete (parts
  ascending, ETags and checksums checked, parts below ``min_part_size`` except the last refused
  with EntityTooSmall, ETag ``md5(concat of part md5s)-N``, ``If-None-Match: *``), Abort,
  ListMultipartUploads; a Complete retried after it succeeded answers NoSuchUpload, as
  SeaweedFS does;
- Get/PutObjectTagging, HeadBucket; a wrong bucket is 404 NoSuchBucket.

Signatures are not verified; with ``access_key`` set, a request signed with another key is
403 InvalidAccessKeyId (to test credential reloads).

Faults: :meth:`MemoryS3.fail_next` queues an error answer, a transport error before the store
sees the request, or (``after_apply=True``) the request applied and its answer lost. Every
request is logged in :attr:`MemoryS3.requests` (operation, method, key, query, headers, body).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, quote_plus, unquote
from xml.sax.saxutils import escape

import crc32c
import httpx
import trio

from chute.uploader.credentials import StaticCredentials
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import Bucket, S3Client

MiB = 1024 * 1024
ENDPOINT = "http://memory-s3.test"
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

_STATUS_OF = {
    "NoSuchKey": 404, "NoSuchUpload": 404, "NoSuchBucket": 404, "PreconditionFailed": 412,
    "InvalidPart": 400, "InvalidPartOrder": 400, "EntityTooSmall": 400, "BadDigest": 400,
    "InvalidArgument": 400, "InvalidRequest": 400, "MalformedXML": 400, "InvalidRange": 416,
    "AccessDenied": 403, "InvalidAccessKeyId": 403, "SignatureDoesNotMatch": 403,
    "ExpiredToken": 400, "RequestTimeout": 400, "SlowDown": 503, "ServiceUnavailable": 503,
    "InternalError": 500, "TooManyRequests": 429,
}
_CODE_OF = {404: "NoSuchKey", 412: "PreconditionFailed", 429: "TooManyRequests",
            500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}


class S3Failure(Exception):
    """Raised inside the handler: answered as an S3 error document."""

    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or code
        self.status = status or _STATUS_OF.get(code, 400)


@dataclass
class StoredObject:
    body: bytes
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    modified: float = field(default_factory=time.time)
    part_md5s: tuple[str, ...] = ()
    """For a completed multipart object: its parts' MD5s (hex), in order."""


@dataclass
class Multipart:
    key: str
    upload_id: str
    metadata: dict[str, str]
    tags: dict[str, str]
    initiated: float = field(default_factory=time.time)
    parts: dict[int, tuple[bytes, str, str | None]] = field(default_factory=dict)
    """number -> (body, md5 hex, CRC32C base64 if one was sent)."""


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the store saw it (headers lower-cased, query decoded)."""

    operation: str
    method: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Fault:
    """A queued failure; see :meth:`MemoryS3.fail_next`."""

    match: str | Callable[[LoggedRequest], bool] | None
    status: int | None
    code: str | None
    message: str
    error: BaseException | type[BaseException] | None
    body: bytes | Callable[[], AsyncIterator[bytes]] | None
    times: int
    after_apply: bool
    delay: float
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, request: LoggedRequest) -> bool:
        if self.times <= 0:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match == request.operation
        return bool(self.match(request))


def operation_of(method: str, key: str, query: dict[str, str], headers: dict[str, str]) -> str:
    """The S3 operation name of a request, as S3's documentation names it."""
    copy = "x-amz-copy-source" in headers
    if not key:
        if method == "HEAD":
            return "HeadBucket"
        if method == "GET" and "uploads" in query:
            return "ListMultipartUploads"
        if method == "GET" and query.get("list-type") == "2":
            return "ListObjectsV2"
        return f"Bucket{method}"
    if "tagging" in query:
        return {"GET": "GetObjectTagging", "PUT": "PutObjectTagging"}.get(method, "Tagging")
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "PUT" and "partNumber" in query:
        return "UploadPartCopy" if copy else "UploadPart"
    if method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload"
    return {"PUT": "CopyObject" if copy else "PutObject", "GET": "GetObject",
            "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)


def _http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))


def _xml(root: str, body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{_NS}">{body}</{root}>'
            ).encode()


def _el(tag: str, value: object) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class MemoryS3:
    """One bucket in memory, served through :attr:`transport` (an ``httpx.MockTransport``)."""

    def __init__(self, bucket: str = "b", *, min_part_size: int = 5 * MiB,
                 access_key: str | None = None, rewrite_backslash: bool = False) -> None:
        self.bucket = bucket
        self.rewrite_backslash = rewrite_backslash
        """Store every key with ``\\`` turned into ``/``, as SeaweedFS does."""
        self.endpoint_url = ENDPOINT
        self.min_part_size = min_part_size
        self.access_key = access_key
        """When set, a request signed with another access key is 403 InvalidAccessKeyId."""
        self.objects: dict[str, StoredObject] = {}
        self.uploads: dict[str, Multipart] = {}
        self.requests: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self.honour_encoding_type = True
        """False: listings carry keys raw even when asked for ``encoding-type=url`` (as some
        stores do), so a key with a character XML 1.0 cannot carry breaks the document."""
        self.transport = httpx.MockTransport(self.handle)

    # -- for tests ------------------------------------------------------------------------

    def fail_next(
        self, match: str | Callable[[LoggedRequest], bool] | None = None, *,
        status: int | None = None, code: str | None = None, message: str = "",
        error: BaseException | type[BaseException] | None = None,
        body: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        times: int = 1, after_apply: bool = False, delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Make the next ``times`` requests that ``match`` fail.

        ``match``: an operation name (``"UploadPart"``), a predicate on the
        :class:`LoggedRequest`, or None for any request. The failure is one of:

        - an S3 error answer: ``status`` and/or ``code`` (the other is filled in), with
          ``body`` replacing the error document if given (``status=200, body=b"<bad"`` makes a
          malformed answer; a function returning an async iterator of chunks streams it, to
          answer more than fits in memory) and ``headers`` added to the answer;
        - ``error``: an exception (instance or class, e.g. ``httpx.ConnectError``) raised by the
          transport; the store never sees the request;
        - ``after_apply=True``: the request is applied to the store, then its answer is lost
          (``error``, default ``httpx.ReadError``).

        ``delay`` seconds (trio time) pass before the fault plays out. Returns the fault; its
        ``hits`` counts how often it fired.
        """
        if status is None and code is not None:
            status = _STATUS_OF.get(code, 400)
        if code is None and status is not None and body is None:
            code = _CODE_OF.get(status, f"HTTP{status}")
        if status is None and error is None:
            error = httpx.ReadError if after_apply else httpx.ConnectError
        fault = Fault(match, status, code, message, error, body, times, after_apply, delay,
                      dict(headers or {}))
        self.faults.append(fault)
        return fault

    def operations(self) -> list[str]:
        """The operation names of the requests seen so far, in order."""
        return [r.operation for r in self.requests]

    def put(self, key: str, body: bytes = b"", metadata: dict[str, str] | None = None,
            tags: dict[str, str] | None = None) -> StoredObject:
        """Store an object directly, as another writer of the bucket would."""
        obj = StoredObject(body, _md5(body), dict(metadata or {}), dict(tags or {}))
        self.objects[key] = obj
        return obj

    def body(self, key: str) -> bytes:
        return self.objects[key].body

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    # -- the transport's handler ----------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        raw_path, _, raw_query = request.url.raw_path.decode("ascii").partition("?")
        path = unquote(raw_path)
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        bucket, _, key = path.lstrip("/").partition("/")
        host = request.url.host
        if host.startswith(f"{self.bucket}."):  # virtual-hosted style
            bucket, key = self.bucket, path.lstrip("/")
        if self.rewrite_backslash:
            key = key.replace("\\", "/")
        logged = LoggedRequest(operation_of(request.method, key, query, headers),
                               request.method, key, query, headers, request.content)
        self.requests.append(logged)
        fault = next((f for f in self.faults if f.matches(logged)), None)
        if fault is not None:
            fault.times -= 1
            fault.hits += 1
            if fault.delay:
                await trio.sleep(fault.delay)
            if fault.after_apply:
                self._answer(bucket, logged)
            if fault.error is not None:
                error = fault.error
                raise error(f"memory S3: fault on {logged.operation}") if isinstance(
                    error, type) else error
            if fault.body is not None:
                content = fault.body if isinstance(fault.body, bytes) else fault.body()
                return httpx.Response(fault.status or 200, headers=fault.headers,
                                      content=content)
            return self._error(logged, S3Failure(fault.code or "InternalError",
                                                 fault.message, fault.status))
        return self._answer(bucket, logged)

    def _answer(self, bucket: str, request: LoggedRequest) -> httpx.Response:
        try:
            if self.access_key is not None:
                credential = request.headers.get("authorization", "").partition(
                    "Credential=")[2].partition("/")[0]
                if credential != self.access_key:
                    raise S3Failure("InvalidAccessKeyId", "The AWS Access Key Id you provided "
                                    "does not exist in our records.")
            if bucket != self.bucket:
                if request.operation == "HeadBucket":
                    return httpx.Response(404)
                raise S3Failure("NoSuchBucket", "The specified bucket does not exist")
            handler = getattr(self, f"_op_{request.operation}", None)
            if handler is None:
                raise S3Failure("NotImplemented", f"{request.operation} is not implemented",
                                501)
            return handler(request)
        except S3Failure as failure:
            return self._error(request, failure)

    def _error(self, request: LoggedRequest, failure: S3Failure) -> httpx.Response:
        headers = {"x-amz-request-id": uuid.uuid4().hex[:16]}
        if request.method == "HEAD":
            return httpx.Response(failure.status, headers=headers)
        body = _xml("Error", _el("Code", failure.code) + _el("Message", failure.message)
                    + _el("Key", request.key) + _el("RequestId", headers["x-amz-request-id"]))
        return httpx.Response(failure.status, headers=headers, content=body)

    # -- checks shared by operations --------------------------------------------------------

    def _object(self, key: str) -> StoredObject:
        obj = self.objects.get(key)
        if obj is None:
            raise S3Failure("NoSuchKey", "The specified key does not exist.")
        return obj

    def _upload(self, request: LoggedRequest) -> Multipart:
        upload = self.uploads.get(request.query.get("uploadId", ""))
        if upload is None or upload.key != request.key:
            raise S3Failure("NoSuchUpload", "The specified upload does not exist.")
        return upload

    @staticmethod
    def _verify_checksums(request: LoggedRequest) -> str | None:
        """Raise BadDigest if a sent checksum does not match the body; the CRC32C if sent."""
        body = request.body
        md5 = request.headers.get("content-md5")
        if md5 is not None and base64.b64decode(md5) != hashlib.md5(body).digest():
            raise S3Failure("BadDigest", "The Content-MD5 you specified did not match what "
                            "we received.")
        crc = request.headers.get("x-amz-checksum-crc32c")
        if crc is not None and base64.b64decode(crc) != crc32c.crc32c(body).to_bytes(4, "big"):
            raise S3Failure("BadDigest", "The CRC32C you specified did not match the "
                            "calculated checksum.")
        return crc

    @staticmethod
    def _metadata(request: LoggedRequest) -> dict[str, str]:
        return {name[len("x-amz-meta-"):]: value for name, value in request.headers.items()
                if name.startswith("x-amz-meta-")}

    @staticmethod
    def _tagging(request: LoggedRequest) -> dict[str, str]:
        return dict(parse_qsl(request.headers.get("x-amz-tagging", ""), keep_blank_values=True))

    def _if_none_match(self, request: LoggedRequest) -> None:
        if request.headers.get("if-none-match") == "*" and request.key in self.objects:
            raise S3Failure("PreconditionFailed", "At least one of the pre-conditions you "
                            "specified did not hold")

    def _copy_source(self, request: LoggedRequest) -> StoredObject:
        source = unquote(request.headers["x-amz-copy-source"]).lstrip("/")
        bucket, _, key = source.partition("/")
        if bucket != self.bucket:
            raise S3Failure("NoSuchBucket", "The specified bucket does not exist")
        obj = self._object(key)
        wanted = request.headers.get("x-amz-copy-source-if-match")
        if wanted is not None and wanted.strip('"') != obj.etag:
            raise S3Failure("PreconditionFailed", "At least one of the pre-conditions you "
                            "specified did not hold")
        return obj

    @staticmethod
    def _object_headers(obj: StoredObject) -> dict[str, str]:
        headers = {"etag": f'"{obj.etag}"', "last-modified": _http_date(obj.modified),
                   "content-type": "binary/octet-stream", "accept-ranges": "bytes"}
        headers.update({f"x-amz-meta-{k}": v for k, v in obj.metadata.items()})
        if obj.tags:
            headers["x-amz-tagging-count"] = str(len(obj.tags))
        return headers

    # -- operations ------------------------------------------------------------------------

    def _op_HeadBucket(self, request: LoggedRequest) -> httpx.Response:
        return httpx.Response(200)

    def _op_PutObject(self, request: LoggedRequest) -> httpx.Response:
        crc = self._verify_checksums(request)
        self._if_none_match(request)
        obj = self.put(request.key, request.body, self._metadata(request),
                       self._tagging(request))
        headers = {"etag": f'"{obj.etag}"'}
        if crc:
            headers["x-amz-checksum-crc32c"] = crc
        return httpx.Response(200, headers=headers)

    def _op_GetObject(self, request: LoggedRequest) -> httpx.Response:
        obj = self._object(request.key)
        if_match = request.headers.get("if-match")
        if if_match is not None and if_match.strip('"') != obj.etag:
            raise S3Failure("PreconditionFailed", "At least one of the pre-conditions you "
                            "specified did not hold")
        headers = self._object_headers(obj)
        wanted = request.headers.get("range")
        if wanted is None:
            return httpx.Response(200, headers=headers, content=obj.body)
        size = len(obj.body)
        first_text, _, last_text = wanted.removeprefix("bytes=").partition("-")
        if first_text:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        else:  # bytes=-N: the last N bytes
            first, last = max(0, size - int(last_text)), size - 1
        if first >= size or first > last:
            raise S3Failure("InvalidRange", "The requested range is not satisfiable")
        headers["content-range"] = f"bytes {first}-{last}/{size}"
        return httpx.Response(206, headers=headers, content=obj.body[first:last + 1])

    def _op_HeadObject(self, request: LoggedRequest) -> httpx.Response:
        obj = self.objects.get(request.key)
        if obj is None:
            return httpx.Response(404)
        headers = self._object_headers(obj)
        headers["content-length"] = str(len(obj.body))
        return httpx.Response(200, headers=headers)

    def _op_DeleteObject(self, request: LoggedRequest) -> httpx.Response:
        self.objects.pop(request.key, None)
        return httpx.Response(204)

    def _op_CopyObject(self, request: LoggedRequest) -> httpx.Response:
        source = self._copy_source(request)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if source is self.objects.get(request.key) and directive != "REPLACE":
            raise S3Failure("InvalidRequest", "This copy request is illegal because it is "
                            "trying to copy an object to itself without changing the object's "
                            "metadata, storage class, website redirect location or encryption "
                            "attributes.")
        metadata = self._metadata(request) if directive == "REPLACE" else dict(source.metadata)
        tags = (self._tagging(request) if request.headers.get("x-amz-tagging-directive",
                                                               "COPY").upper() == "REPLACE"
                else dict(source.tags))
        obj = self.put(request.key, source.body, metadata, tags)
        return httpx.Response(200, content=_xml(
            "CopyObjectResult", _el("LastModified", _iso(obj.modified))
            + _el("ETag", f'"{obj.etag}"')))

    def _op_GetObjectTagging(self, request: LoggedRequest) -> httpx.Response:
        obj = self._object(request.key)
        tags = "".join(f"<Tag>{_el('Key', k)}{_el('Value', v)}</Tag>"
                       for k, v in obj.tags.items())
        return httpx.Response(200, content=_xml("Tagging", f"<TagSet>{tags}</TagSet>"))

    def _op_PutObjectTagging(self, request: LoggedRequest) -> httpx.Response:
        obj = self._object(request.key)
        try:
            root = ET.fromstring(request.body)
        except ET.ParseError:
            raise S3Failure("MalformedXML", "The XML you provided was not well-formed"
                            ) from None
        tags: dict[str, str] = {}
        for tag in root.iter():
            if _local(tag.tag) == "Tag":
                fields = {_local(child.tag): child.text or "" for child in tag}
                tags[fields.get("Key", "")] = fields.get("Value", "")
        obj.tags = tags
        return httpx.Response(200)

    def _op_ListObjectsV2(self, request: LoggedRequest) -> httpx.Response:
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = int(q.get("max-keys", "1000"))
        url = q.get("encoding-type") == "url" and self.honour_encoding_type
        after, skip_prefix = q.get("start-after", ""), ""
        if "continuation-token" in q:
            token = json.loads(base64.urlsafe_b64decode(q["continuation-token"]))
            after, skip_prefix = token["after"], token["prefix"]
        entries: list[tuple[str, str]] = []  # (kind, value) in key order
        truncated, last = False, ""
        for key in sorted(self.objects):
            if not key.startswith(prefix) or key <= after:
                continue
            if skip_prefix and key.startswith(skip_prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if entries and entries[-1] == ("prefix", common):
                    continue
                item = ("prefix", common)
            else:
                item = ("key", key)
            if len(entries) >= max_keys:
                truncated = True
                break
            entries.append(item)
            last = item[1]
            skip_prefix = common if item[0] == "prefix" else ""

        def enc(text: str) -> str:
            return quote_plus(text, safe="/") if url else text

        parts = [_el("Name", self.bucket), _el("Prefix", enc(prefix)),
                 _el("KeyCount", len(entries)), _el("MaxKeys", max_keys),
                 _el("IsTruncated", "true" if truncated else "false")]
        if delimiter:
            parts.append(_el("Delimiter", enc(delimiter)))
        if url:
            parts.append(_el("EncodingType", "url"))
        if "start-after" in q:
            parts.append(_el("StartAfter", enc(q["start-after"])))
        if "continuation-token" in q:
            parts.append(_el("ContinuationToken", q["continuation-token"]))
        if truncated:
            token = {"after": last, "prefix": skip_prefix}
            parts.append(_el("NextContinuationToken", base64.urlsafe_b64encode(
                json.dumps(token).encode()).decode()))
        for kind, value in entries:
            if kind == "key":
                obj = self.objects[value]
                etag = f'"{obj.etag}"'
                parts.append(
                    f"<Contents>{_el('Key', enc(value))}"
                    f"{_el('LastModified', _iso(obj.modified))}{_el('ETag', etag)}"
                    f"{_el('Size', len(obj.body))}{_el('StorageClass', 'STANDARD')}</Contents>")
            else:
                parts.append(f"<CommonPrefixes>{_el('Prefix', enc(value))}</CommonPrefixes>")
        return httpx.Response(200, content=_xml("ListBucketResult", "".join(parts)))

    def _op_CreateMultipartUpload(self, request: LoggedRequest) -> httpx.Response:
        upload = Multipart(request.key, uuid.uuid4().hex, self._metadata(request),
                           self._tagging(request))
        self.uploads[upload.upload_id] = upload
        return httpx.Response(200, content=_xml(
            "InitiateMultipartUploadResult", _el("Bucket", self.bucket) + _el("Key", request.key)
            + _el("UploadId", upload.upload_id)))

    def _part_number(self, request: LoggedRequest) -> int:
        number = int(request.query["partNumber"])
        if not 1 <= number <= 10_000:
            raise S3Failure("InvalidArgument", "Part number must be an integer between 1 and "
                            "10000, inclusive")
        return number

    def _op_UploadPart(self, request: LoggedRequest) -> httpx.Response:
        upload = self._upload(request)
        number = self._part_number(request)
        crc = self._verify_checksums(request)
        md5 = _md5(request.body)
        upload.parts[number] = (request.body, md5, crc)
        headers = {"etag": f'"{md5}"'}
        if crc:
            headers["x-amz-checksum-crc32c"] = crc
        return httpx.Response(200, headers=headers)

    def _op_UploadPartCopy(self, request: LoggedRequest) -> httpx.Response:
        upload = self._upload(request)
        number = self._part_number(request)
        source = self._copy_source(request)
        body = source.body
        wanted = request.headers.get("x-amz-copy-source-range")
        if wanted is not None:
            first_text, _, last_text = wanted.removeprefix("bytes=").partition("-")
            first, last = int(first_text), int(last_text)
            if first > last or last >= len(body):
                raise S3Failure("InvalidArgument", "The x-amz-copy-source-range value must be "
                                "of the form bytes=first-last where first and last are the "
                                "zero-based offsets of the first and last bytes to copy")
            body = body[first:last + 1]
        md5 = _md5(body)
        upload.parts[number] = (body, md5, None)
        return httpx.Response(200, content=_xml(
            "CopyPartResult", _el("LastModified", _iso(time.time())) + _el("ETag", f'"{md5}"')))

    def _op_CompleteMultipartUpload(self, request: LoggedRequest) -> httpx.Response:
        upload = self._upload(request)
        try:
            root = ET.fromstring(request.body)
        except ET.ParseError:
            raise S3Failure("MalformedXML", "The XML you provided was not well-formed"
                            ) from None
        listed = [{_local(child.tag): (child.text or "") for child in part}
                  for part in root.iter() if _local(part.tag) == "Part"]
        if not listed:
            raise S3Failure("MalformedXML", "The XML you provided was not well-formed or did "
                            "not validate against our published schema")
        numbers = [int(part.get("PartNumber", "0")) for part in listed]
        if numbers != sorted(set(numbers)):
            raise S3Failure("InvalidPartOrder", "The list of parts was not in ascending order. "
                            "The parts list must be specified in order by part number.")
        chosen: list[tuple[bytes, str]] = []
        for number, part in zip(numbers, listed, strict=True):
            stored = upload.parts.get(number)
            if stored is None or part.get("ETag", "").strip('"') != stored[1]:
                raise S3Failure("InvalidPart", "One or more of the specified parts could not "
                                "be found. The part might not have been uploaded, or the "
                                "specified entity tag might not have matched the part's "
                                "entity tag.")
            crc = part.get("ChecksumCRC32C")
            if crc is not None and stored[2] is not None and crc != stored[2]:
                raise S3Failure("InvalidPart", f"The checksum of part {number} does not match")
            chosen.append((stored[0], stored[1]))
        for body, _ in chosen[:-1]:
            if len(body) < self.min_part_size:
                raise S3Failure("EntityTooSmall", "Your proposed upload is smaller than the "
                                "minimum allowed object size.")
        self._if_none_match(request)
        md5s = tuple(md5 for _, md5 in chosen)
        etag = f"{_md5(b''.join(bytes.fromhex(m) for m in md5s))}-{len(md5s)}"
        obj = StoredObject(b"".join(body for body, _ in chosen), etag, upload.metadata,
                           upload.tags, part_md5s=md5s)
        self.objects[request.key] = obj
        del self.uploads[upload.upload_id]
        return httpx.Response(200, content=_xml(
            "CompleteMultipartUploadResult",
            _el("Location", f"{ENDPOINT}/{self.bucket}/{quote(request.key)}")
            + _el("Bucket", self.bucket) + _el("Key", request.key) + _el("ETag", f'"{etag}"')))

    def _op_AbortMultipartUpload(self, request: LoggedRequest) -> httpx.Response:
        upload = self._upload(request)
        del self.uploads[upload.upload_id]
        return httpx.Response(204)

    def _op_ListMultipartUploads(self, request: LoggedRequest) -> httpx.Response:
        q = request.query
        prefix = q.get("prefix", "")
        max_uploads = int(q.get("max-uploads", "1000"))
        marker = (q.get("key-marker", ""), q.get("upload-id-marker", ""))
        pending = sorted((u.key, u.upload_id) for u in self.uploads.values()
                         if u.key.startswith(prefix))
        if marker[0]:
            pending = [p for p in pending if p > marker] if marker[1] else \
                [p for p in pending if p[0] > marker[0]]
        page, truncated = pending[:max_uploads], len(pending) > max_uploads
        parts = [_el("Bucket", self.bucket), _el("Prefix", prefix),
                 _el("MaxUploads", max_uploads),
                 _el("IsTruncated", "true" if truncated else "false")]
        if truncated:
            parts += [_el("NextKeyMarker", page[-1][0]), _el("NextUploadIdMarker", page[-1][1])]
        for key, upload_id in page:
            parts.append(f"<Upload>{_el('Key', key)}{_el('UploadId', upload_id)}"
                         f"{_el('Initiated', _iso(self.uploads[upload_id].initiated))}</Upload>")
        return httpx.Response(200, content=_xml("ListMultipartUploadsResult", "".join(parts)))


def memory_client(store: MemoryS3, *, prefix: str = "", region: str = "us-east-1",
                  policy: RetryPolicy | None = None,
                  credentials: StaticCredentials | None = None, **kwargs: object) -> S3Client:
    """An :class:`S3Client` talking to ``store`` (static credentials, path-style URLs).

    ``kwargs`` go to S3Client (``stall_timeout``, ``on_retry``...). The default policy is the
    mount's; tests that fail requests on purpose want a MockClock (``autojump_clock``).
    """
    bucket = Bucket(store.bucket, prefix, endpoint_url=store.endpoint_url, region=region)
    return S3Client(bucket, credentials or StaticCredentials("memory-key", "memory-secret"),
                    policy or RetryPolicy(), transport=store.transport,
                    **kwargs)  # type: ignore[arg-type]


