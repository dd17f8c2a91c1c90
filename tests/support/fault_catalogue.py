"""The fault matrix's catalogue: one ``Row`` per fault, declared as data (what the proxy
does, what must come of it, the mount options), and the file sizes the rows copy.

tests/test_fault_matrix.py runs each row once against a real mount; scripts/soak.py runs the
same rows with concurrent writers for as long as asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from .faultproxy import (
    ExpiredTokenFor,
    Fault,
    Kind,
    Outage,
    ResetAfter,
    ResetBefore,
    StallRequest,
    StallResponse,
    Status,
    Throttle,
)
from .verdicts import FAILED, LANDED, UNCONFIRMED

KiB = 1 << 10
MiB = 1 << 20
RING = 40 * MiB
BIG = 23 * MiB + 4099
"""Five parts: four full 5 MiB slices and a 3 MiB tail."""
SMALL = MiB + 17
"""Below one slice: a single PutObject."""
SLOW_SMALL = 600 * KiB + 17
"""A single PutObject that takes six seconds at 100 KiB/s."""
HUGE = 2 * RING + 3 * MiB + 11
"""Twice the ring: the writer waits for slots while the fault plays out (backpressure)."""
SIZES = (BIG, SMALL, SLOW_SMALL, HUGE)

RETRIED = "retrying "
"""What the mount logs once per retry (uploader/retry.py)."""


@dataclass(frozen=True)
class Row:
    """One fault scenario: what the proxy does, what must come of it, and the mount options."""

    name: str
    faults: tuple[Fault, ...]
    expect: str
    """LANDED (a transient fault) or FAILED (a permanent one); UNCONFIRMED when the fault
    takes the answer of the request that makes the object and then the store itself."""
    size: int = BIG
    budget: float = 20.0
    """--retry-budget, seconds."""
    stall: float = 3.0
    """--stall-timeout, seconds."""
    logs: tuple[str, ...] = ()
    """Lines the mount's log must contain: how the user learns what happened."""
    once: bool = False
    """Each of ``logs`` must appear exactly once (one failure, one explanation)."""
    not_cut: bool = False
    """No transfer may be cancelled or retried: the fault slowed it but it kept moving."""
    min_seconds: float = 0.0
    """The copy cannot honestly have been faster: the fault really held it up."""
    max_seconds: float = 120.0
    """A failure must reach the writer about when the retry budget says, not much later."""
    settle: float = 0.0
    """Seconds to let the mount finish what is still in flight before its log is read."""
    solo: bool = False
    """Transient only if one writer meets all of it: with concurrent writers (scripts/soak.py)
    another writer may take part of it and, for that writer, it is permanent."""
    bug: str | None = None
    """A known bug this row exposes, and where its fix goes (outside this module's reach)."""
    strict: bool = True
    """Whether the bug shows every time (else timing may hide it now and then)."""

    @property
    def options(self) -> tuple[str, ...]:
        return mount_options(self.budget, self.stall)


def mount_options(budget: float, stall: float) -> tuple[str, ...]:
    """Every mount here: 5 MiB slices in an 8-slot ring, a small budget and stall timeout."""
    return ("--slice-size", "5MiB", "--ring-size", "40MiB",
            "--retry-budget", f"{budget:g}", "--stall-timeout", f"{stall:g}")


PART = Kind.UPLOAD_PART
CREATE = Kind.CREATE_MULTIPART_UPLOAD
COMPLETE = Kind.COMPLETE_MULTIPART_UPLOAD
PUT = Kind.PUT_OBJECT
HEAD = Kind.HEAD_OBJECT
LIST = Kind.LIST_OBJECTS_V2
TAGGING = Kind.PUT_OBJECT_TAGGING
DELETE = Kind.DELETE_OBJECT
ABORT = Kind.ABORT_MULTIPART_UPLOAD
FOREVER = 300.0
"""The duration of a fault meant to outlast the copy (bounded, as the proxy wants)."""
STALLED = "failed: timeout ("
"""How a transfer cancelled by --stall-timeout is logged."""
MAY_HAVE_LANDED = "the object may have landed although the writer gets EIO"
OUTAGE_BUDGET = 30.0
"""For outages of 5 s: well past the outage, so the row shows an outage ridden out, not the
last attempt at the budget's end racing the outage's end."""

