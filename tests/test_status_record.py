"""The status answer: typed records in the mount, the same JSON shape on the socket."""

from __future__ import annotations

import json

import trio

from chute.fs.control import MountStatus, to_json
from chute.uploader.config import UploaderConfig
from chute.uploader.file_upload import UploadState
from chute.uploader.retry import RetryPolicy, RetryReason
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20

FILE_KEYS = {"path", "key", "state", "bytes_received", "bytes_acknowledged", "parts_in_flight",
             "retries", "seconds", "throughput_bps", "error"}
RING_KEYS = {"slots", "slice_size", "free", "filling", "sealed", "uploading", "retained",
             "writers_waiting", "blocked_seconds"}
TOTALS_KEYS = {"bytes_written", "bytes_uploaded", "parts", "files_done", "failures", "retries",
               "files_opened", "files_abandoned"}


async def test_status_json_keeps_its_shape_and_reads_back(autojump_clock) -> None:
    store = MemoryS3()
    store.fail_next("UploadPart", status=503)
    client = memory_client(store, policy=RetryPolicy(budget=30))
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    client.on_retry = lambda operation, reason, error: uploader.count_retry(operation, reason)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        upload = uploader.open_file("dir/f", "/mnt/dir/f")
        data = bytes(16 * MiB)  # slice 2 is sealed once slice 3 is full
        for offset in range(0, len(data), MiB):
            await upload.write(offset, data[offset : offset + MiB])
        await upload.wait_acknowledged()
        status = MountStatus.of(uploader.statistics(), mountpoint="/mnt", pid=1,
                                remote="s3://b/", endpoint_url=None, metrics_url=None)
        answer = json.loads(json.dumps(to_json(status)))
        nursery.cancel_scope.cancel()
    await client.aclose()

    assert list(answer)[:5] == ["mountpoint", "pid", "remote", "endpoint_url", "metrics_url"]
    assert set(answer["ring"]) >= RING_KEYS
    (entry,) = answer["files"]
    assert set(entry) >= FILE_KEYS
    assert set(answer["totals"]) >= TOTALS_KEYS
    assert entry["state"] == "open" and entry["bytes_received"] == 16 * MiB
    assert entry["retries"] == 1 and entry["retries_by_reason"] == {"throttled": 1}
    assert answer["totals"]["retries"] == {"UploadPart": 1}
    assert answer["totals"]["bytes_written"] == 16 * MiB

    back = MountStatus.from_json(answer)
    assert back.files[0].state is UploadState.OPEN
    assert back.ring == status.ring
    assert back.files[0].bytes_acknowledged == status.files[0].bytes_acknowledged
    assert back.totals.files_opened == 1
    assert back.files[0].retries_by_reason == {RetryReason.THROTTLED: 1}
    assert back.totals == status.totals
