"""QuickLock (uploader/quick_lock.py): trio.Lock's exclusion and fairness, without a pass of
the scheduler when the lock is free (a file upload takes it at every write and close)."""

from __future__ import annotations

import trio
import trio.testing

from chute.uploader.quick_lock import QuickLock


class Steps(trio.abc.Instrument):
    """Counts the steps of one task: each is a return from a pass of the scheduler."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_free_lock_is_taken_without_yielding() -> None:
    lock, steps = QuickLock(), Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        for _ in range(10):
            async with lock:
                assert lock.locked()
        assert steps.steps == 0  # this task never went back to the scheduler
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert not lock.locked()


async def test_a_held_lock_makes_the_next_wait_and_hands_over_in_order() -> None:
    lock = QuickLock()
    order: list[str] = []

    async def take(name: str, hold: float) -> None:
        async with lock:
            order.append(f"{name} in")
            await trio.sleep(hold)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 0.05)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "b", 0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "c", 0)
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]


async def test_a_waiter_cancelled_leaves_the_lock_usable() -> None:
    lock = QuickLock()
    taken: list[bool] = []

    async def wait_for_it() -> None:
        with trio.move_on_after(0.01):
            async with lock:
                taken.append(True)

    async with lock, trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_it)
    assert taken == [] and not lock.locked()
    async with lock:
        assert lock.locked()


async def test_an_error_inside_releases_the_lock() -> None:
    lock = QuickLock()
    try:
        async with lock:
            raise ValueError
    except ValueError:
        pass
    assert not lock.locked()
