"""How a request reaches the store, so that only a stall trips a timeout.

There are no whole-request timeouts: the connect/read/write timeouts apply to each socket
operation (the stall timeout), and a body goes out in chunks each of which a link moving at
SLOWEST_MOVING_LINK sends within it, over sockets whose send queue is kept short
(TCP_NOTSENT_LOWAT), so each chunk's send is a real progress tick on the wire.

The real transport is chute's own HTTP/1.1 connection pool (s3_http.py: a fraction of the
CPU per request of httpx's transport, measured there); an injected one (the tests' in-memory
S3 on ``httpx.MockTransport``) is any httpx transport. :func:`exchange` sends through
either and hands back what both answer with: ``status_code``, ``headers`` (lower-cased
names), ``stream`` and ``aclose()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from .s3_http import ConnectionPool, socket_options

SLOWEST_MOVING_LINK = 8 * 1024
"""Bytes per second below which a transfer counts as stalled. A body goes out in chunks,
each one socket write under the stall timeout, so a chunk is sized to take the whole stall
timeout at this rate: 240 KiB with the default 30 s. Sizing chunks by the link's measured
rate instead is unsafe: a proxy's buffers swallow MiBs at once, then a chunk sized from that
burst can never finish. Each chunk costs a pass through h11, httpcore and trio: with 64 KiB
chunks a 4 GiB cp took 3.4 s of the mount's CPU per GiB on loopback, with 240 KiB 2.2 s
(scripts/bench.py, same machine)."""
MIN_SEND_CHUNK = 64 * 1024
MAX_SEND_CHUNK = 1024 * 1024


def send_chunk_size(stall_timeout: float) -> int:
    """Chunk size for bodies sent under ``stall_timeout`` (see SLOWEST_MOVING_LINK)."""
    return max(MIN_SEND_CHUNK, min(MAX_SEND_CHUNK, int(SLOWEST_MOVING_LINK * stall_timeout)))


_NOTSENT_LOWAT = 64 * 1024
"""Stall detection measures progress on the wire, not into the kernel's buffers: with
TCP_NOTSENT_LOWAT the socket accepts more only once the unsent queue is below 64 KiB, so a
chunk's send completes when the link has actually moved all but 64 KiB of it, and a slow but moving
link (100 KiB/s) is never mistaken for a stall; without it, MiBs of queued body made the read
timeout start while the body was still crawling out."""


async def chunks(body: memoryview, size: int, progress: Callable[[int], object] | None
                 ) -> AsyncIterator[memoryview]:
    """``body`` in slices of ``size``, telling ``progress`` after each has gone out."""
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        yield chunk
        if progress is not None:
            progress(len(chunk))


Transport = ConnectionPool | httpx.AsyncBaseTransport
"""What an S3Client sends through: the real pool, or an injected httpx transport."""


def real_transport(max_connections: int) -> ConnectionPool:
    """chute's connection pool, with TCP_NOTSENT_LOWAT on every socket (see _NOTSENT_LOWAT)."""
    return ConnectionPool(max_connections, socket_options=socket_options(_NOTSENT_LOWAT))


async def exchange(transport: Transport, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | memoryview | AsyncIterator[memoryview], *,
                   stall_timeout: float, read_timeout: float) -> Any:
    """Send one request; its answer, head read, body still to be read from ``stream``
    (then ``aclose()``). Connect and send wait at most ``stall_timeout`` per socket
    operation, receiving ``read_timeout``; waiting for a pooled connection is not timed."""
    if isinstance(transport, ConnectionPool):
        return await transport.request(method, url, headers, content,
                                       connect_timeout=stall_timeout,
                                       write_timeout=stall_timeout, read_timeout=read_timeout)
    timeout = httpx.Timeout(stall_timeout, read=read_timeout, pool=None)
    if isinstance(content, memoryview):
        content = bytes(content)  # httpx would iterate a memoryview's ints
    request = httpx.Request(method, url, headers=headers, content=content,
                            extensions={"timeout": timeout.as_dict()})
    return await transport.handle_async_request(request)
