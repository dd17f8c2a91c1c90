"""The bench behind ``scripts/bench.py`` (run that; this package is its body), one concern per
module, each importing only those listed before it:

- ``common``: units, the bucket's name, the progress log;
- ``sampling``: a process tree's CPU, peak RSS and disk writes from /proc;
- ``data``: the seeded incompressible bytes, their digests, the small-file tree, dd;
- ``results``: ``Run`` and ``Row``, ratios to peers and the floors' bound;
- ``mounts``: ``MountProcess``, a FUSE daemon mounted and unmounted for sure;
- ``contenders``: each contender's mount (chute, baseline, rclone, JuiceFS, nullfs floor);
- ``verify``: what landed in the bucket (ETag from part MD5s, sha256, tree by MD5);
- ``ceiling``: the direct multipart upload, run in a child process;
- ``report``: environment, tables, JSON;
- ``runs``: ``Bench``: each run (mount, copy, sample, verify, clean up) and each mode;
- ``link``: a network link modelled in a relay (delay each way, shared rate cap, TCP windows
  with slow start) that counts the S3 requests crossing it;
- ``writers``: ``--writers`` (parallel writers), and ``mounted_run``, the timed run of
  commands started together in a fresh mount;
- ``link_reads``: ``--link``'s sequential reads (direct, chute and rclone mount) at a point;
- ``links``: ``--link``: every contender through the link at each point;
- ``cli``: options, disk check, the run with its cleanup.

Mounts are found through ``chute.fs.mountinfo`` (the one reader of /proc/self/mountinfo).
"""
