"""Late patches: writes into slices already sent, kept in memory until the file is closed.

A multipart upload's parts cannot be read back before Complete, and its key is fixed at
CreateMultipartUpload. So a write that lands in a slice already sealed for upload (a SENT
slice: zip patching a member's header 30 MiB back, qemu updating a table, a Python writer
seeking back 100 MiB to fix 8 bytes) can be honoured only if the upload was created at a
hidden temporary key T: at close T is completed, and the object at the file's key K is
composed from T with the patches applied (recompose.py). Such an upload is in *temp-key mode*.

Which uploads are made at T (:func:`wants_temp_key`, decided once, at the upload's first
CreateMultipartUpload, or at the first late patch if that comes first), by ``--patch-back``:

- ``auto`` (default): the file was opened O_RDWR (Info-ZIP's and Python zipfile's output,
  qemu, databases), or before its upload is created it has written back into an earlier slice
  other than the first (a zip-like writer patching a header that crossed a slice boundary:
  it will likely do it again further back). A header patch into the first slice (WAV, mp4,
  whose writers patch it after every chunk) does not count: the retained first slice serves
  it, and a temporary key would cost every such file a server-side copy;
- ``always``: every multipart upload (each then costs a server-side copy at close);
- ``never``: none; a late patch is EINVAL as before.

A late patch in an upload made at K is :class:`BackwardWrite` (EINVAL), logged with the bytes,
the offset and ``--patch-back always``. Patches are held in memory, merged where they overlap
or adjoin (a later write wins), charged against the mount's one :class:`PatchBudget`
(``--patch-budget``, all files together). A patch the budget cannot take is
:class:`PatchBudgetExhausted` (ENOBUFS, logged naming ``--patch-budget``); the caller drops
the upload, so nothing partial is ever visible.

Contract with the file upload (file_upload.py / slices.py), all calls synchronous:

- ``note_backward_write()``: a write landed below the start of the slice being filled (into
  a retained earlier slice but the first), before the upload's Create: under ``auto`` it is
  made at T.
- ``decide()``: at the first CreateMultipartUpload (recompose.Recomposer.prepare calls it);
  from then on :attr:`enabled` is fixed.
- ``add(offset, data)``: a write whose bytes lie (partly) in a SENT slice. The caller hands
  the whole write or only the SENT part; bytes given here override T's bytes at close.
- ``truncate(size, into_sent=True)``: the file shrank to ``size`` inside a SENT slice (its
  bytes past ``size`` in T must then read as zeros should the file grow again); without
  temp-key mode that is :class:`TruncateRefused` (EOPNOTSUPP). Call it with
  ``into_sent=False`` for every other shrink of a file that has late patches (``pending``):
  patch bytes at or past ``size`` are dropped either way, so they cannot come back.
- ``release()``: the upload ended (done, failed, dropped): the budget gets its bytes back.
  Idempotent; recompose.py calls it too.

Invariant: :attr:`bytes_held` is exactly what this file has taken from the budget, and a
released instance holds nothing.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Literal

from .errors import BackwardWrite, PatchBudgetExhausted, TruncateRefused
from .sizes import MiB, format_size

log = logging.getLogger(__name__)

PatchBack = Literal["auto", "always", "never"]
PATCH_BACK_MODES: tuple[PatchBack, ...] = ("auto", "always", "never")
DEFAULT_PATCH_BACK: PatchBack = "auto"
DEFAULT_PATCH_BUDGET = 8 * MiB
"""--patch-budget: late patches all files of a mount may hold in memory at once."""


def wants_temp_key(patch_back: str, *, opened_rdwr: bool, backward_write: bool) -> bool:
    """Whether an upload is to be created at a temporary key (the one rule; see the module
    docstring): ``always`` yes, ``never`` no, ``auto`` if the file was opened O_RDWR or has
    written back into an earlier slice but the first."""
    if patch_back == "always":
        return True
    if patch_back == "never":
        return False
    return opened_rdwr or backward_write


@dataclass(frozen=True)
class PatchBudgetStatistics:
    limit: int
    used: int
    """Bytes of late patches held now, all files together."""
    peak: int
    exhausted: int
    """Late patches refused because the budget was full (each dropped its upload)."""


class PatchBudget:
    """The bytes of late patches the whole mount may hold (one per mount, the Uploader's)."""

    def __init__(self, limit: int = DEFAULT_PATCH_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.exhausted = 0

    def take(self, count: int, path: str) -> None:
        """Charge ``count`` bytes for ``path``, or raise PatchBudgetExhausted (logged)."""
        if count <= 0:
            return
        if self.used + count > self.limit:
            self.exhausted += 1
            log.error(
                "%s: a late patch needs %s more while late patches already hold %s of the "
                "mount's --patch-budget %s: ENOBUFS, upload dropped (nothing is made; an "
                "object it was to replace is untouched); mount with a larger --patch-budget "
                "for writers that patch this much far back", path, format_size(count),
                format_size(self.used), format_size(self.limit))
            raise PatchBudgetExhausted(
                f"late patches of {path} exceed --patch-budget {format_size(self.limit)}")
        self.used += count
        self.peak = max(self.peak, self.used)

    def give(self, count: int) -> None:
        self.used -= count
        assert self.used >= 0, "patch budget given back more than was taken"

    def statistics(self) -> PatchBudgetStatistics:
        return PatchBudgetStatistics(self.limit, self.used, self.peak, self.exhausted)


class LatePatches:
    """One file's late patches and its temp-key decision (see the module docstring)."""

    def __init__(self, path: str, budget: PatchBudget, slice_size: int, *,
                 patch_back: str = DEFAULT_PATCH_BACK, opened_rdwr: bool = False) -> None:
        self.path = path
        self.patch_back = patch_back
        self.opened_rdwr = opened_rdwr
        self.backward_write = False
        """A write went back into an earlier slice (see :meth:`note_backward_write`)."""
        self.decided = False
        self.enabled = False
        """Temp-key mode: the upload is (to be) created at a temporary key; fixed once
        :attr:`decided`."""
        self.temp_key: str | None = None
        """The temporary key, once recompose.Recomposer.prepare chose it."""
        self._budget = budget
        self._slice_size = slice_size
        self._starts: list[int] = []
        self._data: list[bytearray] = []
        """Patch intervals, sorted, disjoint and not adjoining: [start, start + len)."""
        self._zeros: list[tuple[int, int]] = []
        """[first, end) ranges of T that read as zeros (a shrink into a SENT slice)."""
        self.bytes_held = 0

    # -- the decision ---------------------------------------------------------------

    def note_backward_write(self) -> None:
        """A write landed in an earlier slice than the one being filled (see module doc)."""
        self.backward_write = True

    def decide(self) -> bool:
        """Decide temp-key mode now if not yet (at the first Create); :attr:`enabled`."""
        if not self.decided:
            self.decided = True
            self.enabled = wants_temp_key(self.patch_back, opened_rdwr=self.opened_rdwr,
                                          backward_write=self.backward_write)
        return self.enabled

    # -- changes --------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Some bytes of T are to be changed when the object is composed."""
        return bool(self._starts or self._zeros)

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Keep a write into SENT bytes for the composition at close; BackwardWrite if the
        upload is not in temp-key mode, PatchBudgetExhausted if the budget cannot take it."""
        end = offset + len(data)
        if not data:
            return
        if not self.decided:
            self.backward_write = True
            self.decide()
        if not self.enabled:
            log.error(
                "%s: write of %d bytes at offset %d..%d goes back into bytes already sent to "
                "the store, and this upload was not made at a temporary key: EINVAL, upload "
                "aborted (mount with --patch-back always to let such writes land, at the cost "
                "of a server-side copy of each file at close)", self.path, len(data), offset,
                end)
            raise BackwardWrite(f"backward write at {offset} into sent data of {self.path}")
        lo = bisect.bisect_left(self._starts, offset)
        if lo and self._starts[lo - 1] + len(self._data[lo - 1]) >= offset:
            lo -= 1  # the interval before overlaps or adjoins
        hi = bisect.bisect_right(self._starts, end)  # intervals starting at or before end
        if lo == hi:  # touches nothing: a new interval
            self._budget.take(len(data), self.path)
            self._starts.insert(lo, offset)
            self._data.insert(lo, bytearray(data))
            self.bytes_held += len(data)
            return
        first = min(self._starts[lo], offset)
        last = max(max(s + len(d) for s, d in zip(self._starts[lo:hi], self._data[lo:hi],
                                                   strict=True)), end)
        old = sum(len(d) for d in self._data[lo:hi])
        self._budget.take(last - first - old, self.path)
        self.bytes_held += last - first - old
        if hi - lo == 1 and self._starts[lo] <= offset:  # grows one interval in place
            buf = self._data[lo]
        else:
            buf = bytearray(last - first)
            for s, d in zip(self._starts[lo:hi], self._data[lo:hi], strict=True):
                buf[s - first : s - first + len(d)] = d
            self._starts[lo:hi] = [first]
            self._data[lo:hi] = [buf]
        buf[offset - first : end - first] = data

    def truncate(self, size: int, *, into_sent: bool = True) -> None:
        """The file shrank to ``size`` (see the module docstring for ``into_sent``)."""
        if into_sent and not self.decided:
            self.backward_write = True
            self.decide()
        if into_sent and not self.enabled:
            log.error(
                "%s: truncating to %d bytes cuts into bytes already sent to the store, and "
                "this upload was not made at a temporary key: EOPNOTSUPP, the file keeps "
                "its length (mount with --patch-back always to allow it)", self.path, size)
            raise TruncateRefused(f"truncate of {self.path} into sent data")
        cut = bisect.bisect_left(self._starts, size)
        if cut and self._starts[cut - 1] + len(self._data[cut - 1]) > size:
            buf = self._data[cut - 1]
            dropped = len(buf) - (size - self._starts[cut - 1])
            del buf[size - self._starts[cut - 1]:]
            self._give(dropped)
        for buf in self._data[cut:]:
            self._give(len(buf))
        del self._starts[cut:], self._data[cut:]
        self._zeros = [(a, min(b, size)) for a, b in self._zeros if a < size]
        if into_sent and size % self._slice_size:
            self._zeros.append((size, size - size % self._slice_size + self._slice_size))

    def _give(self, count: int) -> None:
        self.bytes_held -= count
        self._budget.give(count)

    def release(self) -> None:
        """Give every byte back to the budget and forget the patches (idempotent)."""
        self._budget.give(self.bytes_held)
        self.bytes_held = 0
        self._starts, self._data, self._zeros = [], [], []

    # -- reading them (recompose.py) -----------------------------------------------

    def touches(self, first: int, end: int) -> bool:
        """Whether bytes ``[first, end)`` of T are changed (patched or zeroed)."""
        if any(a < end and first < b for a, b in self._zeros):
            return True
        i = bisect.bisect_left(self._starts, end)
        return bool(i) and self._starts[i - 1] + len(self._data[i - 1]) > first

    def apply(self, first: int, view: memoryview) -> None:
        """Change ``view``, holding T's bytes ``[first, first + len(view))``, into the file's:
        the zeroed ranges first, then the patches over them."""
        end = first + len(view)
        for a, b in self._zeros:
            a, b = max(a, first), min(b, end)
            if a < b:
                view[a - first : b - first] = bytes(b - a)
        i = max(bisect.bisect_right(self._starts, first) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            start, buf = self._starts[i], self._data[i]
            a, b = max(start, first), min(start + len(buf), end)
            if a < b:
                view[a - first : b - first] = memoryview(buf)[a - start : b - start]
            i += 1
