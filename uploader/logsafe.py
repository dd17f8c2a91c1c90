"""Names, paths and keys in log lines: always quoted, so a name cannot forge a log line.

A name is anything an object's key or a local user chose: it may hold a newline (a fake
second log line), ANSI escapes (recolouring or erasing the terminal that tails the log), or
other control characters. Every log line that carries one formats it with :func:`quoted`
(or ``%r``, which is the same): Python's ``repr`` of a str escapes every control character
(``\\n``, ``\\x1b``) and leaves printable text, non-ASCII letters included, as it is.

The key itself is never altered: quoting is for the log line only.
"""

from __future__ import annotations


def quoted(name: str | bytes) -> str:
    """``name`` repr-style: quotes around it, control characters escaped."""
    return repr(name)
