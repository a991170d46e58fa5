"""A study sent to the service (a NIfTI file, or a zip of one DICOM series) written to a private
temporary folder in a form the readers take; anything else is refused in one line that names no path.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

from medalign.errors import InputError

#: a zip may unpack to at most this many files and bytes (a small zip can unpack to terabytes)
MAX_ZIP_FILES = 4000
MAX_ZIP_BYTES = 4 * 2**30


def kind_of(head: bytes) -> str:
    """``nii.gz``, ``nii`` or ``zip`` from a file's first bytes; ``""`` when none of them."""
    if head[:2] == b"\x1f\x8b":
        return "nii.gz"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 348 and (head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")) and head[344:347] in (b"n+1", b"ni1"):
        return "nii"
    return ""


def write_upload(body: bytes, folder: Path) -> Path:
    """``body`` as a study under ``folder`` (a fresh private temporary folder): ``study.nii[.gz]`` or a
    folder ``series/`` of the zip's files (flattened, renamed; no path of the zip is used). Raises
    :class:`InputError` for an empty body, an unknown format, an unsafe or oversized zip."""
    if not body:
        raise InputError("empty upload: send a NIfTI file or a zip of one DICOM series")
    kind = kind_of(body[:352])
    if not kind:
        raise InputError("not a NIfTI file (.nii, .nii.gz) or a zip of one DICOM series")
    if kind != "zip":
        path = folder / f"study.{kind}"
        path.write_bytes(body)
        return path
    series = folder / "series"
    series.mkdir()
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"unreadable zip ({e.__class__.__name__})") from None
    if not members:
        raise InputError("the zip holds no files")
    if len(members) > MAX_ZIP_FILES or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
        raise InputError(f"the zip unpacks to more than {MAX_ZIP_FILES} files or {MAX_ZIP_BYTES // 2**30} GiB")
    for i, member in enumerate(members):
        if stat.S_ISLNK(member.external_attr >> 16):
            continue  # a link could point anywhere: never followed
        name = Path(member.filename).name
        if name.startswith(".") or name.upper() == "DICOMDIR":
            continue
        try:
            with archive.open(member) as src:
                (series / f"f{i:05d}.dcm").write_bytes(src.read(member.file_size + 1)[: member.file_size + 1])
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
            raise InputError(f"unreadable zip member ({e.__class__.__name__})") from None
    if not any(series.iterdir()):
        raise InputError("the zip holds no DICOM files")
    return series
