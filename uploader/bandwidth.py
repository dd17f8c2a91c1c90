"""``--bwlimit``: one token bucket over all of a mount's uploads, optionally on a schedule.

A nightly backup must not take the office uplink: every byte of every PutObject and
UploadPart body (retries included) takes its tokens just before it goes out on the socket
(s3.py sends bodies in chunks, :func:`throttled`), so the limit holds on the wire, for all
files at once, and the event loop is never blocked: a chunk short of tokens sleeps in trio.
Other requests (small XML bodies, reads) are not limited.

The bucket is a reservation clock: each chunk reserves ``len / rate`` seconds after the
previous reservation and waits until its own reservation is due, with at most
``BURST_SECONDS`` of unused rate saved up. No lock is needed: a reservation is made between
two awaits.

Rates: ``20MiB/s``, ``5M`` (K/M/G binary, as rclone's ``--bwlimit``; KB/MB/GB decimal),
``off``. A bare number is refused, since rclone reads it as KiB/s and chute would not guess.
A schedule is rclone's form, ``08:00,5M 19:00,off``: from each local time of day the rate that
follows applies, until the next; before the first time of the day the last one applies.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from .sizes import format_size, parse_size

BURST_SECONDS = 0.25
"""Unused rate saved up at most (a quarter second's worth): short idle moments are not lost,
an idle hour is not a burst."""
MIN_CHUNK = 16 * 1024
CHUNK_SECONDS = 0.1
"""A throttled body goes out in chunks of about this much time at the current rate, so the
rate is smooth and a slow limit never leaves the socket silent for long."""

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*(?:/s)?\s*$")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_rate(text: str) -> float | None:
    """Bytes per second of ``20MiB/s`` / ``5M``; None for ``off``. ValueError otherwise."""
    if text.strip().lower() == "off":
        return None
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (try 20MiB/s, 5M or off; a unit is needed)")
    rate = parse_size(match.group(1) + match.group(2))
    if rate <= 0:
        raise ValueError(f"the rate {text!r} must be positive")
    return float(rate)


@dataclass(frozen=True)
class BandwidthSchedule:
    """``--bwlimit``: a fixed rate, or rates by local time of day (rclone's timetable)."""

    entries: tuple[tuple[int, float | None], ...]
    """(minute of the day, bytes per second or None for unlimited), sorted by minute."""
    text: str = ""

    def rate_at(self, minute_of_day: int) -> float | None:
        current = self.entries[-1][1]
        for minute, rate in self.entries:
            if minute <= minute_of_day:
                current = rate
        return current

    def describe(self) -> str:
        if len(self.entries) == 1:
            rate = self.entries[0][1]
            return "off" if rate is None else f"{format_size(rate)}/s"
        return self.text


def parse_bwlimit(text: str) -> BandwidthSchedule:
    """``20MiB/s``, ``5M``, ``off`` or ``08:00,5M 19:00,off``; ValueError in one sentence."""
    words = text.split()
    if not words:
        raise ValueError("--bwlimit is empty")
    if len(words) == 1 and "," not in words[0]:
        return BandwidthSchedule(((0, parse_rate(words[0])),), text)
    entries: dict[int, float | None] = {}
    for word in words:
        when, comma, rate = word.partition(",")
        match = _TIME_RE.match(when)
        if not comma or not match:
            raise ValueError(f"--bwlimit schedule entry {word!r} is not HH:MM,RATE "
                             "(e.g. 08:00,5M 19:00,off)")
        hours, minutes = int(match.group(1)), int(match.group(2))
        if hours > 23 or minutes > 59:
            raise ValueError(f"--bwlimit schedule entry {word!r}: no such time of day")
        if hours * 60 + minutes in entries:
            raise ValueError(f"--bwlimit schedule names {when} twice")
        entries[hours * 60 + minutes] = parse_rate(rate)
    return BandwidthSchedule(tuple(sorted(entries.items())), text)


def _local_minute() -> int:
    now = time.localtime()
    return now.tm_hour * 60 + now.tm_min


@dataclass
class Bandwidth:
    """The mount's token bucket (trio; one per mount, shared by all uploads)."""

    schedule: BandwidthSchedule
    minute_of_day: Callable[[], int] = _local_minute
    _due: float = field(default=float("-inf"), init=False)
    sent: int = field(default=0, init=False)
    """Bytes that went through the bucket (for the benchmark and status)."""

    def rate(self) -> float | None:
        """Bytes per second now, None if unlimited now."""
        return self.schedule.rate_at(self.minute_of_day())

    def chunk_size(self, largest: int) -> int:
        rate = self.rate()
        if rate is None:
            return largest
        return max(MIN_CHUNK, min(largest, int(rate * CHUNK_SECONDS)))

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may go out."""
        self.sent += n
        rate = self.rate()
        if rate is None:
            return
        now = trio.current_time()
        start = max(self._due, now - BURST_SECONDS)
        self._due = start + n / rate
        if self._due > now:
            await trio.sleep_until(self._due)


async def throttled(bandwidth: Bandwidth, body: memoryview, largest_chunk: int,
                    progress: Callable[[int], object] | None) -> AsyncIterator[memoryview]:
    """``body`` in chunks, each after its tokens were taken, telling ``progress`` after each
    has gone out (as s3_transport.chunks does)."""
    start = 0
    while start < len(body):
        size = bandwidth.chunk_size(largest_chunk)
        chunk = body[start : start + size]
        await bandwidth.take(len(chunk))
        yield chunk
        start += len(chunk)
        if progress is not None:
            progress(len(chunk))
