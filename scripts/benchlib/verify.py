"""What landed in the bucket, checked without trusting the contender: an object's size and
its multipart ETag recomputed from the source's part MD5s (or a full sha256 download), a
tree's objects by size and MD5, or (JuiceFS, the FUSE floor) the tree seen through the
mount; plus listing and emptying a prefix between runs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .common import BUCKET, MiB, fmt_size, log
from .data import Data


class BucketCheck:
    """The bench's own boto3 view of the bucket (``s3``); ``verify_full``: always download."""

    def __init__(self, s3: Any, verify_full: bool) -> None:
        self.s3 = s3
        self.verify_full = verify_full

    def keys_under(self, prefix: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            objects += page.get("Contents", [])
        return objects

    def delete_prefix(self, prefix: str) -> None:
        keys = [o["Key"] for o in self.keys_under(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            try:
                self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})
            except Exception:  # a store without DeleteObjects: one by one
                for item in batch:
                    self.s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    def sha256_object(self, key: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MiB):
            digest.update(chunk)
        return digest.hexdigest()

    def check_object(self, key: str, data: Data, part_size: int) -> tuple[bool, str]:
        """Is ``key`` exactly ``data``? (ok, how it was checked)."""
        try:
            head = self.s3.head_object(Bucket=BUCKET, Key=key)
        except Exception as exc:
            log(f"  {key}: no such object ({exc})")
            return False, "missing"
        if head["ContentLength"] != data.size:
            log(f"  {key}: size {head['ContentLength']}, expected {data.size}")
            return False, "size"
        etag = head["ETag"].strip('"')
        if not self.verify_full:
            if etag in data.etags(part_size):
                return True, "etag"
            log(f"  {key}: ETag {etag} is not the {fmt_size(part_size)}-part one; downloading")
        ok = self.sha256_object(key) == data.sha256
        return ok, "sha256"

    def warm_up(self) -> None:
        """Untimed writes first: SeaweedFS creates the bucket's volumes on the first write,
        which would otherwise be charged to whichever contender runs first."""
        block = os.urandom(16 * MiB)
        for i in range(4):
            self.s3.put_object(Bucket=BUCKET, Key=f"warm-up/{i}", Body=block)
        self.delete_prefix("warm-up/")

    def check_tree_in_bucket(self, prefix: str, expected: dict[str, tuple[int, str]],
                             ) -> tuple[bool, str]:
        found = {o["Key"][len(prefix):]: o for o in self.keys_under(prefix)
                 if not o["Key"].endswith("/") and "/.chute-uploads/" not in "/" + o["Key"]}
        ok = set(found) == set(expected)
        if not ok:
            log(f"  {prefix}: {len(found)} objects, expected {len(expected)}")
        by_etag = by_sha = 0
        for rel, (size, md5) in expected.items():
            obj = found.get(rel)
            if obj is None or obj["Size"] != size:
                ok = False
                continue
            etag = obj["ETag"].strip('"')
            if not self.verify_full and "-" not in etag:
                ok = ok and etag == md5
                by_etag += 1
            else:
                body = self.s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read()
                ok = ok and hashlib.md5(body).hexdigest() == md5
                by_sha += 1
        how = "etag" if by_sha == 0 else "md5 download" if by_etag == 0 else "etag/md5 download"
        return ok, how


def check_tree_in_mount(root: Path, expected: dict[str, tuple[int, str]], full: bool,
                        ) -> tuple[bool, str]:
    found = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    ok = set(found) == set(expected)
    for rel, (size, md5) in expected.items():
        path = found.get(rel)
        if path is None or path.stat().st_size != size:
            ok = False
        elif full:
            ok = ok and hashlib.md5(path.read_bytes()).hexdigest() == md5
    return ok, "md5 via mount" if full else "sizes via mount"
