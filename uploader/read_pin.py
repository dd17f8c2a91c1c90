"""GETs of one pinned object version: what their failure means, and reads fetched on demand.

A reader (prefetch.py) pins the version it opened by its ETag, and every GET it sends carries
``If-Match: <etag>``, so each byte the store returns is that version's. If the object was
replaced (412) or deleted (404) since, :func:`pinned_error` turns the store's answer into
:class:`ObjectChanged` (ESTALE): the pinned version is gone, and the reader must fail rather
than serve a mix of two versions. Other failures (the S3 client's, past its retry budget)
are returned as they are (EIO).

:func:`demand_range` is the read a reader's window cannot cover (the budget refused
prefetch): exactly the bytes asked, in GETs of at most the budget's demand reserve, each
charged while it runs and released once its bytes are out (read_budget.py says why that
always progresses), under the same pin.
"""

from __future__ import annotations

import logging

from .errors import ObjectChanged, StoreError
from .logsafe import quoted
from .read_budget import ReadBudget
from .read_tuning import RangeSource

log = logging.getLogger(__name__)


def pinned_error(exc: Exception, key: str, etag: str) -> Exception:
    """A refused If-Match (412), or a key gone (404), means the pinned version is gone."""
    if isinstance(exc, StoreError) and (exc.status in (404, 412)
                                        or exc.code == "PreconditionFailed"):
        log.warning("%s changed while open for reading (pinned ETag %s): %s", quoted(key),
                    quoted(etag), exc)
        return ObjectChanged(f"{quoted(key)} was replaced or deleted since it was opened "
                             f"(ETag {quoted(etag)}): {exc}")
    return exc


async def demand_range(source: RangeSource, budget: ReadBudget, *, key: str, etag: str,
                       offset: int, end: int) -> bytes | memoryview:
    """Bytes ``[offset, end)`` of the pinned version fetched now from the demand reserve,
    not kept."""
    parts = []
    while offset < end:
        size = min(end - offset, budget.demand_reserve)
        async with budget.demand(size):
            budget.note_request()
            try:
                data = await source.get_range(key, offset, offset + size - 1, if_match=etag)
            except StoreError as exc:
                raise pinned_error(exc, key, etag) from exc
            budget.note_fetched(len(data))
        parts.append(data)
        offset += size
    return parts[0] if len(parts) == 1 else b"".join(parts)
