"""The leftovers marker of one multipart upload, sent beside the upload's first part.

Every multipart upload chute creates is recorded by a marker object (leftovers.py), so a
mount that dies leaves nothing the next mount cannot find. Sending that marker between the
Create and the first part put one more round trip in front of every big file's first byte;
sent beside the first part (or copied part) instead, it costs none, and it still lands
before anything is billed for long: the part and its marker travel together. Its life::

    NONE ──expect()──> DUE ──send()──> SENDING ──> SENT   ──forget()──> NONE
                        │                      └─> FAILED ──forget()──> NONE
                        └──forget()──> NONE  (never sent: nothing to delete)

Invariants:

- ``sent()`` returns only once the marker is in the bucket (sending it if nobody has yet),
  and raises the send's failure: the session calls it before Complete, so an upload never
  completes, and so never lets its marker go, while the marker's PUT is still on its way.
- ``forget()`` deletes the marker only after its PUT has settled (leftovers.py orders a
  marker's DELETE after its PUT), so a PUT still in flight cannot land after the DELETE and
  leave a marker behind. It gives up after ``wait`` seconds: a marker left then is the
  next mount's (leftovers.clean deletes a marker whose upload is gone).
- ``send()`` and ``forget()`` never raise an ``Exception``: the first is run beside a part
  and its failure is reported by ``sent()``; the second only logs, as a marker left behind
  costs nothing but a later mount's look at it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from . import leftovers
from .errors import UploadFailed
from .s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")


class MarkerState(enum.Enum):
    NONE = "none"
    DUE = "due"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class UploadMarker:
    """The marker of one session's multipart upload (one upload at a time)."""

    def __init__(self, client: S3Client) -> None:
        self._client = client
        self.key = ""
        self.state = MarkerState.NONE
        self._upload_id = ""
        self._settled = trio.Event()
        self._error: BaseException | None = None

    @property
    def due(self) -> bool:
        """The upload exists and nobody has started sending its marker yet."""
        return self.state is MarkerState.DUE

    def expect(self, upload_id: str, key: str) -> None:
        """``upload_id`` of ``key`` was just created: its marker is due."""
        assert self.state is MarkerState.NONE, self.state
        self.state, self._upload_id, self.key = MarkerState.DUE, upload_id, key
        self._settled, self._error = trio.Event(), None

    async def send(self) -> None:
        """Write the marker if it is due; a failure is kept for :meth:`sent`, never raised."""
        if self.state is not MarkerState.DUE:
            return
        self.state = MarkerState.SENDING
        try:
            await leftovers.record(self._client, self.key, self._upload_id)
        except BaseException as exc:
            # Cancelled too: whether the PUT landed is unknown, so forget() still deletes.
            self._settle(MarkerState.FAILED, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._settle(MarkerState.SENT, None)

    def _settle(self, state: MarkerState, error: BaseException | None) -> None:
        if self.state is MarkerState.SENDING:  # (not once forget() ran)
            self.state = state
        self._error = error
        self._settled.set()

    async def beside(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` (a part), with the marker sent beside it while it is due: the first
        part does not wait a round trip for the marker. Raises what ``send`` raised, bare
        and once the marker's PUT has settled; the marker's own failure waits for
        :meth:`sent`."""
        if not self.due:
            return await send()
        outcome: list[T] = []
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.send)
            try:
                outcome.append(await send())
            except Exception as exc:  # raised bare below, not in an ExceptionGroup
                failure.append(exc)
        if failure:
            raise failure[0]
        return outcome[0]

    async def sent(self) -> None:
        """The marker is in the bucket: sent now if nobody did, awaited if on its way; its
        failure raised (a cancelled send counts as failed, and so does a marker forgotten or
        never expected: an error, never a wait that no send will end)."""
        await self.send()
        if self.state is MarkerState.SENDING:
            await self._settled.wait()
        if self.state is MarkerState.SENT:
            return
        if isinstance(self._error, Exception):
            raise self._error
        raise UploadFailed(f"the marker of upload {self._upload_id or '(none)'} was not sent")

    async def forget(self, wait: float) -> None:
        """The upload is completed or aborted: its marker goes, after a PUT still on its way
        (leftovers.forget waits for it), within ``wait`` seconds. Never raises an
        Exception: a marker left behind is logged, and the next mount deletes it."""
        state, self.state = self.state, MarkerState.NONE
        if state in (MarkerState.NONE, MarkerState.DUE):
            return
        try:
            with trio.move_on_after(wait) as scope:
                await leftovers.forget(self._client, self._upload_id)
        except Exception as exc:
            log.warning("could not delete the marker of upload %s of %r: %s",
                        self._upload_id, self.key, exc)
        if scope.cancelled_caught:
            log.warning("the marker of upload %s of %r is not deleted after %.0f s; the next "
                        "mount deletes it", self._upload_id, self.key, wait)
