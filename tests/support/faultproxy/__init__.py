"""A fault-injecting HTTP/1.1 reverse proxy for S3 reliability tests.

``FaultProxy`` listens on 127.0.0.1, forwards every request to one upstream S3 endpoint on
127.0.0.1 (the embedded SeaweedFS) and, when a *scenario* says so, misbehaves on chosen
requests: an S3 error instead of forwarding, a connection reset before or after the upstream
acted, a stall in the middle of the request or the response, a throttled transfer, a window
of expired-token answers, or an outage during which connections are refused.

It runs ``trio.run`` in a background thread, so synchronous tests use it as::

    with FaultProxy(store.endpoint_url) as proxy:
        proxy.set_scenario([Status(503, "SlowDown", kind=Kind.UPLOAD_PART, times=2)])
        ... point the client under test at proxy.url ...
        assert proxy.stats[Kind.UPLOAD_PART].injected == 2

Forwarding is byte-exact: the request head (request line, every header including ``Host``, in
their original order and spelling) and the body are relayed unchanged, so SigV4-signed requests
keep their signature. A client signs the host it connects to (the proxy's
``127.0.0.1:PORT``) and SeaweedFS checks the signature against the ``Host`` header it
receives, which is that same value. Responses are relayed unchanged too. Bodies framed by
Content-Length or chunked transfer coding are both relayed (responses without either are
relayed until the upstream closes); keep-alive connections are kept on both sides, one
upstream connection per client connection. ``Expect: 100-continue`` works: the upstream's
``100 Continue`` is relayed, and the proxy sends its own before draining the body of a request
it answers itself.

Faults are frozen dataclasses (data, not code). Every fault selects requests by ``kind``
(a ``Kind``, its string value, a collection of them, or ``None`` for every request) and is
bounded: ``times`` matching requests (after skipping the first ``after`` ones), only within
``start``/``duration`` seconds after the scenario was set; a fault with neither ``times`` nor
``duration`` is refused, and ``ExpiredTokenFor``/``Outage`` last ``seconds``. Faults are tried
in order and the first one that takes a request applies; each fault counts (for ``after``)
only the matching requests that no earlier fault took.

The proxy never connects anywhere but 127.0.0.1 and listens only there.

One module per concern, each importing only those before it: ``kinds`` (which S3 operation
a request is), ``answers`` (canned S3 error answers), ``faults`` (what to do, as data),
``state`` (which fault takes a request, and the counters), ``wire`` (HTTP/1.1 framing,
buffered reads, the throttling/stalling shaper), ``forward`` (relaying one request and its
answer), ``proxy`` (the server thread, its connections and outages). Import from the package.
"""

from .answers import DEFAULT_CODES, MESSAGES, Answer
from .faults import (
    MAX_SECONDS,
    ExpiredTokenFor,
    Fault,
    Outage,
    ResetAfter,
    ResetBefore,
    Scenario,
    StallRequest,
    StallResponse,
    Status,
    Then,
    Throttle,
    access_denied,
    expired_token,
    internal_error,
    no_such_upload,
    request_timeout,
    service_unavailable,
    slow_down,
    status_fault,
    too_many_requests,
)
from .kinds import Kind, KindSpec, classify
from .proxy import FaultProxy
from .state import Counts, Injection, Seen
from .wire import ProtocolError

__all__ = [
    "DEFAULT_CODES", "MAX_SECONDS", "MESSAGES", "Answer", "Counts", "ExpiredTokenFor", "Fault",
    "FaultProxy", "Injection", "Kind", "KindSpec", "Outage", "ProtocolError", "ResetAfter",
    "ResetBefore", "Scenario", "Seen", "StallRequest", "StallResponse", "Status", "Then",
    "Throttle",
    "access_denied", "classify", "expired_token", "internal_error", "no_such_upload",
    "request_timeout", "service_unavailable", "slow_down", "status_fault", "too_many_requests",
]
