"""What backup users set on every object: storage class, encryption, object lock, ACL, tags,
Content-Type (``chute mount``'s "upload options"), and the headers each S3 call needs for them.

An :class:`ObjectOptions` is checked once, at mount (:func:`check`, one sentence per problem),
and then applied by the S3 client to every request it sends (``S3Client.object_options``,
:meth:`ObjectOptions.request_headers`): one place, so no caller (uploads, copies for rename and
chmod, appends' UploadPartCopy, reads) can forget a header. Per call, exactly what AWS
documents for it:

=========================  ============================================================
PutObject, Create          storage class, SSE (``x-amz-server-side-encryption`` [+ KMS key
                           id]) or SSE-C, object lock (mode + retain-until, legal hold),
                           ACL, ``x-amz-tagging`` (extra tags; PutObject also chute's hash
                           tag), ``Content-Type`` from the name
CopyObject                 as above (a copy must not fall back to STANDARD or to the
                           bucket's default encryption, and S3 copies no ACL), plus the
                           ``x-amz-copy-source-server-side-encryption-customer-*`` trio for
                           an SSE-C source; Content-Type only with REPLACE (else the
                           source's is kept); tags are copied by S3 (TaggingDirective COPY)
UploadPart, Complete       SSE-C trio only (SSE and storage class belong to Create)
UploadPartCopy             SSE-C trio for the destination and the copy-source trio
GetObject, HeadObject      SSE-C trio only (AWS refuses ``x-amz-server-side-encryption``
                           on reads)
=========================  ============================================================

Decisions:

- chute's own bookkeeping objects (keys under ``.chute-*`` in the mount's prefix: upload and
  move markers, probes) get only SSE (non-C) and the ACL, which bucket policies commonly
  require of every PutObject. They get no storage class (a GLACIER marker could not be read
  back), no object lock (they must be deletable), no SSE-C and no tags.
  A temporary object (``.chute-temp/``, recompose.py) holds the user's data, so it also gets
  SSE-C on every call (and the copy-source trio when it is copied into), but is otherwise one
  of chute's own: it must stay readable and deletable until the object is composed from it.
- The SSE-C key is read from a file, never from argv: the file must be owned by the mounting
  user and not readable or writable by group or others (0600 or stricter), and hold exactly
  32 raw bytes or the base64 of 32 bytes (whitespace around it ignored).
- With SSE-C every object under the mount is taken to be encrypted with that key: a HEAD or
  GET of one that is not (written before, or by another client) is refused by S3 (400) and
  shows as EIO. ``chute verify`` takes no key (it reads with plain HEADs).
- Object lock (a mode with a retain duration, and/or legal hold) implies ``--no-overwrite``
  and ``--no-delete`` (fs/policy.py): an object under retention cannot be replaced or
  deleted, so the mount never tries; the retain-until date is computed per request (now +
  duration, in UTC).
- Storage class: the AWS list or any other ``[A-Z0-9_]{1,64}`` (stores name their own).
- Tags: at most ``MAX_EXTRA_TAGS`` (S3 allows 10 per object and chute's hash tag is one);
  the PutObjectTagging that writes the hash tag after Complete writes the extra tags again
  (it replaces the whole set).
- Content-Type from ``mimetypes.guess_type`` of the key, ``application/octet-stream`` if
  unknown; off with ``--no-content-type`` (then no header: the store's default).
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from .checksums import HASH_TAG
from .errors import ConfigError

AWS_STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                       "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS",
                       "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE")
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
CANNED_ACLS = ("private", "public-read", "public-read-write", "authenticated-read",
               "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control")
MAX_EXTRA_TAGS = 9
"""S3 keeps at most 10 tags per object; chute's own hash tag is one of them."""
OWN_KEY_DIR = ".chute-"
"""chute's bookkeeping objects live under names starting with this (leftovers, moves)."""
TEMP_KEY_DIR = ".chute-temp"
"""Temporary objects of uploads composed at close (recompose.py) live in this directory."""

_STORAGE_CLASS_RE = re.compile(r"^[A-Z0-9_]{1,64}$")
_TAG_CHARS_RE = re.compile(r"^[\w .:+=@/-]*$", re.UNICODE)
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdwy]?)\s*$")
_DURATION_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
                   "y": 365 * 86400}

