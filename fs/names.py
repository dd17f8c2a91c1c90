"""What can be a file name of a chute mount: one rule for the names listings show and the
names created.

- **One rule** (:func:`problem`), applied both ways: a key whose last component breaks it is
  not shown by a listing (lookups.py skips it with one log line per listing, never a phantom
  entry that then gives ENOENT), and a new name that breaks it is refused (create, mkdir,
  rename target: EINVAL and a log line; a lookup, unlink or rmdir of such a name is an
  ordinary ENOENT: it cannot be listed either). Broken: empty, ``.``/``..``, a ``/``, a
  control character (0x00-0x1f, 0x7f), over NAME_MAX bytes, and a backslash on a store that
  does not keep it byte-for-byte (SeaweedFS turns ``\\`` into ``/``, so ``a\\b`` would land
  at ``a/b``, even in a directory the writer may not write). Whether the store keeps ``\\``
  is probed once at mount (fs/store_probe.py) and entered as
  :attr:`Namespace.keeps_backslash`; until then, and if the probe could not run, it is
  refused (the safe answer).
- **A name that is both a file and a directory** (keys ``coll`` and ``coll/inner`` made by
  another client) shows as the directory: everything below it stays reachable and can be
  removed through the mount, and the hidden file is named in a log line (lookups.py). An
  rmdir of that directory that finds the file behind it removes the (empty) directory and
  answers ENOTEMPTY, so ``rm -rf coll`` exits non-zero while the name still holds something;
  the file shows once the kernel asks again (LOOKUP_TTL), and a second ``rm -rf`` removes it
  (objects.py). Nothing is hidden for good, and ``rm -rf`` never reports success for a name
  that is still there. (Showing both under distinct names was rejected: any second name
  could collide with a real key. In a directory of more than one listing page, a lookup
  made without a fresh listing finds the file: checking every file lookup for a directory
  too would double the requests of every ``stat``.)
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
"""S3's limit on a key's length in UTF-8."""
NAME_MAX = 255
"""The longest name (one path component) in bytes, as statfs reports it; the kernel lets
FUSE names of up to 1024 bytes through, and S3 would take them, but tools expect 255."""
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def problem(name: str, *, keeps_backslash: bool) -> str | None:
    """Why ``name`` cannot be a file name here, or None (see the module)."""
    if name in ("", ".", ".."):
        return "not a file name"
    if "/" in name:
        return "it holds a '/', which separates directories"
    if _CONTROL.search(name):
        return "it holds a control character"
    if len(name.encode()) > NAME_MAX:
        return f"it is longer than {NAME_MAX} bytes"
    if "\\" in name and not keeps_backslash:
        return ("it holds a backslash, and this store does not keep one in a key "
                "(it would store the object under another key)")
    return None
