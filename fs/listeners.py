"""Serving a local listener without letting its clients take the mount's descriptors.

``trio.serve_listeners`` accepts every connection as it comes and gives each a task: a flood
of connections to the metrics port (any local user can connect to loopback) once took every
descriptor the mount had, and FUSE requests and uploads then failed with EMFILE. Here a
connection is accepted only while fewer than ``limit`` are being served; the rest wait in the
kernel's listen backlog (which costs the mount nothing, and beyond which the kernel refuses
them). The handler must bound its own time (both handlers here give a client 5 s in all), so
a slow client holds one of the ``limit`` places for that long at most.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

log = logging.getLogger(__name__)

Handler = Callable[[trio.SocketStream], Awaitable[None]]

_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def serve_capped(handler: Handler, listeners: Sequence[trio.SocketListener], limit: int,
                       *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
    """Serve ``listeners`` until cancelled, at most ``limit`` connections at once in all."""
    places = trio.Semaphore(limit)

    async def serve_one(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        finally:
            places.release()

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await places.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    places.release()
                    if exc.errno not in _OUT_OF_DESCRIPTORS:
                        raise
                    log.warning("cannot accept a connection now (%s); retrying in 0.1 s",
                                exc.strerror)
                    await trio.sleep(0.1)
                    continue
                except BaseException:
                    places.release()
                    raise
                nursery.start_soon(serve_one, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started()
