"""Studies by DICOM identity: group the files of any folder tree (a flat PACS dump, a DICOMDIR
layout, one folder per patient) by StudyInstanceUID or AccessionNumber.

Only the first elements of each file are read (up to SeriesInstanceUID, group 0020): the full
header is parsed once, later, by the worker that prepares the study.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from medalign.errors import InputError

GROUP_BY = ("folder", "study_uid", "accession")
_ACCESSION, _STUDY_UID, _SERIES_UID = Tag(0x0008, 0x0050), Tag(0x0020, 0x000D), Tag(0x0020, 0x000E)
_TRANSFER_SYNTAX = Tag(0x0002, 0x0010)
#: prefix of the study id of files whose key is blank: grouped by their folder instead
BLANK_PREFIX = "folder:"


@dataclasses.dataclass
class StudyFiles:
    """The files of one study as the grouping found them."""

    files: list[Path]
    accessions: set[str] = dataclasses.field(default_factory=set)
    #: True when the key was blank and the files were grouped by their folder
    by_folder: bool = False

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the study (what errors.jsonl names)."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


@dataclasses.dataclass
class Grouping:
    """What :func:`group_dicom_files` found under a root."""

    studies: dict[str, StudyFiles]
    #: ``(file, reason)`` for DICOM-looking files whose first elements cannot be read (cut or damaged)
    unreadable: list[tuple[Path, str]]
    #: files that are not DICOM (reports, NIfTI, thumbnails): not part of any study
    not_dicom: int


def read_identity(path: Path) -> tuple[str, str] | None:
    """``(StudyInstanceUID, AccessionNumber)`` from the first elements of ``path`` (blank when absent);
    ``None`` when the file is not DICOM. Raises ``ValueError`` for a DICOM file cut before them.

    Reads raw elements with pydicom's element generator, skipping every other value and building no
    Dataset: a third of :func:`pydicom.filereader.read_partial`'s cost, so grouping adds little to
    the one full header read each file gets later."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return None
            syntax = ""
            for element in data_element_generator(f, False, True, stop_when=lambda tag, vr, length: tag.group != 2):
                if element.tag == _TRANSFER_SYNTAX:
                    syntax = _text(element.value)
            if syntax == DeflatedExplicitVRLittleEndian:  # the dataset is compressed: pydicom inflates it
                f.seek(0)
                return _identity_from_dataset(f)
            stop = _PastSeriesUID()
            found = {}
            for element in data_element_generator(f, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian,
                                                  stop_when=stop, specific_tags=[_ACCESSION, _STUDY_UID]):
                if element.tag in (_ACCESSION, _STUDY_UID):
                    found[element.tag] = _text(element.value)
    except InvalidDicomError:
        return None
    except (EOFError, OSError, TypeError, AttributeError, KeyError, NotImplementedError, struct.error, ValueError) as e:
        raise ValueError(f"{e.__class__.__name__}") from None
    stop.check()
    return found.get(_STUDY_UID, ""), found.get(_ACCESSION, "")


class _PastSeriesUID:
    """``stop_when`` for pydicom's readers: stops at the first element after SeriesInstanceUID and
    remembers it, so a file that ends earlier (cut short) is told apart from one that was read."""

    def __init__(self) -> None:
        self.passed = False

    def __call__(self, tag, vr, length) -> bool:
        self.passed = self.passed or tag > _SERIES_UID
        return self.passed

    def check(self) -> None:
        if not self.passed:
            raise ValueError("the file ends before its SeriesInstanceUID")


def _text(value: object) -> str:
    """A raw element's value as text (UIDs are padded with NUL, strings with spaces)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip("\0 ")


def _identity_from_dataset(f) -> tuple[str, str]:
    """:func:`read_identity` through :func:`read_partial` (deflated files)."""
    stop = _PastSeriesUID()
    ds = read_partial(f, stop_when=stop, specific_tags=[_ACCESSION, _STUDY_UID])
    stop.check()
    study, accession = ds.get(_STUDY_UID), ds.get(_ACCESSION)
    return (str(study.value or "").strip() if study is not None else "",
            str(accession.value or "").strip() if accession is not None else "")


#: files whose identity one worker reads per task
CHUNK = 512


def read_identities(paths: list[Path]) -> list[tuple[Path, tuple[str, str] | None, str]]:
    """:func:`read_identity` of each path: ``(path, identity or None, error or "")`` (a worker's task)."""
    out = []
    for path in paths:
        try:
            out.append((path, read_identity(path), ""))
        except ValueError as e:
            out.append((path, None, str(e)))
    return out


def group_dicom_files(root: Path, by: str, imap: Callable = map) -> Grouping:
    """Group every DICOM file under ``root`` by ``by`` (``study_uid`` or ``accession``); ``imap`` maps
    :func:`read_identities` over chunks of files (a worker pool's ``imap_unordered`` reads them in parallel).

    The study id is the key's value. Files whose key is blank (de-identification often blanks
    them) are grouped by their folder, under the id ``folder:<path relative to root>``; the
    series scan then splits them by series and geometry. A DICOMDIR index file is not a study file.
    """
    if by not in GROUP_BY[1:]:
        raise InputError(f"--group-by {by}: expected one of {', '.join(GROUP_BY[1:])}")
    root = Path(root)
    studies: dict[str, StudyFiles] = {}
    unreadable: list[tuple[Path, str]] = []
    not_dicom = 0
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    found = sorted((item for chunk in imap(read_identities, chunks) for item in chunk), key=lambda item: item[0])
    for path, identity, error in found:
        if error:
            unreadable.append((path, f"truncated or damaged DICOM (its first elements cannot be read: {error})"))
            continue
        if identity is None:
            not_dicom += 1
            continue
        study_uid, accession = identity
        key = study_uid if by == "study_uid" else accession
        blank = not key
        if blank:
            rel = path.parent.relative_to(root).as_posix()
            key = BLANK_PREFIX + ("." if rel == "." else rel)
        entry = studies.setdefault(key, StudyFiles(files=[], by_folder=blank))
        entry.files.append(path)
        if accession:
            entry.accessions.add(accession)
    return Grouping(studies=studies, unreadable=unreadable, not_dicom=not_dicom)


def tainted_by_unreadable(grouping: Grouping) -> dict[str, Path]:
    """``{study id: unreadable file}`` for studies with files in a folder that also holds a file
    whose identity could not be read: that file may be one of their slices, so the study is not
    prepared a slice short without a word."""
    folders = defaultdict(list)
    for path, _ in grouping.unreadable:
        folders[path.parent].append(path)
    out = {}
    for sid, study in grouping.studies.items():
        for f in study.files:
            if f.parent in folders:
                out[sid] = folders[f.parent][0]
                break
    return out