SSE_C = "x-amz-server-side-encryption-customer-"
COPY_SOURCE_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"


@dataclass(frozen=True)
class ObjectOptions:
    """The upload options of one mount; see the module docstring for what each call gets."""

    storage_class: str | None = None
    sse: str | None = None
    """AES256, aws:kms or aws:kms:dsse (None: the bucket's default encryption)."""
    sse_kms_key_id: str | None = None
    sse_c_key: bytes | None = field(default=None, repr=False)
    """The 32-byte SSE-C key (read from the key file; never logged)."""
    lock_mode: str | None = None
    lock_retain_seconds: int | None = None
    legal_hold: bool = False
    acl: str | None = None
    content_type: bool = True
    tags: tuple[tuple[str, str], ...] = ()
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Wall clock for retain-until dates (tests pass a fixed one)."""

    @property
    def object_lock(self) -> bool:
        """Objects are written under retention or legal hold: never overwrite or delete."""
        return self.lock_mode is not None or self.legal_hold

    # -- header groups --------------------------------------------------------------

    def _sse_c(self, prefix: str = SSE_C) -> dict[str, str]:
        if self.sse_c_key is None:
            return {}
        return {
            f"{prefix}algorithm": "AES256",
            f"{prefix}key": base64.b64encode(self.sse_c_key).decode(),
            f"{prefix}key-MD5": base64.b64encode(hashlib.md5(self.sse_c_key).digest()).decode(),
        }

    def _sse(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.sse is not None:
            headers["x-amz-server-side-encryption"] = self.sse
            if self.sse_kms_key_id is not None:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        return headers

    def _lock(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.lock_mode is not None and self.lock_retain_seconds is not None:
            until = datetime.fromtimestamp(self.clock() + self.lock_retain_seconds, UTC)
            headers["x-amz-object-lock-mode"] = self.lock_mode
            headers["x-amz-object-lock-retain-until-date"] = (
                until.strftime("%Y-%m-%dT%H:%M:%S.") + f"{until.microsecond // 1000:03d}Z")
        if self.legal_hold:
            headers["x-amz-object-lock-legal-hold"] = "ON"
        return headers

    def tagging(self, given: str | None = None) -> str | None:
        """``x-amz-tagging``: the extra tags URL-encoded, after ``given`` (chute's hash tag)."""
        parts = [given] if given else []
        parts += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.tags]
        return "&".join(parts) or None

    def _new_object(self, key: str, given: Mapping[str, str], *, content_type: bool
                    ) -> dict[str, str]:
        """Storage class, encryption, lock, ACL, tags, Content-Type: what an object is made
        with (PutObject, CreateMultipartUpload, CopyObject)."""
        headers = dict(given)
        if self.storage_class is not None:
            headers["x-amz-storage-class"] = self.storage_class
        headers.update(self._sse())
        headers.update(self._sse_c())
        headers.update(self._lock())
        if self.acl is not None:
            headers["x-amz-acl"] = self.acl
        if content_type and self.content_type and "Content-Type" not in headers:
            headers["Content-Type"] = content_type_of(key)
        return headers

    # -- one function per call kind ----------------------------------------------------

    def put_object(self, key: str, given: Mapping[str, str]) -> dict[str, str]:
        headers = self._new_object(key, given, content_type=True)
        tagging = self.tagging(headers.pop("x-amz-tagging", None))
        if tagging:
            headers["x-amz-tagging"] = tagging
        return headers

    def create_multipart_upload(self, key: str, given: Mapping[str, str]) -> dict[str, str]:
        return self.put_object(key, given)

    def copy_object(self, key: str, given: Mapping[str, str]) -> dict[str, str]:
        replace = given.get("x-amz-metadata-directive") == "REPLACE"
        headers = self._new_object(key, given, content_type=replace)
        headers.update(self._sse_c(COPY_SOURCE_SSE_C))
        return headers

    def upload_part(self, given: Mapping[str, str]) -> dict[str, str]:
        return {**given, **self._sse_c()}

    def upload_part_copy(self, given: Mapping[str, str]) -> dict[str, str]:
        return {**given, **self._sse_c(), **self._sse_c(COPY_SOURCE_SSE_C)}

    def complete_multipart_upload(self, given: Mapping[str, str]) -> dict[str, str]:
        return {**given, **self._sse_c()}

    def read(self, given: Mapping[str, str]) -> dict[str, str]:
        """GetObject and HeadObject."""
        return {**given, **self._sse_c()}

    def own_object(self, given: Mapping[str, str]) -> dict[str, str]:
        """PutObject/CopyObject of chute's bookkeeping objects: SSE and ACL only."""
        headers = {**given, **self._sse()}
        if self.acl is not None:
            headers["x-amz-acl"] = self.acl
        return headers

    def temporary_object(self, operation: str, given: Mapping[str, str]) -> dict[str, str]:
        """A temporary object's headers: an own object's, plus SSE-C on every call."""
        headers = dict(given)
        if operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
            headers = self.own_object(given)
        if operation in ("PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart",
                         "UploadPartCopy", "CompleteMultipartUpload", "GetObject",
                         "HeadObject"):
            headers.update(self._sse_c())
        if operation in ("CopyObject", "UploadPartCopy"):
            headers.update(self._sse_c(COPY_SOURCE_SSE_C))
        return headers

    def request_headers(self, operation: str, key: str, given: Mapping[str, str], *,
                        own: bool = False, temporary: bool = False) -> Mapping[str, str]:
        """The headers to send for ``operation`` on ``key``: ``given`` plus this mount's
        options (``own``: one of chute's bookkeeping objects; ``temporary``: a temporary
        object; see the module docstring)."""
        if temporary:
            return self.temporary_object(operation, given)
        if own:
            if operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
                return self.own_object(given)
            return given
        if operation == "PutObject":
            return self.put_object(key, given)
        if operation == "CreateMultipartUpload":
            return self.create_multipart_upload(key, given)
        if operation == "CopyObject":
            return self.copy_object(key, given)
        if operation == "UploadPart":
            return self.upload_part(given)
        if operation == "UploadPartCopy":
            return self.upload_part_copy(given)
        if operation == "CompleteMultipartUpload":
            return self.complete_multipart_upload(given)
        if operation in ("GetObject", "HeadObject"):
            return self.read(given)
        return given

    def with_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        """A PutObjectTagging set: the extra tags, then ``tags`` (chute's hash tag) — the
        call replaces the whole set, so the extra tags are written again."""
        return {**dict(self.tags), **tags}

    def lock_probe_headers(self) -> dict[str, str]:
        """The lock headers for the mount's preflight PutObject (fs/mount.py)."""
        return self._lock()


