"""The store side of one file's upload: one multipart upload, or one PutObject.

A :class:`MultipartSession` is what a file upload (file_upload.py) says to the store, and all
of it: it knows keys, upload ids, part ETags and checksums, and nothing of ring slots or of the
writer. Its life::

    NEW ──create()──> CREATED ──upload_part() ...──> ──complete()──> COMPLETED
     │                   │
     │                   └──── abort() ───> ABORTED  (or handed to the janitor: janitor.py)
     ├──put()──> COMPLETED   (a file that fits one slice: one PutObject, no multipart upload)
     └──abort()──> ABORTED   (a create() still on its way aborts its upload when it lands)

Invariants it keeps:

- Nothing is visible at the key before :meth:`complete` or :meth:`put` succeeds: S3 shows a
  multipart object only once CompleteMultipartUpload returns, and a failed one is aborted.
- Every multipart upload it creates is recorded by a marker object (leftovers.py), sent
  beside the upload's first part (upload_marker.py) and in the bucket before Complete; the
  marker goes once the upload is completed or aborted, so a mount that dies leaves nothing
  the next mount cannot find. Its deletion runs beside the work after Complete (the tag).
- A CreateMultipartUpload whose answer was lost may have made an upload nobody heard of; when
  a retry says so, the listing is searched for it and it is aborted (the lost-create check).
- A Complete or PutObject whose answer was lost may have made the object: a retry then meets
  NoSuchUpload (or, with ``no_clobber``, PreconditionFailed). That is accepted only if the
  object now at the key is exactly this upload (:meth:`_is_ours`); otherwise it is an error.
- A failed Create is not tried again per queued part: the first failure is remembered and
  raised to every later caller, so the writer hears of it within one retry budget.
- An abort gets ``ABORT_BUDGET`` seconds while the writer waits for its EIO; after that it is
  the janitor's (``defer_abort``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

import trio
import xxhash

from . import leftovers
from .checksums import (
    HASH_TAG,
    ChecksumAlgorithm,
    body_headers_off_loop,
    complete_part_fields,
    create_headers,
    multipart_etag,
)
from .errors import ObjectExists, StoreError, UploadFailed, UploadSessionLost
from .retry import RetryReason
from .s3 import S3Client
from .upload_marker import UploadMarker

log = logging.getLogger(__name__)

ABORT_BUDGET = 10.0
"""Seconds to abort a failed file's upload (at most the retry budget) while its writer waits
for the EIO: briefly, since an abort that fails is retried by the janitor every few seconds
until the store answers, and by the next mount if it never does."""


@dataclass(frozen=True)
class MultipartStatistics:
    """A snapshot of one session."""

    upload_id: str | None
    """The multipart upload's id, once created (None for a PutObject)."""
    parts_acknowledged: int
    retries: Mapping[RetryReason, int]
    """Retries of this file's Create, UploadPart, Complete and PutObject, per reason."""


