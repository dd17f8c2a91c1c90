"""weed's log file: one per run of the embedded store, the previous run's kept beside it.

weed writes its stdout and stderr into ``weed.log`` in the data directory (0600: it may name
paths and ports of the store). The log of the run before is renamed ``weed.log.1`` when a new
run starts, since it explains why that run ended. When weed fails to start, the last lines
of its log are what embedded_store.py's error message quotes (:meth:`WeedLog.tail`).

Invariant: at most one handle is open, and only between :meth:`WeedLog.open` and
:meth:`WeedLog.close` (which may be called any number of times).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

TAIL_LINES = 15


class WeedLog:
    """The log file at ``path``, opened for one run of weed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def open(self, command: list[str]) -> IO[bytes]:
        """Keep the previous run's log as ``.1``, start a new one headed by ``command``, and
        return it for weed's stdout (raises OSError if it cannot be made)."""
        self.close()
        if self.path.exists():
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._handle = os.fdopen(fd, "ab")
        self._handle.write(("# " + " ".join(command) + "\n").encode())
        self._handle.flush()
        return self._handle

    def tail(self) -> str:
        """The last ``TAIL_LINES`` non-blank lines, indented, for an error message."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        lines = [line for line in lines if line.strip()][-TAIL_LINES:]
        return "\n".join("  " + line for line in lines) or "  (empty)"

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
