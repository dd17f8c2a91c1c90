"""Watching a mount from outside as a user would: the ``chute`` command line, ``chute status
--json``, the Prometheus endpoint, and polling until something becomes true."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def chute(*args: object, env: dict[str, str] | None = None, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    """Run ``chute ARGS`` in a subprocess, capturing its text output."""
    return subprocess.run([sys.executable, "-m", "chute.fs.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def status(path: Path) -> dict:
    """``chute status PATH --json``, parsed."""
    result = chute("status", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Poll ``predicate`` every 0.1 s until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
