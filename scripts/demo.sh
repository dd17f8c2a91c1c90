#!/usr/bin/env bash
# chute's main job on the embedded default store: mount, copy a 256 MiB file in, see the object.
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=${MNT:-/tmp/chute-demo}
SRC=$(mktemp /tmp/chute-demo-src.XXXXXX)
mkdir -p "$MNT"

head -c 256M /dev/urandom > "$SRC"
.venv/bin/chute mount "$MNT" &          # embedded SeaweedFS on 127.0.0.1, data in ~/.local/share/chute
MOUNT_PID=$!
trap 'fusermount3 -u "$MNT" 2>/dev/null || true; wait $MOUNT_PID; rm -f "$SRC"' EXIT
for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.2; done

time cp "$SRC" "$MNT/demo.bin"         # returns once the object is complete in the bucket
echo "--- the bucket, listed through the mount:"
ls -l "$MNT"
echo "--- stored xxh3-128 vs. the source's:"
getfattr --only-values -n user.chute.xxh3_128 "$MNT/demo.bin" 2>/dev/null \
  || .venv/bin/python -c "import os,sys; print(os.getxattr(sys.argv[1], 'user.chute.xxh3_128').decode())" "$MNT/demo.bin"
echo
xxh128sum "$SRC" 2>/dev/null | cut -d" " -f1
