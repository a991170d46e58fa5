"""One writer per output folder: an advisory lock file naming its holder.

``with output_lock(folder, "prep"):`` takes ``folder/.medalign-prep.lock`` with ``flock`` (the
kernel drops it when the holder dies, so a stale lock from a killed process never blocks) and
writes the holder's command, host, pid and start time into it. A second process asking for the
same lock stops at once with one line naming the holder. Shards of one prep (``--shard I/N``)
take a lock of their own and work side by side.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medalign.errors import BusyError


def is_launching_process() -> bool:
    """Whether this process is rank 0 of its job, the one a user or scheduler started first: the other
    ranks of a multi-process run (Lightning's launcher, torchrun, SLURM's srun) run the same command
    with a non-zero ``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK`` / ``SLURM_PROCID`` and must not write
    what rank 0 writes."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextmanager
def output_lock(folder: Path, name: str) -> Iterator[Path]:
    """Hold ``folder/.medalign-<name>.lock`` for the block; :class:`BusyError` when another live
    process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".medalign-{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{folder}: another medalign {name} is writing here ({_holder(path)}); wait for it to "
                            "finish or stop it") from None
        holder = {"command": name, "host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the flock


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
