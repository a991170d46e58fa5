"""Exceptions that mean "the user handed us something wrong" (exit code 2, one line, no traceback)."""

from __future__ import annotations


class MedalignError(Exception):
    """A user-facing error: the message is one line naming the thing and the reason."""


class ConfigError(MedalignError):
    """A configuration file or override is invalid (unknown key, wrong type, missing file)."""


class InputError(MedalignError):
    """An input file or folder is missing, unreadable or malformed."""
