"""A second local user for tests that check what another uid can and cannot do.

Tests run as root make the user themselves (no home, no login shell) and remove it only if
they made it, so a user left by a crashed run is reused, never duplicated.
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def second_user(name: str) -> Iterator[str]:
    """``name`` as a local user for the duration (made with useradd if missing)."""
    try:
        pwd.getpwnam(name)
        made = False
    except KeyError:
        subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        made = True
    try:
        yield name
    finally:
        if made:
            subprocess.run(["userdel", name], check=False, capture_output=True)
