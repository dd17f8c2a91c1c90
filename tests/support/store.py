"""The store as a test sees it: the bucket's name, a boto3 client that bypasses chute, and
what is in the bucket (keys, digests, upload markers, pending multipart uploads).

Everything here reads the store directly, never through a mount or a fault proxy: it is how a
test learns what really landed.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import boto3
from botocore.config import Config

BUCKET = "chute-test"
"""The bucket every test's store serves (tests keep apart by key prefix)."""


def direct_client(server: Any) -> Any:
    """boto3 straight to a store (never through a proxy): what really is in the bucket."""
    return boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name=server.region,
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


def store_env(server: Any) -> dict[str, str]:
    """The environment a mount gets: this process's, with the store's keys and no profile."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_PROFILE"}
    env |= {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_REGION": server.region}
    return env


def sha256_object(s3: Any, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def object_keys(s3: Any, prefix: str, *, markers: bool = False) -> list[str]:
    """Keys under ``prefix``; chute's upload markers (.chute-uploads/) only if asked for."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return [k for k in keys if markers or "/.chute-uploads/" not in f"/{k}"]


def upload_markers(s3: Any, prefix: str) -> list[str]:
    return [k for k in object_keys(s3, prefix, markers=True) if "/.chute-uploads/" in f"/{k}"]


def pending_uploads(s3: Any, prefix: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
