"""One connection's timed socket work (uploader/s3_connection.py): ``failures`` is a stall
timer and an error translator in one; each outcome must be what ``trio.fail_after`` under a
``contextmanager`` gave (s3_wire.transport_failure reads these types), and a cancellation
from outside must pass through untouched."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio

from chute.uploader.s3_connection import failures


async def test_a_stall_is_the_timeout_error(autojump_clock) -> None:
    with pytest.raises(httpx.ReadTimeout, match="no progress for 7 s"), failures(
            httpx.ReadError, httpx.ReadTimeout, 7):
        await trio.sleep(8)


async def test_progress_within_the_time_passes(autojump_clock) -> None:
    with failures(httpx.WriteError, httpx.WriteTimeout, 7):
        await trio.sleep(6)


@pytest.mark.parametrize("error", [ConnectionResetError(104, "reset"), trio.BrokenResourceError(),
                                   trio.ClosedResourceError(), ssl.SSLError("bad record")])
async def test_socket_failures_are_the_error_type(error: BaseException) -> None:
    with pytest.raises(httpx.WriteError) as caught, failures(httpx.WriteError,
                                                             httpx.WriteTimeout, 7):
        raise error
    assert caught.value.__cause__ is error
    assert type(error).__name__ in str(caught.value)


async def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), failures(httpx.ReadError, httpx.ReadTimeout, 7):
        raise KeyError("not a socket's")


async def test_a_cancellation_from_outside_is_not_a_timeout(autojump_clock) -> None:
    with trio.move_on_after(3) as outer:
        with failures(httpx.ReadError, httpx.ReadTimeout, 7):
            await trio.sleep(10)
    assert outer.cancelled_caught


async def test_the_deadline_counts_from_the_operation_not_the_timer(autojump_clock) -> None:
    """Made and entered at once, as the connection uses it: seconds from the operation."""
    with pytest.raises(httpx.ReadTimeout), failures(httpx.ReadError, httpx.ReadTimeout, 2):
        await trio.sleep(2.5)
