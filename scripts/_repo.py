"""Puts the repository root on ``sys.path`` so a script run as ``python scripts/NAME.py`` can
import ``tests.support`` (the shared test helpers: the fault proxy, mounts, store checks).

Import it before anything from ``tests``: ``import _repo  # noqa: F401``. The rule: scripts
may use chute and ``tests/support``, never a test module (``tests/test_*.py``) or conftest;
whatever a script and a test both need moves to ``tests/support``. This module is the one
place a script touches ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
