#!/usr/bin/env bash
# Install what chute needs on a Debian machine: FUSE 3 and a compiler for pyfuse3 (apt),
# then chute itself into ./.venv (with the test stack when given --test).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rsync xxhash unzip tmux curl openssl)
# --test: the backup tools the end-to-end tests drive through a mount (tests/test_e2e_backup_tools.py)
[ "${1:-}" = "--test" ] && packages+=(restic borgbackup duplicity rdiff-backup rsnapshot qemu-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# python3-dev/venv are only needed for the system python; a pyenv or other python brings its own
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "chute installed: $(.venv/bin/chute --help >/dev/null && echo .venv/bin/chute)"
