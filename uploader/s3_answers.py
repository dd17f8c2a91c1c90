"""Reading the store's answers: every field is untrusted input (untrusted.py).

The S3 client (s3.py) hands each answer here; what comes back is chute's records or a chute
error, never an XML type or exception. The rules, shared by every call:

- An XML answer must be the document the call expects (``<ListBucketResult>`` for a
  listing...): an ``<Error>`` document is that error even inside a 200 (S3 sends one after
  whitespace keep-alives on long copies and completes), anything else (an HTML page from
  something that is not S3) is :class:`MalformedResponse`, which is final (EIO).
- A commit is a success only with the answer S3 gives: PutObject and UploadPart a quoted,
  well-formed ETag header and no body, the CRC32C echoed back equal to the one sent (when
  echoed); Complete and the copies their result document with an ETag; Create an UploadId.
  A store that answers 200 to anything never makes chute claim a file is stored.
- A listing is read tolerantly: a key XML 1.0 cannot carry (a raw ``\\x01``, as AWS sends it
  without ``encoding-type=url`` and a store may ignore that), one the parser would alter
  (a raw carriage return becomes a newline), or one whose URL encoding is broken, is skipped
  with one log line per page, since it cannot be addressed exactly; the rest of the page is
  used. A page with more entries than asked for is refused.
- Numbers, dates and ETags in an entry are clamped or dropped (untrusted.py), never raised.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import unquote, unquote_plus

from . import untrusted
from .errors import MalformedResponse, StoreError
from .s3_wire import Answer, Listing, ObjectInfo, PendingUpload

log = logging.getLogger("chute.uploader.store")

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_UPLOAD_ID = 1024
"""Longest upload id believed (AWS's are about 100 characters)."""
MAX_TAG_KEY, MAX_TAG_VALUE = 128, 256
"""S3's limits on a tag; a longer one was not set through S3 and is dropped."""
_UPLOAD_ID = re.compile(r"[\x21-\x7e]+")
_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SUSPECT = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\r]|&#|\xef\xbf[\xbe\xbf]")
"""Bytes after which a document may not parse, or parse altered: control characters XML 1.0
forbids, a raw CR (the parser turns it into LF), character references (``&#1;`` is
forbidden too), U+FFFE/U+FFFF. Only a body holding one of these takes the slow path."""
_NOT_XML_CHAR = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\r\ud800-\udfff\ufffe\uffff]|&#(x[0-9a-fA-F]+|[0-9]+);")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(element: ET.Element, tag: str) -> ET.Element | None:
    found = element.find(NS + tag)
    return found if found is not None else element.find(tag)


def _all(root: ET.Element, tag: str) -> list[ET.Element]:
    """Every ``tag`` element under ``root``, in S3's namespace or (some stores) in none."""
    return list(root.iter(NS + tag)) or list(root.iter(tag))


def text(element: ET.Element | None, tag: str, default: str = "") -> str:
    """The text of ``element``'s child ``tag`` (with or without the S3 namespace)."""
    if element is None:
        return default
    found = _find(element, tag)
    return found.text or default if found is not None else default


def _malformed(operation: str, answer: Answer, message: str) -> MalformedResponse:
    return MalformedResponse(operation, answer.status, message, answer.request_id)


def required(operation: str, answer: Answer, element: ET.Element, tag: str) -> str:
    """The text of a child that must be there; MalformedResponse if it is not."""
    found = _find(element, tag)
    if found is None or not found.text:
        raise _malformed(operation, answer, f"the answer has no <{tag}>")
    return found.text


# -- parsing ----------------------------------------------------------------------------------


class Document:
    """An answer's XML root, and the character standing for what had to be replaced to
    parse it (None if nothing was): a text holding it is not what the store sent."""

    def __init__(self, root: ET.Element, altered: str | None) -> None:
        self.root = root
        self.altered = altered

    def exact(self, value: str) -> bool:
        return self.altered is None or self.altered not in value


def _xml_safe(body: bytes) -> tuple[bytes, str | None]:
    """``body`` with every character XML 1.0 cannot carry (or the parser would alter)
    replaced by a private-use character absent from the body, and that character."""
    if _SUSPECT.search(body) is None:
        try:
            body.decode("utf-8")
            return body, None
        except UnicodeDecodeError:
            pass
    document = body.decode("utf-8", "surrogateescape")
    marker = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in document)

    def replace(found: re.Match[str]) -> str:
        if found.group(1) is None:
            return marker
        reference = found.group(1)
        try:
            code = int(reference[1:], 16) if reference[0] == "x" else int(reference)
        except ValueError:
            return marker
        valid = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or \
            0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF
        return found.group(0) if valid else marker

    safe = _NOT_XML_CHAR.sub(replace, document)
    if safe == document:
        return body, None
    return safe.encode("utf-8", "surrogateescape"), marker


