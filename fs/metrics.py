"""Prometheus metrics of one mount, served over HTTP from the mount's own trio loop.

The statistics records ``chute status`` shows (``Uploader.statistics()``) are read at
scrape time by a collector, so there is one set of numbers and status and metrics can never
disagree. Only what status does not keep is recorded here as it happens: request latency per
S3 operation (``S3Client.on_request``) and retries by operation and reason
(``S3Client.on_retry``, labelled by :func:`reason_label`).

The HTTP side is a few lines on ``trio.serve_listeners``, not prometheus_client's own server:
that one runs in a thread, and the mount's event loop is the only place its state may be read
without locks. Every scrape answers from memory in microseconds, so serving it on the loop
costs nothing the FUSE handlers would notice.

Exposure: metrics name files' keys nowhere, but they do show activity, so the listener is on
loopback unless the user asked for another address on the command line (see
:func:`check_exposure`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from chute.uploader.errors import ConfigError, StoreError
from chute.uploader.retry import RetryReason

from .listeners import serve_capped

if TYPE_CHECKING:
    from chute.uploader.uploader import Uploader

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
"""Seconds; up to minutes because an UploadPart of a large slice on a slow link takes that."""
MAX_REQUEST_HEAD = 8192
MAX_CONNECTIONS = 8
"""Scrapes served at once; more wait in the kernel's backlog, not in the mount's descriptors."""
REQUEST_SECONDS = 5.0
"""A scrape's whole time, reading the request and sending the answer."""


def reason_label(reason: RetryReason, error: BaseException | None = None) -> str:
    """A retry's ``reason`` label: for an error answer its status and code (``HTTP 503
    SlowDown``, bounded: S3 has a fixed set), else the reason's name (``stalled``,
    ``connection lost``, ``credentials`` ...). Never exception text (addresses, messages), or
    every new message would make a new time series."""
    if isinstance(error, StoreError) and reason is not RetryReason.CREDENTIALS:
        return f"HTTP {error.status} {error.code}"
    return reason.label


