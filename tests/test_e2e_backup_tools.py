"""Backup tools that read their own repository back, through a mount with ``--allow-read``
(issue 15): restic, duplicity, borg and rdiff-backup, the Debian packages
``scripts/setup.sh --test`` installs.

Each tool runs as a user would run it against a local directory that happens to be a chute
mount, and its result is checked by the tool itself (``restic check --read-data``) and by
restoring from the mount and comparing the restored tree with the source (``diff -r``).
A test is skipped, saying so, only if its tool is not installed. borg works since directories
can be renamed (its lock), rdiff-backup since files can be appended to (its backup.log).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.files import random_file
from tests.support.mounts import requires_fuse
from tests.support.store import object_keys

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
READS = ("--allow-read", "--slice-size", "5MiB", "--ring-size", "40MiB")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh --test installs it)")
    return path


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(args)} exited {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _source_tree(root: Path) -> Path:
    """A small tree with the shapes backups meet: empty and tiny files, one over a slice,
    nested directories, an empty directory."""
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "empty").write_bytes(b"")
    (root / "docs" / "one").write_bytes(b"1")
    (root / "docs" / "notes.txt").write_text("some notes\n" * 300)
    random_file(root / "docs" / "deep" / "big.bin", 7 * MiB + 3, seed=11)
    random_file(root / "photo.jpg", 300_000, seed=12)
    return root


def _change(root: Path) -> None:
    """What changes between two backups: one file edited, one added, one removed."""
    (root / "docs" / "notes.txt").write_text("other notes\n" * 500)
    random_file(root / "docs" / "added.bin", 2 * MiB + 1, seed=13)
    (root / "photo.jpg").unlink()


def _same_tree(left: Path, right: Path) -> None:
    result = subprocess.run(["diff", "-r", str(left), str(right)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_restic_init_two_backups_check_read_data_restore(mount_factory, tmp_path):
    restic = _tool("restic")
    mount = mount_factory(*READS)
    source = _source_tree(tmp_path / "src")
    repo = mount.path / "restic-repo"
    env = {**os.environ, "RESTIC_PASSWORD": "chute-test", "RESTIC_REPOSITORY": str(repo),
           "RESTIC_CACHE_DIR": str(tmp_path / "restic-cache"), "HOME": str(tmp_path)}
    _run([restic, "init"], env)
    _run([restic, "backup", "--no-cache", str(source)], env)
    _change(source)
    _run([restic, "backup", "--no-cache", str(source)], env)
    snapshots = _run([restic, "snapshots", "--no-cache", "--json"], env).stdout
    assert snapshots.count('"id"') == 2, snapshots
    _run([restic, "check", "--no-cache", "--read-data"], env)
    target = tmp_path / "restored"
    _run([restic, "restore", "--no-cache", "latest", "--target", str(target)], env)
    _same_tree(source, target / source.relative_to("/"))
    assert "returning E" not in mount.log().replace("returning ENOENT", ""), mount.log()


def test_duplicity_full_incremental_restore(mount_factory, tmp_path):
    duplicity = _tool("duplicity")
    mount = mount_factory(*READS)
    source = _source_tree(tmp_path / "src")
    url = f"file://{mount.path / 'duplicity'}"
    env = {**os.environ, "HOME": str(tmp_path), "PASSPHRASE": ""}

    def run(*args: str, archive: str) -> None:
        # a fresh --archive-dir for each step: duplicity then reads the manifests and
        # signatures it needs back from the target (the mount), not from a local cache
        _run([duplicity, *args, "--no-encryption", "--archive-dir",
              str(tmp_path / archive), "--name", "chute"], env)

    run("full", str(source), url, archive="cache-full")
    # duplicity sees a file as changed only if its mtime differs in whole seconds (not its
    # size): an edit within the second the file was made would be missed by the incremental
    time.sleep(1.1)
    _change(source)
    run("incremental", str(source), url, archive="cache-incremental")
    target = tmp_path / "restored"
    run("restore", url, str(target), archive="cache-restore")
    _same_tree(source, target)
    run("verify", url, str(source), archive="cache-verify")


def test_borg_init_two_creates_check(mount_factory, tmp_path, s3):
    """borg takes its repository lock by renaming the non-empty directory
    lock.exclusive.*.tmp onto lock.exclusive, and relies on that rename failing
    (ENOTEMPTY) while another holds the lock: a directory rename (fs/dir_moves.py)."""
    borg = _tool("borg")
    mount = mount_factory(*READS)
    source = _source_tree(tmp_path / "src")
    repo = mount.path / "borg-repo"
    env = {**os.environ, "HOME": str(tmp_path), "BORG_PASSPHRASE": "",
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": str(tmp_path / "borg-base")}
    _run([borg, "init", "--encryption", "none", str(repo)], env, timeout=120)
    _run([borg, "create", f"{repo}::one", str(source)], env)
    _change(source)
    _run([borg, "create", f"{repo}::two", str(source)], env)
    _run([borg, "check", "--verify-data", str(repo)], env)
    assert _run([borg, "list", "--short", str(repo)], env).stdout.split() == ["one", "two"]
    keys = object_keys(s3, mount.prefix)
    assert not [k for k in keys if "lock.exclusive" in k or ".chute-moves/" in k], keys


def test_rdiff_backup_two_runs(mount_factory, tmp_path):
    """rdiff-backup appends to rdiff-backup-data/backup.log (O_APPEND) on every run."""
    rdiff = _tool("rdiff-backup")
    mount = mount_factory(*READS)
    source = _source_tree(tmp_path / "src")
    target = mount.path / "rdiff"
    env = {**os.environ, "HOME": str(tmp_path)}
    _run([rdiff, "backup", str(source), str(target)], env, timeout=120)
    first_log = (target / "rdiff-backup-data" / "backup.log").read_bytes()
    _change(source)
    # rdiff-backup names increments by the second and refuses a backup "not in the past"
    time.sleep(1.1)
    _run([rdiff, "backup", str(source), str(target)], env)
    second_log = (target / "rdiff-backup-data" / "backup.log").read_bytes()
    assert second_log.startswith(first_log) and len(second_log) > len(first_log)
    restored = tmp_path / "restored"
    _run([rdiff, "restore", "--at", "now", str(target), str(restored)], env)
    _same_tree(source, restored)


def test_rsnapshot_link_dest_three_runs(mount_factory, tmp_path):
    """rsnapshot rotates alpha.0 -> alpha.1 -> alpha.2 by renaming directories, and with
    ``link_dest 1`` hands rsync the previous snapshot as --link-dest: its hard links fail on
    an object store, so rsync copies the unchanged files instead (which reads them: reads on).
    Each snapshot is then a full, independent copy."""
    rsnapshot = _tool("rsnapshot")
    mount = mount_factory(*READS)
    source = _source_tree(tmp_path / "src")
    root = mount.path / "snaps"
    config = tmp_path / "rsnapshot.conf"
    lines = [
        ("config_version", "1.2"), ("snapshot_root", f"{root}/"),
        ("cmd_cp", shutil.which("cp")), ("cmd_rm", shutil.which("rm")),
        ("cmd_rsync", shutil.which("rsync")), ("link_dest", "1"),
        ("lockfile", str(tmp_path / "rsnapshot.pid")), ("retain", "alpha\t3"),
        ("backup", f"{source}/\tlocalhost/"),
    ]
    config.write_text("".join(f"{key}\t{value}\n" for key, value in lines))
    snapshots = []
    for run in range(3):
        if run == 1:
            _change(source)
        elif run == 2:
            (source / "docs" / "third").write_text("3\n")
        _run([rsnapshot, "-c", str(config), "alpha"])
        snapshots.append(tmp_path / f"copy{run}")
        shutil.copytree(source, snapshots[-1])
    assert sorted(p.name for p in root.iterdir()) == ["alpha.0", "alpha.1", "alpha.2"]
    for age, expected in enumerate(reversed(snapshots)):
        # rsnapshot's rsync runs with --relative: the source's whole path is kept
        _same_tree(expected, root / f"alpha.{age}" / "localhost" / source.relative_to("/"))
