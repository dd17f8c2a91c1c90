"""Where ``chute``'s log goes: a terminal, a file, syslog (``--daemon``), or a collector.

Opening ``--log-file`` can fail (a missing directory, no permission): that is an OSError the
CLI reports in one sentence before anything starts.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys


def setup_logging(verbose: int, quiet: bool, log_file: str | None = None, *,
                  background: bool = False) -> None:
    """Timestamps on a terminal or in a file; none when journald (or another collector)
    reads stderr and stamps each line itself. In the background (--daemon) without a log
    file the log goes to syslog, which journald also collects."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    elif background:
        try:
            handler = logging.handlers.SysLogHandler("/dev/log")
        except OSError:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter(
            "chute[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s" if sys.stderr.isatty()
            else "%(levelname)s %(name)s: %(message)s"
        ))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # botocore logs canonical requests and signatures at DEBUG: never let it, at any -v.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if verbose < 2:
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
