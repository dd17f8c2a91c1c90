"""Unit tests for the retry policy: classification, backoff bounds and the retry loop.

The policy sees chute's errors only (the S3 client converts transport failures before it does,
see test_s3_client.py), and names each retryable one with a RetryReason. The loop is driven
on a ``MockClock`` with ``autojump_threshold=0``, so backoff sleeps and the default budget
cost no wall-clock time and elapsed time can be checked exactly.
"""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from chute.uploader import retry as retry_module
from chute.uploader.errors import MalformedResponse, Stalled, StoreError, StoreUnreachable
from chute.uploader.retry import CREDENTIAL_ERRORS, RetryPolicy, RetryReason, describe


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def store_error(status: int, code: str) -> StoreError:
    return StoreError("UploadPart", status, code, "test", request_id="req-1")


def refused() -> StoreUnreachable:
    """What the client makes of a refused connection (nothing was sent)."""
    return StoreUnreachable("UploadPart", "connection error (ConnectError: refused)")


def lost() -> StoreUnreachable:
    """The connection broke after the whole request went out."""
    return StoreUnreachable("UploadPart", "connection error (RemoteProtocolError: peer "
                            "closed)", request_sent=True)


def stalled(*, sent: bool = True) -> Stalled:
    return Stalled("UploadPart", "timeout (ReadTimeout): no progress for 30 s",
                   request_sent=sent)


