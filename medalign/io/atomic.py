"""Atomic file writes: a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import StorageError


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


#: errno values that mean the storage refused a write (full, quota, read-only, forbidden, file-size limit)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def storage_error(path: Path, e: BaseException, needed: int | None = None) -> StorageError | None:
    """A :class:`StorageError` naming ``path`` and the reason when ``e`` is a refused write (an
    errno of :data:`STORAGE_ERRNOS`, or a short write without one, as numpy's ``save`` raises on a
    full disk); ``None`` for anything else."""
    code = getattr(e, "errno", None)
    short = isinstance(e, OSError) and code is None and "written" in str(e)
    short = short or (isinstance(e, RuntimeError) and "failed writing" in str(e))  # torch.save's zip writer
    if code not in STORAGE_ERRNOS and not short:
        return None
    limit = _file_size_limit()
    if code == errno.EFBIG or (short and limit is not None and (needed is None or needed > limit)):
        return StorageError(f"cannot write {path}: file size limit of {limit or '?'} bytes reached (ulimit -f)")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {path}: {os.strerror(code)}")
    try:
        free = shutil.disk_usage(_existing_parent(path)).free
        where = f"{_mib(free)} free on {_existing_parent(path)}"
    except OSError:
        where = "free space unknown"
    need = f", {_mib(needed)} needed" if needed else ""
    kind = "quota exceeded" if code == errno.EDQUOT else "disk full"
    said = os.strerror(code) if code else "short write"
    return StorageError(f"cannot write {path}: {said}: {kind}, {where}{need}")


def _file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), ``None`` when unlimited."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def atomic_write(path: Path, write: Callable[[Path], None], needed: int | None = None) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``. A write the storage
    refuses removes the temporary file and raises :class:`StorageError` (``needed``: bytes the
    file would take, for the message)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise storage_error(path, e, needed) or e from None
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a shared dataset should follow the user's umask
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        refused = storage_error(path, e, needed)
        if refused is not None:
            raise refused from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_text_lines(path: Path, lines: list[str]) -> None:
    """Write lines (newline-terminated) atomically."""
    atomic_text = "".join(line + "\n" for line in lines)
    atomic_write_text(path, atomic_text)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as ``None``: JSON has no NaN, and a metric
    that does not exist is null, not a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (indent 2, UTF-8); NaN and infinities are written as null."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save a ``.npy`` atomically (memory-mappable with ``np.load(mmap_mode='r')``)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, _write, needed=array.nbytes + 128)