def parse(operation: str, answer: Answer, expected: str | None = None) -> Document:
    """The answer's XML document. MalformedResponse if it is not XML or (with ``expected``)
    not that document; the StoreError of an ``<Error>`` document, whatever the status."""
    body, altered = _xml_safe(answer.body)
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _malformed(operation, answer, f"the answer is not XML ({exc}): "
                         f"{untrusted.short(answer.body[:80])}") from None
    if expected is not None and _local(root.tag) != expected:
        if _local(root.tag) == "Error":
            raise error_from_answer(operation, answer)
        raise _malformed(operation, answer, f"the answer is not a <{expected}> document but "
                         f"<{untrusted.short(_local(root.tag), 40)}>: "
                         f"{untrusted.short(answer.body[:80])}")
    return Document(root, altered)


def error_from_answer(operation: str, answer: Answer) -> StoreError:
    """The StoreError an error answer stands for (S3's <Error> document, if readable). Its
    code is used only if it looks like one; its message is cut and its control characters
    escaped (it is logged)."""
    code, message = f"HTTP{answer.status}", ""
    if answer.body:
        try:
            root = ET.fromstring(_xml_safe(answer.body)[0])
            found = text(root, "Code")
            code = found if _CODE.fullmatch(found) else code
            message = untrusted.printable(text(root, "Message"), 200)
        except ET.ParseError:
            message = untrusted.printable(answer.body[:200].decode("utf-8", "replace"), 200)
    elif answer.status == 404:
        code = "NotFound"
    elif answer.status == 412:
        code = "PreconditionFailed"
    return StoreError(operation, answer.status, code, message, answer.request_id)


# -- commits: the answer S3 gives, or a failure ---------------------------------------------


def commit_etag(operation: str, answer: Answer, checksum_sent: tuple[str, str] | None
                ) -> str:
    """The ETag of a PutObject or UploadPart answer, which must be S3's: a quoted,
    well-formed ETag header, no body, and the checksum sent (``(header, value)``) echoed
    back unchanged if the store echoes it."""
    header = answer.headers.get("etag", "")
    etag = untrusted.well_formed_etag(header) if header.startswith('"') else None
    if etag is None:
        raise _malformed(operation, answer, f"the answer has no well-formed ETag header "
                         f"({untrusted.short(header or None)}), so the store did not say it "
                         f"stored the bytes" + _body_hint(answer))
    if answer.body.strip():
        raise _malformed(operation, answer, "S3 answers this with no body, the store sent "
                         + _body_hint(answer).lstrip("; "))
    if checksum_sent is not None:
        name, sent = checksum_sent
        echoed = answer.headers.get(name.lower())
        if echoed is not None and echoed != sent:
            raise _malformed(operation, answer, f"the store's {name} is {untrusted.short(echoed)}"
                             f", not the {sent!r} of the bytes sent: they were not stored intact")
    return etag


