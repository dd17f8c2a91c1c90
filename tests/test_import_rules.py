"""The import rules of tests/ and scripts/, checked on the source (no imports are run).

- A test module never imports another test module or conftest: shared helpers live in
  ``tests/support/`` and fixtures in ``tests/conftest.py``.
- ``tests/support/`` never imports a test module or conftest.
- Scripts may import chute and ``tests.support``, never a test module or conftest.
- chute (``fs/``, ``uploader/``) never imports tests or scripts.
- ``/proc/self/mountinfo`` is read only by ``fs/mountinfo.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_files(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in (ROOT / part).rglob("*.py")
                  if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, as an absolute dotted name where it can be resolved
    (relative imports are resolved against the file's package under ROOT)."""
    tree = ast.parse(path.read_text(), str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [f"{module}.{alias.name}" for alias in node.names]
                yield from [module, *names]
            elif node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and len(parts) > 1 and (
        parts[1].startswith("test_") or parts[1] == "conftest")


@pytest.mark.parametrize("path", python_files("tests"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tests_import_no_test_module_or_conftest(path: Path) -> None:
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    bad = sorted({m for m in imported_modules(path) if is_test_module(m) and m != own})
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: move shared helpers to tests/support/"


@pytest.mark.parametrize("path", python_files("scripts"), ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_import_no_test_module(path: Path) -> None:
    bad = sorted({m for m in imported_modules(path) if is_test_module(m)})
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: scripts may use tests.support only"


@pytest.mark.parametrize("path", python_files("fs", "uploader"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_chute_imports_neither_tests_nor_scripts(path: Path) -> None:
    bad = sorted({m for m in imported_modules(path)
                  if m.split(".")[0] in ("tests", "scripts", "benchlib", "_repo")})
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def code_strings(path: Path) -> Iterator[str]:
    """String constants of ``path`` that are not docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            yield node.value


def test_mountinfo_is_read_only_through_chute_fs_mountinfo() -> None:
    readers = [str(p.relative_to(ROOT)) for p in python_files("fs", "uploader", "scripts", "tests")
               if p != ROOT / "fs" / "mountinfo.py" and p != Path(__file__).resolve()
               and any("/proc/self/mountinfo" in s for s in code_strings(p))]
    assert not readers, f"read /proc/self/mountinfo through chute.fs.mountinfo: {readers}"