CATALOGUE: tuple[Row, ...] = (
    # Transient answers of the store on parts: retried with backoff.
    Row("500 InternalError on UploadPart x2", (Status(500, kind=PART, times=2),), LANDED),
    Row("503 ServiceUnavailable on UploadPart x3", (Status(503, kind=PART, times=3),), LANDED),
    Row("503 SlowDown on UploadPart x3", (Status(503, "SlowDown", kind=PART, times=3),), LANDED),
    Row("429 TooManyRequests on UploadPart x2", (Status(429, kind=PART, times=2),), LANDED),
    Row("400 RequestTimeout on UploadPart", (Status(400, "RequestTimeout", kind=PART),), LANDED),
    # The connection, before and after the store acted.
    Row("reset mid-body of UploadPart", (ResetBefore(kind=PART, after_body_bytes=MiB),), LANDED),
    Row("reset after UploadPart x2 (answer lost)", (ResetAfter(kind=PART, times=2),), LANDED),
    Row("stall 10 s mid-body of UploadPart (stall-timeout 2 s)",
        (StallRequest(10.0, kind=PART),), LANDED, stall=2.0, logs=(STALLED,)),
    Row("stall 10 s in UploadPart's answer (stall-timeout 2 s)",
        (StallResponse(10.0, kind=PART),), LANDED, stall=2.0, logs=(STALLED,)),
    Row("UploadPart at 200 KiB/s, 26 s (stall-timeout 8 s)", (Throttle(200 * KiB, kind=PART),),
        LANDED, stall=8.0, not_cut=True, min_seconds=20.0),
    Row("every PutObject at 100 KiB/s (stall-timeout 3 s)",
        (Throttle(100 * KiB, kind=PUT, times=None, duration=FOREVER),), LANDED,
        size=SLOW_SMALL, not_cut=True, min_seconds=5.0),
    Row("ExpiredToken on every write for 3 s",
        (ExpiredTokenFor(3.0, kind=(PART, CREATE, PUT, COMPLETE)),), LANDED,
        logs=("credentials: ExpiredToken",)),
    # Creating and completing the multipart upload.
    Row("500 on CreateMultipartUpload x2", (Status(500, kind=CREATE, times=2),), LANDED),
    Row("reset after CreateMultipartUpload (answer lost)", (ResetAfter(kind=CREATE),), LANDED,
        logs=("made by a CreateMultipartUpload whose answer was lost",)),
    Row("503 on CompleteMultipartUpload x2", (Status(503, kind=COMPLETE, times=2),), LANDED),
    Row("reset after CompleteMultipartUpload (answer lost)", (ResetAfter(kind=COMPLETE),),
        LANDED),
    Row("reset after Complete, retry told NoSuchUpload (as AWS does)",
        (ResetAfter(kind=COMPLETE), Status(404, "NoSuchUpload", kind=COMPLETE)), LANDED,
        logs=("the object is ours",), solo=True),
    Row("outage 5 s at CompleteMultipartUpload (budget 30 s)", (Outage(5.0, kind=COMPLETE),),
        LANDED, budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("500 on PutObjectTagging", (Status(500, kind=TAGGING),), LANDED),
    Row("503 on DeleteObject x2 (the upload marker)", (Status(503, kind=DELETE, times=2),),
        LANDED),
    # A small file: one PutObject.
    Row("503 on PutObject x2 (small file)", (Status(503, kind=PUT, times=2),), LANDED,
        size=SMALL),
    Row("reset after PutObject (small file, answer lost)", (ResetAfter(kind=PUT),), LANDED,
        size=SMALL),
    # cp's lookup of the destination: HeadObject, then ListObjectsV2.
    Row("503 on HeadObject x2 + 500 on ListObjectsV2 x2 (lookup)",
        (Status(503, kind=HEAD, times=2), Status(500, kind=LIST, times=2)), LANDED),
    Row("reset after HeadObject and ListObjectsV2 (lookup)",
        (ResetAfter(kind=HEAD), ResetAfter(kind=LIST)), LANDED),
    # The server goes away for less than the retry budget.
    Row("outage 5 s from the start (budget 30 s)", (Outage(5.0),), LANDED,
        budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("outage 5 s at the 3rd part (budget 30 s)", (Outage(5.0, kind=PART, after=2),), LANDED,
        budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("outage 5 s, file twice the ring (budget 30 s)", (Outage(5.0, kind=PART, after=3),),
        LANDED, size=HUGE, budget=OUTAGE_BUDGET, min_seconds=4.5),
    # Permanent: the writer must hear of it soon, and nothing may stay behind.
    Row("NoSuchUpload on UploadPart (session lost)", (Status(404, "NoSuchUpload", kind=PART),),
        FAILED, logs=("the parts already sent are gone",), max_seconds=10.0),
    Row("NoSuchUpload on UploadPart while another crawls (abort mid-part)",
        (Status(404, "NoSuchUpload", kind=PART), Throttle(MiB, kind=PART)), FAILED,
        size=HUGE, stall=2.0, logs=("the parts already sent are gone",), once=True,
        max_seconds=10.0, settle=5.0),
    Row("AccessDenied on every UploadPart, 503 on the abort x2",
        (Status(403, "AccessDenied", kind=PART, times=None, duration=FOREVER),
         Status(503, kind=ABORT, times=2)), FAILED,
        logs=("HTTP 403 AccessDenied",), max_seconds=10.0),
    Row("NoSuchUpload on CompleteMultipartUpload (no object)",
        (Status(404, "NoSuchUpload", kind=COMPLETE),), FAILED, max_seconds=10.0),
    Row("ExpiredToken on CreateMultipartUpload for 60 s (never refreshed)",
        (ExpiredTokenFor(60.0, kind=CREATE),), FAILED, logs=("credentials: ExpiredToken",),
        max_seconds=12.0),
    Row("outage 10 s at the 2nd part (budget 3 s)", (Outage(10.0, kind=PART, after=1),),
        FAILED, budget=3.0, logs=("could not abort multipart upload",
                                  "aborted leftover multipart upload"), max_seconds=10.0),
    Row("outage 20 s at CreateMultipartUpload (budget 3 s)", (Outage(20.0, kind=CREATE),),
        FAILED, budget=3.0, max_seconds=7.0),
    Row("outage 20 s from the start (lookup, budget 3 s)", (Outage(20.0),), FAILED, budget=3.0,
        max_seconds=7.0),
    # Permanent, after the store acted on the request that makes the object: nobody can know
    # whether it landed. The writer gets EIO and the log says the object may exist.
    Row("reset after PutObject, then outage 10 s (budget 3 s)",
        (ResetAfter(kind=PUT), Outage(10.0, kind=PUT)), UNCONFIRMED, size=SMALL, budget=3.0,
        logs=(MAY_HAVE_LANDED,), max_seconds=7.0),
    Row("reset after Complete, then outage 10 s (budget 3 s)",
        (ResetAfter(kind=COMPLETE), Outage(10.0, kind=COMPLETE)), UNCONFIRMED, budget=3.0,
        logs=(MAY_HAVE_LANDED,), max_seconds=10.0),
)
