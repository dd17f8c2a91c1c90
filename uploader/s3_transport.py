"""How request bodies go out on the socket, so that only a stall trips a timeout.

There are no whole-request timeouts: httpx's connect/read/write timeouts apply to each socket
operation (the stall timeout), and a body goes out in chunks each of which a link moving at
SLOWEST_MOVING_LINK sends within it, over sockets whose send queue is kept short
(TCP_NOTSENT_LOWAT), so each chunk's send is a real progress tick on the wire.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import httpx

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


def real_transport(max_connections: int) -> httpx.AsyncHTTPTransport:
    """httpx's connection pool, with TCP_NOTSENT_LOWAT on every socket (see _NOTSENT_LOWAT)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    socket_options = []
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        socket_options.append((socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT))
    return httpx.AsyncHTTPTransport(limits=limits, socket_options=socket_options)
