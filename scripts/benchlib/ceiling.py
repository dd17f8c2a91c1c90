"""The ceiling: a direct multipart upload of the source file with chute's own S3 client (httpx
on trio), no FUSE, as many part buffers as chute's ring has slots. Run in a child process
(``bench.py _ceiling SPEC``) so its CPU and memory are its own; prints one JSON line."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from .common import KiB
from .sampling import proc_number


def ceiling_child(spec: dict[str, Any]) -> None:
    """Direct multipart upload with chute's S3Client; prints one JSON line of measurements."""
    import resource

    import trio

    from chute.uploader.checksums import body_headers, complete_part_fields, create_headers
    from chute.uploader.credentials import CredentialSource
    from chute.uploader.retry import RetryPolicy
    from chute.uploader.s3 import Bucket, S3Client

    part, conc = spec["part_size"], spec["concurrency"]
    key = spec["key"]
    size = os.path.getsize(spec["path"])

    def read_full(f: Any, buf: bytearray) -> int:
        view, total = memoryview(buf), 0
        while total < len(buf):
            n = f.readinto(view[total:])
            if not n:
                break
            total += n
        return total

    async def upload(f: Any) -> tuple[float, float]:
        """(seconds, CPU seconds) from CreateMultipartUpload to Complete."""
        bucket = Bucket(spec["bucket"], "", endpoint_url=spec["endpoint"],
                        region=spec["region"])
        client = S3Client(bucket, CredentialSource(), RetryPolicy(),
                          max_connections=max(16, conc))
        await client.credentials.get()  # resolve before the clock starts
        # As many part buffers as the ring has slots: the same memory chute may use.
        nbuf = max(conc + 1, spec["ring_size"] // part)
        free_send, free_recv = trio.open_memory_channel[bytearray](nbuf)
        for _ in range(nbuf):
            free_send.send_nowait(bytearray(part))
        started, cpu_started = trio.current_time(), cpu()
        upload_id = None
        try:
            if size <= part:
                buf = bytearray(size)
                read_full(f, buf)
                headers = body_headers("crc32c", buf)
                await client.put_object(key, memoryview(buf), headers)
                return trio.current_time() - started, cpu() - cpu_started
            upload_id = await client.create_multipart_upload(key, create_headers("crc32c"))
            work_send, work_recv = trio.open_memory_channel[tuple[int, bytearray, int]](0)
            parts: dict[int, tuple[str, dict[str, str]]] = {}

            async def reader() -> None:
                async with work_send:
                    number = 1
                    while True:
                        buf = await free_recv.receive()
                        n = await trio.to_thread.run_sync(read_full, f, buf)
                        if n == 0:
                            return
                        await work_send.send((number, buf, n))
                        number += 1
                        if n < part:
                            return

            async def worker(receive: trio.MemoryReceiveChannel[tuple[int, bytearray, int]],
                             ) -> None:
                async with receive:
                    async for number, buf, n in receive:
                        body = memoryview(buf)[:n]
                        headers = await trio.to_thread.run_sync(body_headers, "crc32c", body)
                        etag = await client.upload_part(key, upload_id, number, body, headers)
                        parts[number] = (etag, complete_part_fields(headers))
                        del body
                        free_send.send_nowait(buf)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                async with work_recv:
                    for _ in range(conc):
                        nursery.start_soon(worker, work_recv.clone())
            await client.complete_multipart_upload(
                key, upload_id, [(n, *parts[n]) for n in sorted(parts)])
            return trio.current_time() - started, cpu() - cpu_started
        except BaseException:
            if upload_id is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await client.abort_multipart_upload(key, upload_id)
            raise
        finally:
            await client.aclose()

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def written() -> int:
        return proc_number("/proc/self/io", "write_bytes")

    with open(spec["path"], "rb", buffering=0) as f:
        written_before = written()
        seconds, cpu_seconds = trio.run(upload, f)
        written_after = written()
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds,
                      "peak_rss": proc_number("/proc/self/status", "VmHWM") * KiB,
                      "write_bytes": written_after - written_before}))
