"""The mount's S3 request metrics (fs/metrics.py ``MountMetrics.observe_request``): each
attempt lands in its operation's latency histogram and in the counter of its operation and
status, the labelled children being looked up once and reused."""

from __future__ import annotations

from chute.fs.metrics import MountMetrics
from chute.uploader.config import UploaderConfig
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20


def test_each_attempt_is_counted_under_its_operation_and_status() -> None:
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=10 * MiB),
                        memory_client(MemoryS3()))
    metrics = MountMetrics(uploader)
    for seconds in (0.002, 0.004, 0.5):
        metrics.observe_request("PutObject", seconds, 200)
    metrics.observe_request("PutObject", 30.0, None)
    metrics.observe_request("HeadObject", 0.001, 404)
    value = metrics.registry.get_sample_value
    assert value("chute_s3_requests_total", {"operation": "PutObject", "status": "200"}) == 3
    assert value("chute_s3_requests_total", {"operation": "PutObject", "status": "error"}) == 1
    assert value("chute_s3_requests_total", {"operation": "HeadObject", "status": "404"}) == 1
    assert value("chute_s3_request_duration_seconds_count", {"operation": "PutObject"}) == 4
    assert abs(value("chute_s3_request_duration_seconds_sum", {"operation": "PutObject"})
               - 30.506) < 1e-9
    assert value("chute_s3_request_duration_seconds_count", {"operation": "HeadObject"}) == 1