class Reasons(list):
    """An ``on_retry`` that keeps the reasons it was told, in order (and the errors)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[Exception] = []

    def __call__(self, reason: RetryReason, error: Exception) -> None:
        assert isinstance(reason, RetryReason)
        self.append(reason)
        self.errors.append(error)


class Flaky:
    """An ``attempt_once`` that raises the queued errors in turn, then returns ``result``."""

    def __init__(self, errors: list[BaseException], result: object = "ok",
                 duration: float = 0.0) -> None:
        self.errors = list(errors)
        self.result = result
        self.duration = duration
        self.calls = 0
        self.started: list[float] = []

    async def __call__(self) -> object:
        self.calls += 1
        self.started.append(trio.current_time())
        if self.duration:
            await trio.sleep(self.duration)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Always:
    """An ``attempt_once`` that always raises a fresh copy of one error."""

    def __init__(self, make: type[BaseException] | object, duration: float = 0.0) -> None:
        self.make = make
        self.duration = duration
        self.calls = 0
        self.started: list[float] = []
        self.raised: list[BaseException] = []

    async def __call__(self) -> object:
        self.calls += 1
        self.started.append(trio.current_time())
        if self.duration:
            await trio.sleep(self.duration)
        exc = self.make()  # type: ignore[operator]
        self.raised.append(exc)
        raise exc


# -- classify -------------------------------------------------------------------------------

POLICY = RetryPolicy()

RETRYABLE = [
    pytest.param(store_error(500, "InternalError"), RetryReason.SERVER_ERROR,
                 id="500-InternalError"),
    pytest.param(store_error(500, "SomethingOdd"), RetryReason.SERVER_ERROR,
                 id="500-unknown-code"),
    pytest.param(store_error(503, "ServiceUnavailable"), RetryReason.SERVER_ERROR, id="503"),
    pytest.param(store_error(409, "OperationAborted"), RetryReason.SERVER_ERROR,
                 id="409-OperationAborted"),
    pytest.param(store_error(503, "SlowDown"), RetryReason.THROTTLED, id="503-SlowDown"),
    pytest.param(store_error(429, "TooManyRequests"), RetryReason.THROTTLED, id="429"),
    pytest.param(store_error(400, "SlowDown"), RetryReason.THROTTLED, id="SlowDown-any-status"),
    pytest.param(store_error(400, "RequestTimeout"), RetryReason.REQUEST_TIMEOUT,
                 id="400-RequestTimeout"),
    pytest.param(store_error(400, "ExpiredToken"), RetryReason.CREDENTIALS, id="ExpiredToken"),
    pytest.param(refused(), RetryReason.CONNECTION_FAILED, id="refused"),
    pytest.param(stalled(sent=False), RetryReason.SEND_STALLED, id="stalled-sending"),
    pytest.param(lost(), RetryReason.CONNECTION_LOST, id="lost"),
    pytest.param(stalled(), RetryReason.STALLED, id="stalled-waiting"),
]

FINAL = [
    pytest.param(store_error(400, "InvalidArgument"), id="400-InvalidArgument"),
    pytest.param(store_error(400, "EntityTooSmall"), id="400-EntityTooSmall"),
    pytest.param(store_error(403, "AccessDenied"), id="403-AccessDenied"),
    pytest.param(store_error(404, "NoSuchKey"), id="404-NoSuchKey"),
    pytest.param(store_error(404, "NoSuchBucket"), id="404-NoSuchBucket"),
    pytest.param(MalformedResponse("ListObjectsV2", 200, "not XML"), id="MalformedResponse"),
    pytest.param(ValueError("a bug, not the network"), id="ValueError"),
    pytest.param(OSError("an OSError is not the store"), id="OSError"),
]


@pytest.mark.parametrize(("exc", "reason"), RETRYABLE)
def test_classify_retryable(exc: BaseException, reason: RetryReason) -> None:
    assert POLICY.classify(exc) is reason


@pytest.mark.parametrize("exc", FINAL)
def test_classify_final(exc: BaseException) -> None:
    assert POLICY.classify(exc) is None


def test_only_a_complete_send_may_have_lost_its_answer() -> None:
    """The 2 x 2 of transport reasons: failed or stalled, before or after the whole request
    was out. Only after may the store have acted on a request whose answer never came."""
    lost_answers = {r for r in RetryReason if r.answer_may_be_lost}
    assert lost_answers == {RetryReason.CONNECTION_LOST, RetryReason.STALLED}
    assert POLICY.classify(lost()).answer_may_be_lost
    assert POLICY.classify(stalled()).answer_may_be_lost
    assert not POLICY.classify(refused()).answer_may_be_lost
    assert not POLICY.classify(stalled(sent=False)).answer_may_be_lost
    assert not POLICY.classify(store_error(503, "SlowDown")).answer_may_be_lost


def test_reasons_have_short_labels_and_the_log_names_the_failure() -> None:
    assert len({r.label for r in RetryReason}) == len(RetryReason)
    assert RetryReason.STALLED.label == "stalled"
    assert describe(store_error(503, "SlowDown")) == "HTTP 503 SlowDown"
    assert describe(store_error(400, "ExpiredToken")) == "credentials: ExpiredToken"
    assert describe(stalled()).startswith("timeout (ReadTimeout)")
    assert "ConnectError" in describe(refused())


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "ExpiredToken"), (403, "InvalidAccessKeyId"), (403, "SignatureDoesNotMatch"),
     (400, "TokenRefreshRequired"), (403, "RequestExpired"), (400, "InvalidToken")],
)
def test_classify_credential_errors(status: int, code: str) -> None:
    assert code in CREDENTIAL_ERRORS
    assert POLICY.classify(store_error(status, code)) is RetryReason.CREDENTIALS


def test_access_denied_is_not_a_credential_error() -> None:
    assert "AccessDenied" not in CREDENTIAL_ERRORS
    assert POLICY.classify(store_error(403, "AccessDenied")) is None


# -- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 10, 14, 15, 30])
def test_backoff_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=20.0)
    cap = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    random.seed(attempt)
    samples = [policy.backoff(attempt) for _ in range(500)]
    assert all(0 <= d <= cap for d in samples)
    # Full jitter: spread over the whole range, not pinned to the cap or to zero.
    assert min(samples) < cap * 0.1
    assert max(samples) > cap * 0.9


def test_backoff_upper_bound_grows_then_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """With uniform() pinned to its upper end, backoff is exactly the documented cap."""
    monkeypatch.setattr(retry_module.random, "uniform", lambda low, high: high)
    policy = RetryPolicy(base_delay=0.5, max_delay=10.0)
    assert policy.backoff(1) == 0.5
    assert policy.backoff(2) == 1.0
    assert policy.backoff(3) == 2.0
    assert policy.backoff(5) == 8.0
    assert policy.backoff(6) == 10.0
    assert policy.backoff(50) == 10.0
    monkeypatch.setattr(retry_module.random, "uniform", lambda low, high: low)
    assert policy.backoff(1) == 0
    assert policy.backoff(50) == 0


# -- run ------------------------------------------------------------------------------------


async def test_run_succeeds_after_transient_failures(clock: trio.testing.MockClock) -> None:
    errors = [store_error(503, "SlowDown"), refused(), lost(), stalled()]
    attempt = Flaky(errors, result={"etag": "abc"})
    reasons = Reasons()
    result = await RetryPolicy().run("UploadPart", attempt, on_retry=reasons)
    assert result == {"etag": "abc"}
    assert attempt.calls == 5
    assert reasons == [RetryReason.THROTTLED, RetryReason.CONNECTION_FAILED,
                       RetryReason.CONNECTION_LOST, RetryReason.STALLED]
    assert reasons.errors == errors
    # Each retry waited its backoff: never more than the cap for that attempt.
    policy = RetryPolicy()
    gaps = [b - a for a, b in itertools.pairwise(attempt.started)]
    for n, gap in enumerate(gaps, start=1):
        assert 0 <= gap <= min(policy.max_delay, policy.base_delay * 2 ** (n - 1)) + 1e-9


async def test_run_first_try_success_calls_nothing(clock: trio.testing.MockClock) -> None:
    attempt = Flaky([], result=42)
    reasons = Reasons()
    start = trio.current_time()
    assert await RetryPolicy().run("PutObject", attempt, on_retry=reasons) == 42
    assert attempt.calls == 1
    assert reasons == []
    assert trio.current_time() == start


@pytest.mark.parametrize("exc", FINAL)
async def test_run_reraises_final_error_at_once(
    clock: trio.testing.MockClock, exc: BaseException
) -> None:
    attempt = Flaky([exc])
    reasons = Reasons()
    start = trio.current_time()
    with pytest.raises(type(exc)) as info:
        await RetryPolicy().run("UploadPart", attempt, on_retry=reasons)
    assert info.value is exc  # re-raised unchanged
    assert attempt.calls == 1
    assert reasons == []
    assert trio.current_time() == start  # no backoff sleep


async def test_run_gives_up_after_max_attempts(clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(max_attempts=5, budget=10_000)
    attempt = Always(lambda: store_error(500, "InternalError"))
    reasons = Reasons()
    with pytest.raises(StoreError) as info:
        await policy.run("UploadPart", attempt, on_retry=reasons)
    assert attempt.calls == 5
    assert reasons == [RetryReason.SERVER_ERROR] * 4  # one per retry, none for giving up
    assert info.value is attempt.raised[-1]  # the last exception, unchanged


async def test_run_gives_up_within_time_budget(clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, max_attempts=1000, budget=60.0)
    attempt = Always(refused)
    reasons = Reasons()
    random.seed(1)
    start = trio.current_time()
    with pytest.raises(StoreUnreachable):
        await policy.run("UploadPart", attempt, on_retry=reasons)
    elapsed = trio.current_time() - start
    assert elapsed <= policy.budget
    # The budget, not the attempt cap, stopped it, and it used a fair share of the budget.
    assert attempt.calls < policy.max_attempts
    assert elapsed >= policy.budget - policy.max_delay
    assert len(reasons) == attempt.calls - 1
    assert all(t - start <= policy.budget for t in attempt.started)
    # The last attempt is made when the budget ends, whatever the jitter drew.
    assert attempt.started[-1] - start == pytest.approx(policy.budget)


async def test_run_budget_with_slow_attempts_starts_none_after_deadline(
    clock: trio.testing.MockClock,
) -> None:
    """Attempts that take time themselves: no new attempt starts after the budget."""
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0, max_attempts=1000, budget=30.0)
    attempt = Always(stalled, duration=3.0)
    random.seed(2)
    start = trio.current_time()
    with pytest.raises(Stalled):
        await policy.run("UploadPart", attempt)
    assert attempt.calls > 1
    assert all(t - start <= policy.budget for t in attempt.started)
    # The last attempt ended at most one attempt's duration past the budget.
    assert trio.current_time() - start <= policy.budget + attempt.duration


async def test_run_exact_budget_arithmetic(
    clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant 3 s backoff, 10 s budget: attempts at 0, 3, 6, 9, and a last one at 10 (the
    backoff cut short to the budget); then the budget is spent and it gives up."""
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt: 3.0)
    policy = RetryPolicy(max_attempts=100, budget=10.0)
    attempt = Always(lambda: store_error(503, "SlowDown"))
    start = trio.current_time()
    with pytest.raises(StoreError):
        await policy.run("UploadPart", attempt)
    assert [t - start for t in attempt.started] == pytest.approx([0.0, 3.0, 6.0, 9.0, 10.0])
    assert trio.current_time() - start == pytest.approx(10.0)


