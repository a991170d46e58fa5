"""Exceptions that reach the user as one line, no traceback: exit code 2 for something the user
handed us wrong, 4 for output storage that refused a write, 75 for training stopped by a signal
with its state saved."""

from __future__ import annotations


class MedalignError(Exception):
    """A user-facing error: the message is one line naming the thing and the reason."""


class ConfigError(MedalignError):
    """A configuration file or override is invalid (unknown key, wrong type, missing file).

    ``key``: the dotted key at fault (``optim.lr``), when one is; the loader then names the file or
    the command-line override that set it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    @classmethod
    def at(cls, where: str, name: str, reason: str) -> "ConfigError":
        """``reason`` about key ``name`` of the section at dotted key ``where`` (``""``: the top)."""
        key = config_key(where, name)
        return cls(f"{key}: {reason}" if key else reason, key=key or None)


def config_key(where: str, name: str) -> str:
    """The dotted key ``name`` under ``where`` (``""`` at the top level): ``optim`` + ``lr`` -> ``optim.lr``."""
    if not where or not name or name.startswith("["):
        return f"{where}{name}"
    return f"{where}.{name}"


class InputError(MedalignError):
    """An input file or folder is missing, unreadable or malformed."""


class StorageError(MedalignError):
    """The output storage refused a write (disk full, quota, read-only, file-size limit): exit 4.
    Nothing partial is left behind, and a rerun resumes once the storage accepts writes again."""


class BusyError(MedalignError):
    """Another medalign process is writing the same output folder (its lock is held)."""


#: exit status of a command stopped by SIGTERM/SIGUSR1 with its state saved (sysexits' EX_TEMPFAIL: try again)
EXIT_PREEMPTED = 75


class Preempted(MedalignError):
    """Training stopped on a signal (SIGTERM, SIGUSR1) with ``last.ckpt`` written: exit
    :data:`EXIT_PREEMPTED`; ``--resume`` continues it."""