class _UploaderCollector(Collector):
    """Reads the uploader's own counters and the ring at scrape time."""

    def __init__(self, uploader: Uploader) -> None:
        self._uploader = uploader

    def collect(self) -> Iterator[Metric]:
        statistics = self._uploader.statistics()
        totals, ring = statistics.totals, statistics.ring
        for name, doc, value in (
            ("chute_bytes_written", "Bytes received from writers", totals.bytes_written),
            ("chute_bytes_uploaded", "Bytes acknowledged by the store", totals.bytes_uploaded),
            ("chute_parts_uploaded", "Multipart parts acknowledged by the store", totals.parts),
            ("chute_bytes_copied", "Bytes copied server-side from objects changed in place",
             totals.bytes_copied),
            ("chute_bytes_fetched", "Bytes uploads read back from the store (old bytes of "
             "objects changed in place, objects read back to hash them)", totals.bytes_fetched),
            ("chute_files_opened", "Files opened for writing", totals.files_opened),
            ("chute_files_uploaded", "Files whose object is complete", totals.files_done),
            ("chute_upload_failures", "Uploads that failed (the writer got an error)",
             totals.failures),
            ("chute_files_abandoned", "Files dropped because the mount stopped while open",
             totals.files_abandoned),
            ("chute_files_writer_died", "Files dropped because their writer died with them "
             "open (killed, or exited non-zero)", totals.files_writer_died),
            ("chute_writer_blocked_seconds", "Seconds writers waited for a free ring slot",
             ring.blocked_seconds),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        slots = GaugeMetricFamily("chute_ring_slots", "Ring slots by state", labels=["state"])
        for state, count in ring.by_state().items():
            slots.add_metric([state.value], count)
        yield slots
        yield GaugeMetricFamily("chute_ring_slot_bytes", "Bytes per ring slot (= per part)",
                                value=ring.slice_size)
        yield GaugeMetricFamily("chute_writers_waiting", "Writers waiting for a ring slot now",
                                value=ring.writers_waiting)
        yield GaugeMetricFamily("chute_files_open", "Files being written now",
                                value=len(statistics.files))


class MountMetrics:
    """The registry of one mount; feed it from the S3 client's hooks."""

    def __init__(self, uploader: Uploader) -> None:
        # one ``*_created`` sample per label set doubles the scrape for nothing: the mount's
        # start time is the same for all of them (a process-wide switch, and this is the
        # process's only registry)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.registry.register(_UploaderCollector(uploader))
        self.latency = Histogram(
            "chute_s3_request_duration_seconds",
            "Duration of one S3 request attempt (body included), by operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.requests = Counter(
            "chute_s3_requests", "S3 request attempts by operation and HTTP status "
            "('error' when no answer arrived)", ["operation", "status"], registry=self.registry,
        )
        self._children: dict[tuple[str, int | None], tuple[Any, Any]] = {}
        """(operation, status) -> the latency histogram's and the request counter's children."""
        self.retries = Counter(
            "chute_retries", "Retried S3 requests by operation and reason",
            ["operation", "reason"], registry=self.registry,
        )

    def observe_request(self, operation: str, seconds: float, status: int | None) -> None:
        """Every S3 request attempt: its labelled children are looked up once per operation
        and status (``labels()`` takes a lock and builds a key each time: a third of this
        call's CPU, on the path of every small file's PutObject)."""
        children = self._children.get((operation, status))
        if children is None:
            children = self._children[(operation, status)] = (
                self.latency.labels(operation),
                self.requests.labels(operation, str(status) if status is not None else "error"))
        children[0].observe(seconds)
        children[1].inc()

    def observe_retry(self, operation: str, reason: RetryReason,
                      error: Exception | None = None) -> None:
        self.retries.labels(operation, reason_label(reason, error)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464``, ``[::1]:9464``, ``localhost:9464`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--metrics-addr must look like HOST:PORT (127.0.0.1:9464), "
                          f"got {text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, explicit: bool) -> None:
    """Loopback always; another address only when typed as ``--metrics-addr`` (and warned
    about), never silently from a config file someone else may have written."""
    if is_loopback(host):
        return
    if not explicit:
        raise ConfigError(
            f"metrics address {host} is not a loopback address; chute serves metrics on the "
            "network only when --metrics-addr is given on the command line"
        )
    log.warning("serving metrics on %s, which is not loopback: anyone who can reach it sees "
                "this mount's activity", host)


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind before mounting, so a taken port is a clean error and nothing gets mounted."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                          ) from None


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return listeners[0].socket.getsockname()[1]


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        head += chunk
        if len(head) > MAX_REQUEST_HEAD:
            return None
    return head


def _response(status: str, content_type: str, body: bytes, *, send_body: bool) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + (body if send_body else b"")


async def serve(
    metrics: MountMetrics, listeners: list[trio.SocketListener], *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` (one request per connection) until cancelled: at most
    :data:`MAX_CONNECTIONS` at once, each given :data:`REQUEST_SECONDS` in all (read and
    answer), so a flood of connections from any local user costs the mount a few
    descriptors, never the ones its FUSE work needs (see chute.fs.listeners)."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_SECONDS):
                    head = await _read_head(stream)
                    if head is None:
                        return
                    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
                    path = rest.split(" ", 1)[0].split("?", 1)[0]
                    send_body = method != "HEAD"
                    if method not in ("GET", "HEAD"):
                        answer = _response("405 Method Not Allowed", "text/plain", b"GET only\n",
                                           send_body=True)
                    elif path == "/metrics":
                        answer = _response("200 OK", CONTENT_TYPE_LATEST, metrics.exposition(),
                                           send_body=send_body)
                    elif path == "/":
                        answer = _response("200 OK", "text/plain", b"chute: see /metrics\n",
                                           send_body=send_body)
                    else:
                        answer = _response("404 Not Found", "text/plain", b"not found\n",
                                           send_body=send_body)
                    await stream.send_all(answer)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    await serve_capped(handle, listeners, MAX_CONNECTIONS, task_status=task_status)
