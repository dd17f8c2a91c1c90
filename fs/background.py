"""Background tasks of a mount's component, in a nursery the mount owns.

Some work outlives the FUSE request that started it: the readers' GETs ahead of the reader
(reads.py), a directory listed again before its snapshot expires (lookups.py). Structured
concurrency: such tasks run in the component's nursery, which exists only while the mount's
own nursery runs :meth:`BackgroundTasks.run` (``await nursery.start(component.run)``);
unmounting cancels it, and every task in it. Outside that, ``_nursery`` is None and the
component does without (it waits instead, or refuses).
"""

from __future__ import annotations

import trio


class BackgroundTasks:
    """A component that starts tasks in ``self._nursery`` while :meth:`run` runs."""

    _nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own this component's background tasks until cancelled (the mount's nursery runs
        this); cancelling it ends them all."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
