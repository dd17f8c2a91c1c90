"""Which S3 operation a request is (``Kind``), from its method, query and headers alone:
what a fault selects requests by."""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from urllib.parse import parse_qsl


class Kind(enum.StrEnum):
    """The S3 operation a request is, from its method, query and headers (path-style URLs)."""

    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    UPLOAD_PART_COPY = "UploadPartCopy"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    LIST_PARTS = "ListParts"
    PUT_OBJECT = "PutObject"
    COPY_OBJECT = "CopyObject"
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    HEAD_BUCKET = "HeadBucket"
    DELETE_OBJECT = "DeleteObject"
    DELETE_OBJECTS = "DeleteObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    PUT_OBJECT_TAGGING = "PutObjectTagging"
    GET_OBJECT_TAGGING = "GetObjectTagging"
    DELETE_OBJECT_TAGGING = "DeleteObjectTagging"
    OTHER = "Other"


def classify(method: str, target: str, headers: Iterable[tuple[str, str]] = ()) -> Kind:
    """The kind of an S3 REST request; ``headers`` are (name, value) pairs, any case."""
    method = method.upper()
    path, _, query = target.partition("?")
    params = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    has_key = "/" in path.lstrip("/")  # /bucket/key, not /bucket or /bucket/
    has_key = has_key and bool(path.lstrip("/").split("/", 1)[1])
    copy = any(name.lower() == "x-amz-copy-source" for name, _ in headers)
    if method == "POST":
        if "uploads" in params:
            return Kind.CREATE_MULTIPART_UPLOAD
        if "uploadId" in params:
            return Kind.COMPLETE_MULTIPART_UPLOAD
        if "delete" in params:
            return Kind.DELETE_OBJECTS
    elif method == "PUT":
        if "tagging" in params:
            return Kind.PUT_OBJECT_TAGGING
        part = "partNumber" in params and "uploadId" in params
        if copy:
            return Kind.UPLOAD_PART_COPY if part else Kind.COPY_OBJECT
        if part:
            return Kind.UPLOAD_PART
        if has_key and not params & {"acl", "retention", "legal-hold"}:
            return Kind.PUT_OBJECT
    elif method == "DELETE":
        if "uploadId" in params:
            return Kind.ABORT_MULTIPART_UPLOAD
        if "tagging" in params:
            return Kind.DELETE_OBJECT_TAGGING
        if has_key:
            return Kind.DELETE_OBJECT
    elif method == "HEAD":
        return Kind.HEAD_OBJECT if has_key else Kind.HEAD_BUCKET
    elif method == "GET":
        if "tagging" in params:
            return Kind.GET_OBJECT_TAGGING
        if "uploadId" in params:
            return Kind.LIST_PARTS
        if "uploads" in params:
            return Kind.LIST_MULTIPART_UPLOADS
        if not has_key and ("list-type", "2") in parse_qsl(query, keep_blank_values=True):
            return Kind.LIST_OBJECTS_V2
        if has_key and not params & {"acl", "attributes", "retention", "legal-hold"}:
            return Kind.GET_OBJECT
    return Kind.OTHER


KindSpec = Kind | str | Collection[Kind | str] | None


def parse_kinds(spec: KindSpec) -> frozenset[Kind] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return frozenset({Kind(spec)})
    kinds = frozenset(Kind(k) for k in spec)
    if not kinds:
        raise ValueError("an empty kind collection matches nothing; use None for every request")
    return kinds