def checksum_sent(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The x-amz-checksum-crc32c header of a request, which S3 echoes back."""
    for name, value in headers.items():
        if name.lower() == "x-amz-checksum-crc32c":
            return name, value
    return None


def _body_hint(answer: Answer) -> str:
    if not answer.body.strip():
        return ""
    kind = answer.headers.get("content-type", "no content type")
    return f"; its body ({untrusted.short(kind, 40)}): {untrusted.short(answer.body[:60])}"


def result_etag(operation: str, answer: Answer, expected: str) -> str:
    """The ETag of a CopyObjectResult, CopyPartResult or CompleteMultipartUploadResult
    (``expected``); the body is always read, since a 200 may carry an <Error>."""
    document = parse(operation, answer, expected)
    etag = untrusted.well_formed_etag(required(operation, answer, document.root, "ETag"))
    if etag is None or not document.exact(etag):
        raise _malformed(operation, answer, "the answer's <ETag> is not a well-formed ETag")
    return etag


def check_completed_key(operation: str, answer: Answer, key: str) -> None:
    """The key a CompleteMultipartUploadResult names must be the key sent (as is, or
    URL-decoded): a store that rewrote it (SeaweedFS turns ``\\`` into ``/``) stored the
    object under another name, which is a failure (EIO), never a success. An answer without
    a <Key> says nothing either way."""
    reported = text(parse(operation, answer, "CompleteMultipartUploadResult").root, "Key")
    if reported and key not in (reported, unquote(reported), unquote_plus(reported)):
        raise StoreError(operation, answer.status, "KeyMismatch",
                         f"the store completed the object as {reported!r}, not as {key!r}",
                         answer.request_id)


def upload_id(operation: str, answer: Answer) -> str:
    """The UploadId of an InitiateMultipartUploadResult: printable ASCII, at most 1 KiB."""
    document = parse(operation, answer, "InitiateMultipartUploadResult")
    found = required(operation, answer, document.root, "UploadId")
    if len(found) > MAX_UPLOAD_ID or not _UPLOAD_ID.fullmatch(found):
        raise _malformed(operation, answer, f"the UploadId {untrusted.short(found)} is not "
                         f"one chute can send back")
    return found


# -- reads --------------------------------------------------------------------------------------


def tags(operation: str, answer: Answer, key: str) -> dict[str, str]:
    """An object's tags; one S3 would not have stored (too long, altered) is dropped."""
    document = parse(operation, answer, "Tagging")
    found: dict[str, str] = {}
    for tag in _all(document.root, "Tag"):
        name, value = text(tag, "Key"), text(tag, "Value")
        if len(name) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE or not (
                document.exact(name) and document.exact(value)):
            untrusted.warn_once(key, f"tag {untrusted.short(name, 40)}", value, "ignored")
            continue
        found[name] = value
    return found


def object_info(key: str, answer: Answer) -> ObjectInfo:
    """Size, ETag, date and user metadata (``x-amz-meta-*``) from a HEAD's headers; a
    size or ETag that cannot be used is clamped or dropped (logged once)."""
    metadata = {
        name[len("x-amz-meta-"):]: value
        for name, value in answer.headers.items()
        if name.startswith("x-amz-meta-")
    }
    return ObjectInfo(
        key=key, size=untrusted.size(answer.headers.get("content-length", "0"), key,
                                     "Content-Length"),
        etag=untrusted.etag(answer.etag(), key),
        last_modified=answer.headers.get("last-modified", "")[:64], metadata=metadata,
    )


def listing(operation: str, answer: Answer, prefix: str, max_keys: int,
            asked: str | None = None) -> tuple[Listing, str | None]:
    """One ListObjectsV2 page and the token of the next one (None on the last page).
    ``asked`` is the token this page was asked with: the same one again would never end.

    Keys and prefixes are URL-decoded if the store says it encoded them
    (``<EncodingType>url</EncodingType>``, asked for so that any key fits in XML 1.0).
    Entries that cannot be read exactly are skipped, one log line per page.
    """
    document = parse(operation, answer, "ListBucketResult")
    root = document.root
    encoded = text(root, "EncodingType") == "url"
    skipped: list[str] = []

    def exact_key(raw: str | None) -> str | None:
        if raw is None or not raw:
            skipped.append("<no key>")
            return None
        if not document.exact(raw):
            skipped.append(raw.replace(document.altered or "", "\ufffd"))
            return None
        if not encoded:
            return raw
        try:
            return unquote_plus(raw, errors="strict")
        except UnicodeDecodeError:
            skipped.append(raw)
            return None

    contents, common = _all(root, "Contents"), _all(root, "CommonPrefixes")
    if len(contents) + len(common) > max_keys:
        raise _malformed(operation, answer, f"the page has {len(contents) + len(common)} "
                         f"entries, more than the {max_keys} asked for")
    objects = []
    for entry in contents:
        key = exact_key(text(entry, "Key") or None)
        if key is not None:
            objects.append(ObjectInfo(
                key=key, size=untrusted.size(text(entry, "Size", "0"), key, "Size"),
                etag=untrusted.etag(text(entry, "ETag"), key),
                last_modified=text(entry, "LastModified")[:64],
            ))
    prefixes = [p for p in (exact_key(text(e, "Prefix") or None) for e in common)
                if p is not None]
    if skipped:
        log.warning("listing %r: skipped %d name(s) the store sent in a form that cannot be "
                    "read exactly (characters XML 1.0 cannot carry, or a broken encoding), "
                    "so they cannot be addressed: %s", prefix, len(skipped),
                    ", ".join(untrusted.short(k, 60) for k in skipped[:3]))
    token = text(root, "NextContinuationToken") or None
    if text(root, "IsTruncated") != "true":
        token = None
    elif token is not None and not document.exact(token):
        raise _malformed(operation, answer, "the continuation token cannot be read exactly")
    elif token is not None and token == asked:
        raise _malformed(operation, answer, "the store sent the same continuation token "
                         "again: the listing would never end")
    return Listing(objects, prefixes), token


def pending_uploads(operation: str, answer: Answer, max_uploads: int,
                    asked: tuple[str | None, str | None] = (None, None)
                    ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
    """One ListMultipartUploads page, and the (key, upload id) markers of the next one.
    An upload whose key or id cannot be read exactly is skipped (it cannot be aborted by
    name); a page with more uploads than asked for is refused."""
    document = parse(operation, answer, "ListMultipartUploadsResult")
    root = document.root
    found = _all(root, "Upload")
    if len(found) > max_uploads:
        raise _malformed(operation, answer, f"the page has {len(found)} uploads, more than "
                         f"the {max_uploads} asked for")
    uploads = []
    for upload in found:
        key, upload_id = text(upload, "Key"), text(upload, "UploadId")
        if not (key and document.exact(key) and len(upload_id) <= MAX_UPLOAD_ID
                and _UPLOAD_ID.fullmatch(upload_id)):
            log.warning("ListMultipartUploads: skipped an upload whose key or id cannot be "
                        "read exactly: %s %s", untrusted.short(key, 60),
                        untrusted.short(upload_id, 60))
            continue
        uploads.append(PendingUpload(key, upload_id, text(upload, "Initiated")[:64]))
    key_marker = text(root, "NextKeyMarker")
    if text(root, "IsTruncated") != "true" or not key_marker:
        return uploads, None
    marker = (key_marker, text(root, "NextUploadIdMarker"))
    if not (document.exact(marker[0]) and document.exact(marker[1])) or marker == asked:
        raise _malformed(operation, answer, "the next page's markers cannot be read exactly, "
                         "or are those of this page (the listing would never end)")
    return uploads, marker
