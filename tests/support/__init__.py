"""Shared test helpers (a package, not tests): what test modules, conftest's fixtures and
scripts/ import. Test modules never import each other or conftest; scripts never import test
modules; both may import from here."""
