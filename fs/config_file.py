"""``chute mount --config FILE``: the mount's options in a TOML file.

The file's keys are the command-line flags' names, with dashes or underscores
(``ring-size`` or ``ring_size``), plus ``remote``. A repeatable flag (``--tag``) takes a list
(``tag = ["a=1", "b=2"]``) or one string. Each value goes through the flag's own
parser, so ``ring_size = "64MiB"`` means what ``--ring-size 64MiB`` means, and a number is taken
as it is (``ring_size = 67108864``). Flags given on the command line override the file, and the
file overrides the built-in defaults.

The option list is not repeated here: it is read from the ``chute mount`` argparse parser, so
a new flag is valid in the file the moment it exists. An unknown key is an error, not ignored:
a misspelled ``ring_sise`` would otherwise silently mount with the default.
"""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

from chute.uploader.errors import ConfigError

NOT_IN_FILE = frozenset({"help", "config", "mountpoint"})
"""Dests that make no sense in the file (the mountpoint is what the file is for)."""


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The ``chute mount`` options a file may set, by dest."""
    return {action.dest: action for action in parser._actions
            if action.dest not in NOT_IN_FILE and action.dest != argparse.SUPPRESS}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):  # a repeatable flag: a list, or one value
        items = value if isinstance(value, list) else [value]
        one = argparse.Action(action.option_strings, action.dest, type=action.type,
                              choices=action.choices)
        return [_convert(one, item, where) for item in items]
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a count (0, 1, 2), got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where} must be a string or a number, got {value!r}")
    convert = action.type
    if convert is None:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        result: Any = value
    elif isinstance(value, str) or (convert is float and isinstance(value, int)):
        try:
            result = convert(value)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif isinstance(value, float) and convert is not float:
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    else:
        result = value  # an int for an int or size option, a float for a float one
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
    return result


def load(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values by dest, converted like the flags; ConfigError names what is wrong."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a TOML file: it is not UTF-8 text"
                          ) from None
    known = options(parser)
    values: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = known.get(dest)
        if action is None:
            names = ", ".join(sorted(known))
            raise ConfigError(f"unknown option {key!r} in {path} (known: {names})")
        values[dest] = _convert(action, value, f"{key} in {path}")
    return values
