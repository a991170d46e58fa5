"""Study discovery and reading: which files and folders are studies, and a study's volumes as
preparation takes them (a registered file format, else DICOM series; ``--group-by`` for any DICOM tree)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from medalign.errors import InputError
from medalign.io.dicom import load_dicom_volumes
from medalign.io.readers import read_file, reader_for
from medalign.io.volume import Volume, mirror_to_right_eye
from medalign.prep.config import PrepConfig


def discover_studies(images: Path) -> dict[str, Path]:
    """``{study_id: path}``: each sub-folder is a study; a bare file of a registered format
    (:mod:`medalign.io.readers`: ``NAME.nii.gz``, ``NAME.vol``, ...) is study ``NAME``.
    DICOM files lying loose in ``images`` belong to no study folder: they stop the run with one line
    (never dropped without a word) suggesting ``--group-by``; other loose files (a CSV, a README) are left alone."""
    from medalign.io.dicom import read_header

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: images folder not found")
    studies: dict[str, Path] = {}
    loose: list[Path] = []
    for p in sorted(images.iterdir()):
        if p.name.startswith("."):
            continue
        reader = None if p.is_dir() else reader_for(p)
        if p.is_dir():
            studies[p.name] = p
        elif reader is not None:
            studies[reader.study_name(p)] = p
        elif p.is_file() and p.suffix.lower() not in (".csv", ".jsonl", ".json", ".txt", ".md", ".yaml", ".yml", ".log", ".xml", ".pdf"):
            loose.append(p)
    dicom = [p for p in loose if read_header(p) is not None]
    if dicom:
        raise InputError(f"{images}: {len(dicom)} DICOM file{'s' if len(dicom) > 1 else ''} lie directly in the images folder "
                         f"(e.g. {dicom[0].name}), outside any study folder: prepare this tree with --group-by study_uid "
                         "(or accession), which groups files by their headers, or move each study's files into a folder of its own")
    return studies


def load_study(path: Path, config: PrepConfig, files: list[Path] | None = None, root: Path | None = None) -> tuple[Volume, str]:
    """Read a study (NIfTI or vendor OCT file, a folder holding one, a DICOM folder, or the DICOM
    ``files`` that ``--group-by`` found for it under ``root``); returns the volume and provenance.
    OCT presets mirror left eyes to right-eye orientation. One volume: the best series, whatever
    ``series.select`` says (:func:`load_study_volumes` gives them all)."""
    config = dataclasses.replace(config, series=dataclasses.replace(config.series, select="best"))
    return load_study_volumes(path, config, files, root)[0]


def load_study_volumes(path: Path, config: PrepConfig, files: list[Path] | None = None,
                       root: Path | None = None, layout: str = "folder") -> list[tuple[Volume, str]]:
    """:func:`load_study`, one ``(volume, provenance)`` per series that ``series.select`` takes
    (``all``: every full-coverage DICOM series of the study, best first). ``layout``: a published
    data set's (:mod:`medalign.prep.layouts`), whose reader takes the study's ``files`` under ``root``."""
    if layout != "folder":
        from medalign.prep.layouts import get_layout

        loaded = get_layout(layout).read(root, files, config)
    elif files is not None:
        loaded = load_dicom_volumes(path, config.series, files=files, root=root)
    else:
        loaded = _read_study(path, config)
    return [_finish(volume, provenance, config) for volume, provenance in loaded]


def _finish(volume: Volume, provenance: str, config: PrepConfig) -> tuple[Volume, str]:
    """A loaded volume as preparation keeps it: left eyes mirrored when the preset says (their fundus
    image with them). A vendor OCT file's fundus image (SLO/IR) stays in ``volume.localizer``: it is
    written beside the volume, never into it."""
    if config.mirror_left_eyes and volume.laterality == "OS":
        volume = mirror_to_right_eye(volume)
        provenance += "; left eye (OS) mirrored to right-eye orientation"
    elif volume.laterality:
        provenance += f"; {volume.laterality}"
    return volume, provenance


def _read_study(path: Path, config: PrepConfig) -> list[tuple[Volume, str]]:
    """A study file or folder: the one file of a registered format it is or holds (a NIfTI, a vendor
    OCT file; ``series.select`` over the scans in it), else its DICOM series (``series.select``)."""
    if path.is_file():
        return read_file(path, path.name, config.series.select)
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]  # one listing of the folder
    if not files:
        raise InputError(f"{path}: empty study folder")
    readable = [(p, r) for p in files if (r := reader_for(p)) is not None]
    if len(readable) == 1:
        return read_file(readable[0][0], f"{path.name}/{readable[0][0].relative_to(path)}", config.series.select)
    if len(readable) > 1:
        kinds = ", ".join(sorted({r.description for _, r in readable}))
        raise InputError(f"{path}: {len(readable)} image files ({kinds}), expected one: a study is one volume file "
                         "(one eye's OCT scan, one NIfTI) or one DICOM folder")
    return load_dicom_volumes(path, config.series, files=files)


def refuse_identifying_names(studies: dict[str, Path], id_key: bytes | None) -> None:
    """Some formats' exports are named after the patient (Zeiss Cirrus: patient id and scan date),
    and prep names studies after their files: without ``--hash-ids`` those names would reach every output."""
    if id_key is not None:
        return
    named = [(p, r) for p in studies.values() if (r := reader_for(p)) is not None and r.names_identifiers and r.names_identifiers(p.name)]
    if named:
        raise InputError(f"{named[0][0]}: {named[0][1].description} file names hold the patient id and scan date ({len(named)} such files), and "
                         "studies are named after their files; prepare them with --hash-ids KEYFILE")


def grouped_studies(images: Path, group_by: str, report_rows: dict, report_key: str, imap: Callable):
    """Studies of a DICOM tree grouped by ``group_by``: ``({study_id: folder}, {study_id: files},
    reports keyed by study id, prep.log notes, early error rows)``. Reports keyed by accession
    number are matched to studies through the AccessionNumber of their files."""
    from medalign.io.dicom_groups import group_dicom_files, tainted_by_unreadable

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: images folder not found")
    grouping = group_dicom_files(images, group_by, imap=imap)  # the prep worker pool's
    if not grouping.studies and not grouping.unreadable:
        raise InputError(f"{images}: --group-by {group_by} found no DICOM files ({grouping.not_dicom} other files); "
                         "NIfTI and vendor OCT studies are prepared one per folder or file, without --group-by")
    notes = [f"--group-by {group_by}: {sum(len(g.files) for g in grouping.studies.values())} DICOM files in "
             f"{len(grouping.studies)} studies"
             + (f"; {grouping.not_dicom} files that are not DICOM ignored" if grouping.not_dicom else "")]
    errors: list[dict[str, str]] = []
    for sid, study in grouping.studies.items():
        if study.by_folder:
            notes.append(f"warning: {len(study.files)} files without {'StudyInstanceUID' if group_by == 'study_uid' else 'AccessionNumber'}"
                         f" grouped by their folder as study {sid} (series then split by series number and geometry)")
    tainted = tainted_by_unreadable(grouping)
    for sid, bad in tainted.items():
        reason = next(why for p, why in grouping.unreadable if p == bad)
        errors.append({"study_id": sid, "path": str(grouping.studies[sid].folder),
                       "reason": f"{bad.relative_to(images)}: {reason}, in the study's folder: maybe one of its slices"})
    claimed = {bad for bad in tainted.values()}
    for path, why in grouping.unreadable:
        if path not in claimed and path.parent not in {p.parent for p in claimed}:
            errors.append({"study_id": "", "path": str(path), "reason": f"{path.relative_to(images)}: {why}"})
    if report_key == "accession_number" and group_by == "study_uid":
        report_rows, more = _reports_by_study_uid(grouping.studies, report_rows)
        notes += more
    return ({sid: g.folder for sid, g in grouping.studies.items()}, {sid: g.files for sid, g in grouping.studies.items()},
            report_rows, notes, errors)


def _reports_by_study_uid(studies: dict, by_accession: dict) -> tuple[dict, list[str]]:
    """Reports keyed by accession number re-keyed by the StudyInstanceUID of the study whose files carry it."""
    rows, notes = {}, []
    owners: dict[str, list[str]] = {}
    for sid, study in studies.items():
        for accession in study.accessions:
            owners.setdefault(accession, []).append(sid)
    for accession, row in by_accession.items():
        sids = owners.get(accession, [])
        if len(sids) > 1:
            notes.append(f"warning: studies {', '.join(sorted(sids))} carry one accession number; its report is paired with none")
        elif sids:
            if len(studies[sids[0]].accessions) > 1:
                notes.append(f"warning: study {sids[0]} carries {len(studies[sids[0]].accessions)} accession numbers; "
                             "its report is not paired")
                continue
            rows[sids[0]] = row
        else:
            rows["accession:" + accession] = row  # no study carries it: reported as a report without images
    return rows, notes