class MultipartSession:
    """One object in the making at ``key``; see the module docstring for its rules."""

    def __init__(self, client: S3Client, key: str, *, checksum: ChecksumAlgorithm = "crc32c",
                 no_clobber: bool = False, name: str | None = None,
                 defer_abort: Callable[[str, str], None] | None = None,
                 read_back: trio.Semaphore | None = None) -> None:
        self.client = client
        self.key = key
        self.checksum: ChecksumAlgorithm = checksum
        self.no_clobber = no_clobber
        """Make the object only if the key does not exist then (If-None-Match: *): EEXIST."""
        self.name = name or key
        """What log lines call the file (its path in the mount)."""
        self._defer_abort = defer_abort
        self._read_back = read_back or trio.Semaphore(1)
        self.upload_id: str | None = None
        self.etag = ""
        self.metadata_sent: dict[str, str] = {}
        """The metadata the object was actually created with (once Create/Put was sent)."""
        self.retries: Counter[RetryReason] = Counter()
        self._parts: dict[int, tuple[str, dict[str, str]]] = {}
        self._create_lock = trio.Lock()
        self._create_error: BaseException | None = None
        self._closed = False
        """abort() was called: no upload may be left behind from here on."""
        self._aborted = False
        self._marker = UploadMarker(client)
        """The leftovers marker of ``upload_id`` (upload_marker.py)."""
        self.keep_marker = False
        """An upload at a temporary key (recompose.py) keeps its marker past Complete and
        abort: recompose.py deletes it with the temporary object (or the janitor does)."""
        self._commit_unconfirmed = False
        """An attempt of PutObject/Complete lost its connection after it went out: the store
        may have made the object although the request finally failed."""

    def statistics(self) -> MultipartStatistics:
        return MultipartStatistics(
            upload_id=self.upload_id, parts_acknowledged=len(self._parts),
            retries=dict(self.retries),
        )

    def _count_retry(self, reason: RetryReason) -> None:
        self.retries[reason] += 1

    def _count_commit_retry(self, reason: RetryReason) -> None:
        self._count_retry(reason)
        self._commit_unconfirmed |= reason.answer_may_be_lost

    def _metadata_headers(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """Headers for Create/Put; remembers what was sent, since the file's owner may change
        its metadata later (chmod while writing) and must then fix the object up."""
        self.metadata_sent = dict(metadata)
        return {f"x-amz-meta-{k}": v for k, v in self.metadata_sent.items()}

    # -- multipart --------------------------------------------------------------------

    async def create(self, metadata: Mapping[str, str]) -> str:
        """The upload id, creating the multipart upload on the first call (once)."""
        async with self._create_lock:
            if self._closed:
                raise UploadFailed(f"upload of {self.name} was abandoned")
            if self.upload_id is not None:
                return self.upload_id
            if self._create_error is not None:
                # The Create another part waited for failed for good. Trying again once
                # per queued part, one after the other, would keep the writer from its
                # EIO for a retry budget per part instead of one.
                raise self._create_error
            headers = {**self._metadata_headers(metadata), **create_headers(self.checksum)}
            answer_lost = False

            def retried(reason: RetryReason) -> None:
                nonlocal answer_lost
                self._count_retry(reason)
                answer_lost |= reason.answer_may_be_lost

            began = trio.current_time()
            try:
                upload_id = await self.client.create_multipart_upload(
                    self.key, headers, on_retry=retried
                )
            except Exception as exc:
                self._create_error = exc
                raise
            self.upload_id = upload_id
            self._marker.expect(upload_id, self.key)  # sent beside the first part
            if self._closed:
                # The file failed while the Create was on its way, and its abort found no
                # upload to abort: this one must not stay behind (nor, if the abort fails,
                # stay unknown to the next mount).
                await self._marker.send()
                if not self._aborted:
                    await self._abort_now()
                raise UploadFailed(f"upload of {self.name} was abandoned")
            if answer_lost:
                # An attempt whose answer was lost may have created an upload we never
                # heard of: invisible, billed, and without a marker for a later mount.
                await leftovers.abort_lost_creates(
                    self.client, self.key, upload_id, trio.current_time() - began,
                )
            return upload_id

    async def upload_part(self, part_number: int, body: memoryview | bytes,
                          headers: dict[str, str] | None = None) -> str:
        """Send one part of the upload :meth:`create` made; its ETag. NoSuchUpload before
        :meth:`abort` means the store lost the upload: :class:`UploadSessionLost`.
        ``headers``: the body's checksum headers if known (zero parts: overlay.py)."""
        assert self.upload_id is not None, "create() first"
        if headers is None:
            headers = await body_headers_off_loop(self.checksum, body)
        upload_id = self.upload_id
        try:
            etag = await self._marker.beside(lambda: self.client.upload_part(
                self.key, upload_id, part_number, body, headers, on_retry=self._count_retry,
            ))
        except StoreError as exc:
            # Once the file has failed, its upload is aborted while parts may still be in
            # flight; their NoSuchUpload is that abort, not the store losing the upload.
            if exc.code == "NoSuchUpload" and not self._closed:
                log.error(
                    "%s: the store no longer knows multipart upload %s (NoSuchUpload on part "
                    "%d): the parts already sent are gone and the ring no longer holds them, "
                    "so this file cannot be completed; the writer gets EIO",
                    self.name, self.upload_id, part_number,
                )
                raise UploadSessionLost(str(exc)) from exc
            raise
        self._parts[part_number] = (etag, complete_part_fields(headers))
        return etag

    async def copy_part(self, part_number: int, source_key: str, first: int, last: int,
                        if_match_etag: str) -> str:
        """Copy bytes ``first..last`` of ``source_key``, exactly the version ``if_match_etag``
        (else 412), as one part of the upload :meth:`create` made (overlay.py); its ETag. A
        session with copied parts announces no checksum algorithm at Create (Complete would
        need the copies' checksums): its sent parts carry Content-MD5 instead."""
        upload_id = self.upload_id
        assert upload_id is not None, "create() first"
        etag = await self._marker.beside(lambda: self.client.upload_part_copy(
            source_key, self.key, upload_id, part_number, first, last,
            if_match_etag=if_match_etag))
        self._parts[part_number] = (etag, {})
        return etag

    async def complete(self, size: int, numbers: Collection[int] | None = None, *,
                       alongside: Callable[[], Awaitable[None]] | None = None) -> str:
        """Complete the upload from the parts sent, in part-number order; the ETag.

        ``size`` is the file's length, to recognise the object if the answer was lost;
        ``numbers``: only these parts (others were cut off by a shrink), all by default;
        ``alongside``: what follows the Complete (the hash tag; it must not raise), run beside
        the marker's deletion so that close waits one round trip for both, not two."""
        assert self.upload_id is not None, "create() first"
        await self._marker.sent()
        parts = [(n, etag, fields) for n, (etag, fields) in sorted(self._parts.items())
                 if numbers is None or n in numbers]
        if numbers is not None and len(parts) != len(numbers):
            missing = sorted(set(numbers) - {n for n, _, _ in parts})
            raise UploadFailed(f"{self.name}: parts {missing[:5]} were never acknowledged")
        try:
            expected = multipart_etag([etag for _, etag, _ in parts])
        except ValueError:  # a store's copied part whose ETag is not an MD5 (SeaweedFS)
            expected = ""   # then a lost Complete answer cannot be recognised: an error
        with self._unconfirmed_reported():
            try:
                self.etag = await self.client.complete_multipart_upload(
                    self.key, self.upload_id, parts, on_retry=self._count_commit_retry,
                    if_none_match=self.no_clobber,
                )
            except StoreError as exc:
                # A retry after a lost answer finds the upload already completed
                # (NoSuchUpload, or with no_clobber a key that now exists). Accept only if
                # the object is exactly ours (same size, same multipart ETag).
                if exc.code not in ("NoSuchUpload", "PreconditionFailed"):
                    raise
                if not await self._is_ours(size, expected, None):
                    self._raise_refused(exc)
        if alongside is None:
            await self._forget_marker()
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forget_marker)
                await alongside()
        return self.etag

    # -- one PutObject ----------------------------------------------------------------

    async def put(self, body: memoryview | bytes, metadata: Mapping[str, str],
                  xxh3_128: str) -> str:
        """Make the object with one PutObject, tagged with its xxh3-128; the ETag."""
        headers = {
            **self._metadata_headers(metadata),
            **await body_headers_off_loop(self.checksum, body),
            "x-amz-tagging": f"{HASH_TAG}={xxh3_128}",
        }
        if self.no_clobber:
            headers["If-None-Match"] = "*"
        with self._unconfirmed_reported():
            try:
                self.etag = await self.client.put_object(
                    self.key, body, headers, on_retry=self._count_commit_retry
                )
            except StoreError as exc:
                # Our own first attempt may have made the object before its answer was lost.
                if exc.code != "PreconditionFailed" or not await self._is_ours(
                    len(body), None, xxh3_128
                ):
                    self._raise_refused(exc)
        return self.etag

    async def fetch_range(self, source_key: str, first: int, last: int, if_match_etag: str
                          ) -> bytes:
        """Bytes ``first..last`` of ``source_key``, exactly the version ``if_match_etag``
        (else 412): the tail of the object a file continues (overlay.py)."""
        return await self.client.get_range(source_key, first, last, if_match=if_match_etag)

    # -- after the object exists ------------------------------------------------------

    async def tag(self, xxh3_128: str) -> None:
        """Store the file hash as the object's tag (the multipart path; PutObject sends it)."""
        await self.client.put_tags(self.key, {HASH_TAG: xxh3_128})

    async def read_back_hash(self, size: int, chunk: int) -> str:
        """The xxh3-128 of the object as stored, read back ``chunk`` bytes at a time.

        For files whose retained first slice was patched after it was hashed. One read-back
        per mount at a time (the shared ``read_back`` semaphore), so the memory it takes
        beside the ring is one chunk.
        """
        hasher = xxhash.xxh3_128()
        async with self._read_back:
            for first in range(0, size, chunk):
                last = min(first + chunk, size) - 1
                data = await self.client.get_range(self.key, first, last)
                await trio.to_thread.run_sync(hasher.update, data)
        return hasher.hexdigest()

    # -- lost answers -----------------------------------------------------------------

    async def _is_ours(self, size: int, multipart_etag: str | None,
                       xxh3_128: str | None) -> bool:
        """Whether the object now at the key is exactly this upload, made by an attempt whose
        answer was lost: same size and multipart ETag, or for a PutObject (whose ETag chute
        does not compute) same size and the xxh3-128 tag sent with it. Asked whatever the
        retries said: a gateway's 502/504 may also come after the store acted."""
        info = await self.client.head_object(self.key)
        ours = info is not None and info.size == size and (
            info.etag == multipart_etag if multipart_etag is not None
            else (await self.client.get_tags(self.key)).get(HASH_TAG) == xxh3_128
        )
        if not ours:
            self._commit_unconfirmed = False  # we looked: the object is not ours
            return False
        assert info is not None
        log.info("%s: the answer to making the object was lost but the object is ours; ok",
                 self.name)
        self.etag = info.etag
        return True

    def _raise_refused(self, exc: StoreError) -> NoReturn:
        """Raise what a commit the store refused with ``exc`` reports to the writer."""
        if exc.code == "PreconditionFailed" and self.no_clobber:
            log.error("%s: %s exists and the mount has --no-overwrite: EEXIST; the new "
                      "upload was dropped and the existing object is untouched",
                      self.name, self.key)
            raise ObjectExists(f"{self.key} exists (--no-overwrite)") from exc
        raise exc

    @contextlib.contextmanager
    def _unconfirmed_reported(self) -> Iterator[None]:
        """Around a commit (Complete or PutObject): if it fails, other than by ObjectExists,
        after an attempt whose answer was lost, say that the object may have landed."""
        try:
            yield
        except ObjectExists:
            raise
        except Exception:
            if self._commit_unconfirmed:
                # Nobody can tell: the store went away with the answer. Deleting the object
                # later could delete a successful second copy, so say it instead.
                log.error(
                    "%s: an attempt to make the object lost its connection after it was "
                    "sent, and the store could not be asked again: the object may have landed "
                    "although the writer gets EIO; check %s or copy again", self.name, self.key,
                )
            raise

    # -- abort ------------------------------------------------------------------------

    async def abort(self) -> None:
        """Leave nothing behind: abort the multipart upload if there is one (once), and make
        a create() still on its way abort its upload when it lands."""
        self._closed = True
        if self.upload_id is not None and not self._aborted:
            await self._abort_now()

    async def _abort_now(self) -> None:
        """Abort now if the store answers within ABORT_BUDGET's few seconds, else leave it to
        the janitor: the writer waiting for its EIO must not wait another retry budget."""
        assert self.upload_id is not None
        self._aborted = True
        with trio.CancelScope(shield=True):
            try:
                await self.client.abort_multipart_upload(
                    self.key, self.upload_id, policy=dataclasses.replace(
                        self.client.policy, budget=min(ABORT_BUDGET, self.client.policy.budget),
                        max_delay=2.0,
                    ),
                )
            except Exception as exc:
                log.error("%s: could not abort multipart upload %s (%s); will keep trying",
                          self.name, self.upload_id, exc)
                if self._defer_abort is not None:
                    self._defer_abort(self.key, self.upload_id)
            else:
                await self._forget_marker()

    async def _forget_marker(self) -> None:
        """The upload was completed or aborted: its marker goes (a failure only logs)."""
        if not self.keep_marker:
            await self._marker.forget(wait=ABORT_BUDGET)