async def test_run_credential_error_refreshes_before_retrying(
    clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    errors = [store_error(400, "ExpiredToken")]

    async def attempt() -> str:
        events.append("attempt")
        if errors:
            raise errors.pop(0)
        return "done"

    async def refresh() -> None:
        events.append("refresh")

    reasons = Reasons()
    result = await RetryPolicy().run(
        "UploadPart", attempt, on_retry=reasons, on_credential_error=refresh
    )
    assert result == "done"
    assert events == ["attempt", "refresh", "attempt"]
    assert reasons == [RetryReason.CREDENTIALS]


async def test_run_stops_after_max_credential_attempts(clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(max_attempts=15, max_credential_attempts=4, budget=10_000)
    events: list[str] = []
    raised: list[StoreError] = []

    async def attempt() -> None:
        events.append("attempt")
        exc = store_error(403, "InvalidAccessKeyId")
        raised.append(exc)
        raise exc

    async def refresh() -> None:
        events.append("refresh")

    with pytest.raises(StoreError) as info:
        await policy.run("UploadPart", attempt, on_credential_error=refresh)
    assert info.value is raised[-1]
    assert events.count("attempt") == policy.max_credential_attempts
    assert events.count("refresh") == policy.max_credential_attempts - 1
    # Strictly alternating: every retry was preceded by a credential refresh.
    assert events == ["attempt", "refresh"] * 3 + ["attempt"]


async def test_run_transient_errors_do_not_spend_credential_attempts(
    clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy(max_attempts=15, max_credential_attempts=2, budget=10_000)
    refreshes: list[int] = []
    errors: list[BaseException] = [
        store_error(503, "SlowDown"), store_error(400, "ExpiredToken"),
        refused(), store_error(500, "InternalError"),
    ]
    attempt = Flaky(errors, result="ok")

    async def refresh() -> None:
        refreshes.append(attempt.calls)

    assert await policy.run("UploadPart", attempt, on_credential_error=refresh) == "ok"
    assert attempt.calls == 5
    assert refreshes == [2]  # only after the ExpiredToken (the 2nd attempt)


async def test_run_does_not_swallow_cancellation(clock: trio.testing.MockClock) -> None:
    attempt = Always(lambda: store_error(503, "SlowDown"))
    start = trio.current_time()
    with trio.move_on_after(5.0) as scope:
        await RetryPolicy(budget=1000).run("UploadPart", attempt)
    assert scope.cancelled_caught
    assert attempt.calls >= 1
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_run_slow_credential_refresh_does_not_overrun_budget(
    clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt: 1.0)
    policy = RetryPolicy(max_attempts=15, max_credential_attempts=4, budget=10.0)
    attempt = Always(lambda: store_error(400, "ExpiredToken"))

    async def slow_refresh() -> None:
        await trio.sleep(20.0)  # e.g. a credential_process or STS call that hangs a while

    start = trio.current_time()
    with pytest.raises(StoreError):
        await policy.run("UploadPart", attempt, on_credential_error=slow_refresh)
    assert all(t - start < policy.budget for t in attempt.started), [
        t - start for t in attempt.started
    ]


def test_metrics_label_an_error_answer_by_status_and_code() -> None:
    """The Prometheus ``reason`` label: bounded, and as before the enum for answers."""
    from chute.fs.metrics import reason_label

    assert reason_label(RetryReason.THROTTLED, store_error(503, "SlowDown")) == \
        "HTTP 503 SlowDown"
    assert reason_label(RetryReason.CREDENTIALS, store_error(400, "ExpiredToken")) == \
        "credentials"
    assert reason_label(RetryReason.STALLED, stalled()) == "stalled"
    assert reason_label(RetryReason.CONNECTION_FAILED, refused()) == "connection failed"