def content_type_of(key: str) -> str:
    """The Content-Type of ``key``'s name (Python's mimetypes), octet-stream if unknown."""
    guessed, _ = mimetypes.guess_type(key.rsplit("/", 1)[-1], strict=False)
    return guessed or "application/octet-stream"


# -- parsing and checks, each problem one sentence ---------------------------------------


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``2w``, ``1y`` (365 days), a bare number = days; seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 30d, 12h or 1y)")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} must be positive")
    return seconds


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` under S3's tag rules."""
    key, eq, value = text.partition("=")
    if not eq:
        raise ValueError(f"--tag {text!r} is not KEY=VALUE")
    if not 1 <= len(key) <= 128:
        raise ValueError(f"--tag key {key!r} must be 1 to 128 characters")
    if len(value) > 256:
        raise ValueError(f"--tag value of {key!r} must be at most 256 characters")
    if key.startswith("aws:"):
        raise ValueError(f"--tag key {key!r}: keys starting with aws: are AWS's")
    if key == HASH_TAG:
        raise ValueError(f"--tag key {HASH_TAG!r} is chute's own hash tag")
    for part in (key, value):
        if not _TAG_CHARS_RE.match(part):
            raise ValueError(f"--tag {text!r}: S3 tags allow only letters, digits, spaces "
                             "and + - = . _ : / @")
    return key, value


def read_sse_c_key(path: str) -> bytes:
    """The SSE-C key in ``path``: the user's own file, 0600 or stricter, 32 raw bytes or the
    base64 of 32 bytes. ConfigError (one sentence) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(f"--sse-c-key-file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read --sse-c-key-file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"--sse-c-key-file {path} is not a regular file")
        if st.st_uid != os.getuid():
            raise ConfigError(f"--sse-c-key-file {path} must be owned by you (uid "
                              f"{os.getuid()}), not uid {st.st_uid}")
        if st.st_mode & 0o077:
            raise ConfigError(f"--sse-c-key-file {path} has mode {stat.S_IMODE(st.st_mode):04o}"
                              ": other users may read it; chmod 600 it")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) == 32:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"--sse-c-key-file {path} must hold a 256-bit key: 32 raw bytes or "
                          "their base64 (openssl rand 32 > FILE)")
    return key


def check(storage_class: str | None = None, sse: str | None = None,
          sse_kms_key_id: str | None = None, sse_c_key_file: str | None = None,
          lock_mode: str | None = None, lock_retain: str | None = None,
          legal_hold: bool = False, acl: str | None = None, content_type: bool = True,
          tags: list[str] | tuple[str, ...] = ()) -> ObjectOptions:
    """Options as given (flags, config file or fstab) → an ObjectOptions, or ConfigError
    with one sentence naming the problem."""
    if storage_class is not None and not _STORAGE_CLASS_RE.match(storage_class):
        raise ConfigError(f"--storage-class {storage_class!r} is not a storage class (one of "
                          f"{', '.join(AWS_STORAGE_CLASSES)}, or your store's: A-Z 0-9 _)")
    if sse is not None and sse not in SSE_MODES:
        raise ConfigError(f"--sse must be one of {', '.join(SSE_MODES)}, got {sse!r}")
    if sse_kms_key_id is not None and (sse is None or not sse.startswith("aws:kms")):
        raise ConfigError("--sse-kms-key-id needs --sse aws:kms")
    if sse is not None and sse_c_key_file is not None:
        raise ConfigError("--sse and --sse-c-key-file exclude each other: an object has "
                          "one kind of server-side encryption")
    key = read_sse_c_key(sse_c_key_file) if sse_c_key_file is not None else None
    if lock_mode is not None and lock_mode not in LOCK_MODES:
        raise ConfigError(f"--object-lock-mode must be GOVERNANCE or COMPLIANCE, got "
                          f"{lock_mode!r}")
    if (lock_mode is None) != (lock_retain is None):
        raise ConfigError("--object-lock-mode and --object-lock-retain go together (e.g. "
                          "--object-lock-mode COMPLIANCE --object-lock-retain 30d)")
    try:
        retain = parse_duration(lock_retain) if lock_retain is not None else None
    except ValueError as exc:
        raise ConfigError(f"--object-lock-retain: {exc}") from None
    if acl is not None and acl not in CANNED_ACLS:
        raise ConfigError(f"--acl must be one of S3's canned ACLs ({', '.join(CANNED_ACLS)}),"
                          f" got {acl!r}")
    parsed: list[tuple[str, str]] = []
    for text in tags:
        try:
            parsed.append(parse_tag(text))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if len({k for k, _ in parsed}) != len(parsed):
        raise ConfigError("--tag: each tag key may be given once")
    if len(parsed) > MAX_EXTRA_TAGS:
        raise ConfigError(f"--tag: at most {MAX_EXTRA_TAGS} tags (S3 keeps 10 per object and "
                          "chute's hash tag is one)")
    return ObjectOptions(storage_class=storage_class, sse=sse, sse_kms_key_id=sse_kms_key_id,
                         sse_c_key=key, lock_mode=lock_mode, lock_retain_seconds=retain,
                         legal_hold=legal_hold, acl=acl, content_type=content_type,
                         tags=tuple(parsed))


def is_own_key(prefix: str, key: str) -> bool:
    """Whether ``key`` is one of chute's bookkeeping objects under the mount's ``prefix``."""
    return key.startswith(prefix + OWN_KEY_DIR)


def is_temp_key(prefix: str, key: str) -> bool:
    """Whether ``key`` is a temporary object (recompose.py) under the mount's ``prefix``."""
    return key.startswith(f"{prefix}{TEMP_KEY_DIR}/")
