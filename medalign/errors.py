"""Exceptions that reach the user as one line, no traceback: exit code 2 for something the user
handed us wrong, 4 for output storage that refused a write."""

from __future__ import annotations


class MedalignError(Exception):
    """A user-facing error: the message is one line naming the thing and the reason."""


class ConfigError(MedalignError):
    """A configuration file or override is invalid (unknown key, wrong type, missing file)."""


class InputError(MedalignError):
    """An input file or folder is missing, unreadable or malformed."""


class StorageError(MedalignError):
    """The output storage refused a write (disk full, quota, read-only, file-size limit): exit 4.
    Nothing partial is left behind, and a rerun resumes once the storage accepts writes again."""


class BusyError(MedalignError):
    """Another medalign process is writing the same output folder (its lock is held)."""
